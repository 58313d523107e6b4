"""Webhook waits: the process-wide waiter's hand-off rules, then the whole path on a real `prefect server`: the
emulator delivers signed webhooks to the receiver (in-process, on a loopback port), the receiver posts events to
the server, the waiter's subscription wakes the flow's wait, and one GET decides."""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from prefect.events import Event

from dbt_cloud_gate.blocks.dbt_cloud import DbtCloudCredentials
from dbt_cloud_gate.dbtcloud_api import DbtCloudClient, RunStatus
from dbt_cloud_gate.dbtcloud_api.emulator import EmulatorServer, Fault
from dbt_cloud_gate.dbtcloud_api.emulator.webhooks import WebhookFault
from dbt_cloud_gate.dbtcloud_api.webhooks import delivery_payload, parse_delivery
from dbt_cloud_gate.errors import DbtCloudRunCancelled
from dbt_cloud_gate.events import webhook_event
from dbt_cloud_gate.flows.dbt_cloud import run_dbt_cloud_job
from dbt_cloud_gate.receiver import PrefectEventsEmitter, ReceiverConfig, create_app
from dbt_cloud_gate.settings import WaitSettings
from dbt_cloud_gate.stack.services import PrefectServer
from dbt_cloud_gate.waiter import RunEventWaiter, stop_webhook_waiters, webhook_waiter, webhook_waits_unavailable
from tests.conftest import ACCOUNT, TOKEN, Served
from tests.prefect_db import seed_prefect_home

# -- the hand-off rules (no server: notify() is what an event does) ---------------------------------------------


def test_an_event_before_the_wait_is_kept_and_handed_out_once() -> None:
    waiter = RunEventWaiter("http://unused")
    waiter.notify(5)  # the event came while the trigger call was still returning
    started = time.monotonic()
    assert waiter.wait(5, 10) is True and time.monotonic() - started < 0.5
    assert waiter.wait(5, 0.2) is False  # handed out once: the next sleep runs its length
    assert waiter.wait(6, 0.05) is False  # other runs are not woken


def test_an_event_during_the_wait_wakes_every_wait_for_that_run_only() -> None:
    waiter = RunEventWaiter("http://unused")
    results: dict[str, bool] = {}

    def sleep(name: str, run_id: int) -> None:
        results[name] = waiter.wait(run_id, 5)

    threads = [threading.Thread(target=sleep, args=args) for args in (("a", 1), ("b", 1), ("c", 2))]
    for thread in threads:
        thread.start()
    time.sleep(0.2)
    started = time.monotonic()
    waiter.notify(1)
    threads[0].join(2)
    threads[1].join(2)
    assert results == {"a": True, "b": True} and time.monotonic() - started < 1
    waiter.notify(2)
    threads[2].join(2)
    assert results["c"] is True
    assert waiter.wait(1, 0.05) is False  # the wake-up went to the sleeping waits; nothing kept


def test_async_waits_share_the_waiter_and_a_reconnect_wakes_them_all() -> None:
    waiter = RunEventWaiter("http://unused")

    async def main() -> list[bool]:
        sleepers = [asyncio.create_task(waiter.await_wake(run_id, 5)) for run_id in (1, 2, 3)]
        await asyncio.sleep(0.1)
        waiter.notify(2)
        await asyncio.sleep(0.1)
        assert [s.done() for s in sleepers] == [False, True, False]
        waiter._wake_all()  # what a reopened subscription does: every wait polls once
        return list(await asyncio.wait_for(asyncio.gather(*sleepers), 2))

    assert asyncio.run(main()) == [True, True, True]
    assert asyncio.run(waiter.await_wake(1, 0.05)) is False


def test_wake_ups_for_one_run_are_debounced_and_none_is_lost() -> None:
    waiter = RunEventWaiter("http://unused", debounce_seconds=0.5)
    reads: list[float] = []
    done = threading.Event()

    def wait_loop() -> None:  # what a webhook wait does: sleep on the waiter, read the run when woken
        while not done.is_set():
            if waiter.wait(7, 0.2):
                reads.append(time.monotonic())

    thread = threading.Thread(target=wait_loop)
    thread.start()
    started = time.monotonic()
    for n in range(50):  # 50 events in 0.9 s (under twice the debounce, as 50 in 5 s are with the default 3 s)
        time.sleep(max(0.0, started + n * 0.018 - time.monotonic()))
        waiter.notify(7)
    time.sleep(0.8)
    quiet_event = time.monotonic()  # after a quiet spell longer than the debounce, an event wakes at once
    waiter.notify(7)
    time.sleep(0.3)
    done.set()
    thread.join(2)
    burst = [t - started for t in reads if t < quiet_event]
    assert 2 <= len(burst) <= 3, burst  # at 0, 0.5 and 1.0 s: never one read per event
    assert all(b - a >= 0.45 for a, b in itertools.pairwise(burst)), burst
    assert burst[-1] > 0.95  # the last events of the burst were not dropped: a read came after them
    assert len(reads) == len(burst) + 1 and reads[-1] - quiet_event < 0.1


def test_async_waits_are_debounced_and_events_for_runs_nobody_waits_on_wake_nobody() -> None:
    waiter = RunEventWaiter("http://unused", debounce_seconds=0.4)

    async def main() -> list[float]:
        reads: list[float] = []
        stop = time.monotonic() + 1.2

        async def wait_loop() -> None:
            while time.monotonic() < stop:
                if await waiter.await_wake(3, 0.1):
                    reads.append(time.monotonic())

        task = asyncio.create_task(wait_loop())
        started = time.monotonic()
        for i in range(40):  # 40 events for the waited run, 1,000 for runs nobody waits on, in 0.3 s
            await asyncio.sleep(max(0.0, started + i * 0.0075 - time.monotonic()))
            waiter.notify(3)
            for other in range(25):
                waiter.notify(100_000 + i * 25 + other)
        await task
        return reads

    reads = asyncio.run(main())
    assert 1 <= len(reads) <= 2, reads  # at 0 and 0.4 s
    assert waiter.wakeups == len(reads)  # the other runs' events woke nothing
    assert waiter.wait(100_000, 1) is True  # and are kept, once each, for a wait that comes later
    assert waiter.wait(100_000, 0.05) is False


def test_the_safety_net_sees_a_cancel_within_30_s_at_one_read_per_30_s() -> None:
    # A cancelled run sends no webhook: only the safety-net poll sees it, at most this late; one read per period.
    assert WaitSettings().fallback_poll_seconds == 30


def test_webhook_waits_need_a_prefect_server_of_their_own() -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        assert "PREFECT_API_URL is not set" in (webhook_waits_unavailable() or "")
        assert webhook_waiter() is None
    assert webhook_waits_unavailable("http://127.0.0.1:4200/api") is None


@pytest.mark.usefixtures("prefect_harness")
def test_without_a_server_webhooks_fall_back_to_polling_and_say_so(
    emulator: EmulatorServer, caplog: pytest.LogCaptureFixture
) -> None:
    # The test harness's server lives inside this process: no receiver can post to it.
    caplog.set_level(logging.INFO)
    result = run_dbt_cloud_job(11, creds(emulator), poll_interval_seconds=0.05, max_wait_seconds=20, webhooks=True)
    assert result.status == "Success"
    assert "Webhook waits are off" in caplog.text and "temporary server" in caplog.text
    assert "on webhook events" not in caplog.text


# -- the whole path, on a real Prefect server --------------------------------------------------------------------


def creds(emulator: EmulatorServer) -> DbtCloudCredentials:
    return DbtCloudCredentials(account_id=ACCOUNT, api_token=TOKEN, access_url=emulator.url)


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with PrefectServer(seed_prefect_home(tmp_path_factory.mktemp("waiter-prefect-home")), ui=False) as server:
        yield server.api_url


@pytest.fixture
def webhook_path(prefect_server: str, emulator: EmulatorServer, client: DbtCloudClient) -> Iterator[EmulatorServer]:
    """The emulator delivering to a receiver that posts to the real server; the flow's settings point there."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    app = create_app(ReceiverConfig(secrets={"placeholder": "x" * 32}), PrefectEventsEmitter(prefect_server))
    restart_prefect_workers()
    with Served(app) as served, temporary_settings({PREFECT_API_URL: prefect_server}):
        made = client.create_webhook_subscription("tests", served.url)
        assert made.hmac_secret is not None
        app.state.receiver.config.secrets = {made.id: made.hmac_secret.get_secret_value()}
        try:
            yield emulator
        finally:
            stop_webhook_waiters()
            restart_prefect_workers()


def restart_prefect_workers() -> None:
    """Flush and stop Prefect's process-wide event and log workers: they keep the API URL they started with
    (their key does not hold it), so the session's test server's flows would otherwise send to this module's
    server after it stopped, or the other way round. The next flow starts them afresh."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    EventsWorker.drain_all(timeout=30, at_exit=False)
    APILogWorker.drain_all(timeout=30, at_exit=False)


def run_reads(emulator: EmulatorServer, run_id: int) -> int:
    return sum(1 for r in emulator.emulator.requests if r.method == "GET" and r.path.endswith(f"/runs/{run_id}/"))


@pytest.mark.slow
def test_the_webhook_ends_the_wait_within_a_second_with_one_poll(
    webhook_path: EmulatorServer, caplog: pytest.LogCaptureFixture
) -> None:
    emulator = webhook_path
    emulator.emulator.set_job(11, run_seconds=2.0)
    caplog.set_level(logging.INFO)
    # A 60 s safety net: only the webhook can end this wait in time.
    result = run_dbt_cloud_job(11, creds(emulator), webhooks=True, fallback_poll_seconds=60, max_wait_seconds=60)
    returned = datetime.now(UTC)
    assert result.status == "Success" and result.finished_at is not None
    lag = (returned - result.finished_at).total_seconds()
    assert lag < 1.5, f"the flow returned {lag:.2f} s after the run's end"
    # No poll before the wake-up (the first is a safety-net interval away), one after it: that GET decided.
    assert run_reads(emulator, result.run_id) == 1
    assert "Webhook waits on" in caplog.text and "the poll after a wake-up saw it end" in caplog.text
    assert result.models  # the results were read after the woken poll, as after any other


def requests_by_kind(emulator: EmulatorServer, start: int) -> Counter[str]:
    """dbt Cloud requests since index ``start``, by kind (listings of runs, triggers, run reads, artifacts)."""
    return Counter(r.kind for r in emulator.emulator.requests[start:])


@pytest.mark.slow
def test_a_first_attempt_costs_three_requests_and_two_without_model_results(webhook_path: EmulatorServer) -> None:
    """Through the flow: the trigger (no read of the job's runs before it: nothing can carry this run tree's key
    yet), the read after the event, and run_results.json; without model_results, the first two only."""
    emulator = webhook_path
    emulator.emulator.set_job(11, run_seconds=1.0)
    for model_results, expected in ((True, 3), (False, 2)):
        start = len(emulator.emulator.requests)
        wait = WaitSettings(webhooks=True, fallback_poll_seconds=60, max_wait_seconds=60, model_results=model_results)
        result = run_dbt_cloud_job(11, creds(emulator), wait=wait)
        assert result.status == "Success" and bool(result.models) is model_results
        sent = requests_by_kind(emulator, start)
        assert sum(sent.values()) == expected, sent
        assert (sent["trigger"], sent["run"], sent["list"]) == (1, 1, 0), sent


@pytest.mark.slow
def test_a_retry_in_webhook_mode_searches_and_finds_its_run(webhook_path: EmulatorServer) -> None:
    emulator = webhook_path
    emulator.emulator.set_job(11, run_seconds=1.0)
    # A 403 on the read after the event kills the wait; the flow's retry must find the run, not start another.
    emulator.emulator.add_fault(Fault(kind="status", status=403, method="GET", path=r"/runs/\d+/$", times=1))
    start = len(emulator.emulator.requests)
    wait = WaitSettings(webhooks=True, fallback_poll_seconds=60, max_wait_seconds=60)
    result = run_dbt_cloud_job.with_options(retries=1, retry_delay_seconds=0)(11, creds(emulator), wait=wait)
    assert result.status == "Success"
    assert emulator.emulator.trigger_count[11] == 1 and [r.id for r in emulator.emulator.runs_of(11)] == [result.run_id]
    sent = requests_by_kind(emulator, start)
    assert sent["list"] == 1 and sent["trigger"] == 1, sent  # the retry searched, found it, triggered nothing


@pytest.mark.slow
def test_a_dropped_delivery_is_caught_by_the_fallback_poll(webhook_path: EmulatorServer) -> None:
    emulator = webhook_path
    emulator.emulator.set_job(11, run_seconds=0.5)
    emulator.emulator.webhooks.add_fault(WebhookFault("drop", event_type="job.run.completed"))
    started = time.monotonic()
    result = run_dbt_cloud_job(11, creds(emulator), webhooks=True, fallback_poll_seconds=3, max_wait_seconds=60)
    took = time.monotonic() - started
    assert result.status == "Success"
    assert 3 <= took < 8, took  # the first safety-net poll, 3 s after the trigger, saw the end
    assert run_reads(emulator, result.run_id) == 1


@pytest.mark.slow
def test_a_cancelled_run_sends_no_webhook_and_is_seen_by_the_fallback_poll(webhook_path: EmulatorServer) -> None:
    emulator = webhook_path
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            run_dbt_cloud_job(14, creds(emulator), webhooks=True, fallback_poll_seconds=2, max_wait_seconds=60)
        except Exception as exc:
            outcome["error"] = exc

    # In this context's copy: the Prefect settings (the real server's URL) are context variables.
    thread = threading.Thread(target=contextvars.copy_context().run, args=(run,))
    thread.start()
    deadline = time.monotonic() + 20
    while not [r for r in emulator.emulator.runs_of(14) if r.status_at(emulator.emulator.clock()) == RunStatus.RUNNING]:
        assert time.monotonic() < deadline, "job 14 never started"
        time.sleep(0.05)
    run_id = emulator.emulator.runs_of(14)[-1].id
    time.sleep(0.5)
    cancelled = time.monotonic()
    emulator.emulator.cancel(run_id)
    thread.join(timeout=30)
    seen_after = time.monotonic() - cancelled
    assert isinstance(outcome.get("error"), DbtCloudRunCancelled), outcome
    assert seen_after < 2 + 2.5, f"the cancel was seen {seen_after:.1f} s late (safety net: 2 s)"
    assert not [d for d in emulator.emulator.webhooks.deliveries if d.event_type == "job.run.completed"]


@pytest.mark.slow
def test_fan_out_waits_share_one_subscription(webhook_path: EmulatorServer) -> None:
    from dbt_cloud_gate.flows.fanout import run_dbt_cloud_jobs

    emulator = webhook_path
    emulator.emulator.set_job(11, run_seconds=1.0)
    started = time.monotonic()
    state = run_dbt_cloud_jobs(
        [11, 12, 11], creds(emulator), webhooks=True, fallback_poll_seconds=60, max_wait_seconds=60, return_state=True
    )
    took = time.monotonic() - started
    assert state.is_failed()  # job 12 fails
    assert took < 20, took  # every run was seen through its webhook, none by the 60 s safety net
    waiter = webhook_waiter()
    assert waiter is not None and waiter.connections == 1  # one subscription served the three waits
    runs = [r.id for job in (11, 12) for r in emulator.emulator.runs_of(job)]
    assert len(runs) == 3 and all(1 <= run_reads(emulator, run_id) <= 2 for run_id in runs)


@pytest.mark.slow
def test_fifty_forged_events_in_five_seconds_cause_at_most_three_reads(
    webhook_path: EmulatorServer, prefect_server: str
) -> None:
    emulator = webhook_path
    emulator.emulator.set_job(11, run_seconds=14.0)
    before = {r.id for r in emulator.emulator.runs_of(11)}
    outcome: dict[str, Any] = {}

    def run() -> None:
        outcome["result"] = run_dbt_cloud_job(
            11, creds(emulator), webhooks=True, fallback_poll_seconds=60, max_wait_seconds=60
        )

    thread = threading.Thread(target=contextvars.copy_context().run, args=(run,))
    thread.start()
    waiter = webhook_waiter()
    assert waiter is not None
    deadline = time.monotonic() + 20
    while not (new := [r.id for r in emulator.emulator.runs_of(11) if r.id not in before]) or not waiter.sleeping(
        new[0]
    ):
        assert time.monotonic() < deadline, "the wait never slept on its run"
        time.sleep(0.05)
    run_id = new[0]
    nobody = 999_999_001  # a run nobody waits on: its events must cost nothing

    def forged(run: int, n: int) -> Event:
        payload = delivery_payload(
            "job.run.completed", account_id=ACCOUNT, run_id=run, job_id=11, run_status_code=10, event_id=f"wev_f{n}"
        )
        return webhook_event(parse_delivery(payload))

    async def forge() -> None:  # straight to Prefect, as anyone who can post to its API could: 50 in 4.9 s
        emitter = PrefectEventsEmitter(prefect_server)
        for n in range(50):
            await asyncio.sleep(max(0.0, first + n * 0.1 - time.monotonic()))
            await asyncio.gather(emitter(forged(run_id, n)), emitter(forged(nobody, 100 + n)))
        assert time.monotonic() - first < 5.5
        await emitter.aclose()

    first = time.monotonic()
    asyncio.run(forge())
    time.sleep(max(0.0, first + 8.0 - time.monotonic()))  # past the last held wake-up (about 6 s after the first)
    reads = run_reads(emulator, run_id)
    assert 1 <= reads <= 3, f"50 forged events caused {reads} reads of the run"
    assert run_reads(emulator, nobody) == 0
    thread.join(timeout=40)
    result = outcome["result"]
    assert result.run_id == run_id and result.status == "Success"  # the real end was still seen by its webhook
    assert run_reads(emulator, run_id) <= reads + 1  # the real end: one read more


# -- a run started elsewhere (what the event-triggered deployment passes) ----------------------------------------


@pytest.mark.usefixtures("prefect_harness")
def test_run_id_waits_on_a_run_started_elsewhere_and_triggers_nothing(
    emulator: EmulatorServer, client: DbtCloudClient
) -> None:
    from dbt_cloud_gate.errors import DbtCloudRunInvalid

    elsewhere = client.trigger_job_run(11, "dbt Cloud's scheduler").id
    triggers = len([r for r in emulator.emulator.requests if r.method == "POST"])
    result = run_dbt_cloud_job(11, creds(emulator), run_id=elsewhere, poll_interval_seconds=0.05, max_wait_seconds=20)
    assert result.run_id == elsewhere and result.status == "Success" and result.finished_at is not None
    assert len([r for r in emulator.emulator.requests if r.method == "POST"]) == triggers  # nothing triggered
    with pytest.raises(DbtCloudRunInvalid):  # a run of another job is never taken for this job's
        run_dbt_cloud_job(12, creds(emulator), run_id=elsewhere, poll_interval_seconds=0.05, max_wait_seconds=20)
    with pytest.raises(ValueError, match="run_id"):
        run_dbt_cloud_job(11, creds(emulator), run_id=elsewhere, retry_failed_run_id=elsewhere)
