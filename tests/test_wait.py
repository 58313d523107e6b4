"""The wait (wait_for_run, await_run, await_runs, RunWatcher) against answers a real server rarely gives: another
run, a Success without finished_at, pages that are not dbt Cloud's, answers that come too late or a byte at a time.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from dbt_cloud_gate.dbtcloud_api import (
    AsyncDbtCloudClient,
    DbtCloudClient,
    DbtCloudMissingFinishedAtError,
    DbtCloudResponseError,
    DbtCloudRunMismatchError,
    Run,
    RunStatus,
    WaitTimedOut,
)
from dbt_cloud_gate.dbtcloud_api.emulator import EmulatorServer, Fault, JobSpec, StepSpec
from dbt_cloud_gate.dbtcloud_api.polling import AdaptiveSchedule, FixedInterval, make_schedule
from dbt_cloud_gate.dbtcloud_api.wait import RunWatcher, await_run, await_runs, first_poll_delay, wait_for_run
from tests.conftest import ACCOUNT, FAST_RETRY, TOKEN
from tests.scripted_server import Answer, ScriptedServer, envelope, run_data

FAST = FixedInterval(0.2)
HTML = "<html><head><title>Sign in</title></head><body>Corporate proxy: please sign in</body></html>"


def polls(server: ScriptedServer, run_id: int = 7) -> int:
    return sum(1 for seen in server.seen if seen.method == "GET" and seen.path.endswith(f"/runs/{run_id}/"))


def answering(make: Callable[[int], Answer]) -> Callable[[str, str], Answer]:
    """A responder that hands ``make`` the number of the GET of a run (1-based)."""
    count = [0]

    def respond(method: str, path: str) -> Answer:
        if method == "POST" and path.endswith("/cancel/"):
            return Answer(body=envelope(run_data(7, 30)))
        count[0] += 1
        return make(count[0])

    return respond


def sync_wait(server: ScriptedServer, **options: Any) -> Run:
    options.setdefault("schedule", FAST)
    with DbtCloudClient(ACCOUNT, TOKEN, server.url, retry=FAST_RETRY) as client:
        return wait_for_run(client, 7, **options)


def async_wait(server: ScriptedServer, **options: Any) -> Run:
    options.setdefault("schedule", FAST)

    async def main() -> Run:
        async with AsyncDbtCloudClient(ACCOUNT, TOKEN, server.url, retry=FAST_RETRY) as client:
            return await await_run(client, 7, **options)

    return asyncio.run(main())


WAITS = [pytest.param(sync_wait, id="sync"), pytest.param(async_wait, id="async")]


# -- 4.1: every run read is the run asked for -------------------------------------------------------------------


@pytest.mark.parametrize("wait", WAITS)
@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"run_id": 8}, "run 8, not run 7"),
        ({"account_id": 99}, "account 99, not of account 4242"),
        ({"job_id": 12}, "job 12, not of job 11"),
    ],
    ids=["run", "account", "job"],
)
def test_a_success_of_another_run_is_refused_not_returned(
    wait: Callable[..., Run], fields: dict[str, int], problem: str
) -> None:
    data = run_data(fields.get("run_id", 7), 10, **{k: v for k, v in fields.items() if k != "run_id"})
    with ScriptedServer(lambda method, path: Answer(body=envelope(data))) as server:
        started = time.monotonic()
        with pytest.raises(DbtCloudRunMismatchError, match=problem) as info:
            wait(server, max_wait_seconds=20, job_id=11)
        assert time.monotonic() - started < 5  # not waited through to the deadline
        assert polls(server) == FAST_RETRY.max_unreadable_attempts  # retried a few times, then refused
    assert info.value.expected_run_id == 7 and "cannot be used" in str(info.value)


def test_another_run_once_then_the_right_one_is_waited_through() -> None:
    def make(n: int) -> Answer:
        return Answer(body=envelope(run_data(8 if n == 1 else 7, 3 if n < 3 else 10)))

    with ScriptedServer(answering(make)) as server:
        run = sync_wait(server, max_wait_seconds=20)
    assert run.id == 7 and run.status is RunStatus.SUCCESS and run.finished_at is not None


# -- 4.2: a Success has a finished_at, or the wait fails ----------------------------------------------------------


@pytest.mark.parametrize("wait", WAITS)
def test_success_without_finished_at_is_read_again_then_fails_clearly(wait: Callable[..., Run]) -> None:
    data = run_data(7, 10, finished=False)
    with ScriptedServer(lambda method, path: Answer(body=envelope(data))) as server:
        started = time.monotonic()
        with pytest.raises(DbtCloudMissingFinishedAtError) as info:
            wait(server, max_wait_seconds=60, finished_at_grace_seconds=3.5)
        took = time.monotonic() - started
        assert 2.5 < took < 7  # read again for the grace, no longer
        assert 3 <= polls(server) <= 5
    message = str(info.value)
    assert "succeeded" in message and "finished_at" in message and "watermark" in message
    assert isinstance(info.value, DbtCloudResponseError) and info.value.run_id == 7
    assert info.value.run is not None and info.value.run.finished_at is None


def test_success_without_finished_at_then_with_it_is_returned() -> None:
    def make(n: int) -> Answer:
        return Answer(body=envelope(run_data(7, 10, finished=n >= 3)))

    with ScriptedServer(answering(make)) as server:
        run = sync_wait(server, max_wait_seconds=60)
        assert polls(server) == 3
    assert run.status is RunStatus.SUCCESS and run.finished_at is not None


def test_success_without_finished_at_at_the_deadline_still_ends_within_seconds() -> None:
    data = run_data(7, 10, finished=False)
    with ScriptedServer(lambda method, path: Answer(body=envelope(data))) as server:
        started = time.monotonic()
        with pytest.raises(DbtCloudMissingFinishedAtError):
            sync_wait(server, max_wait_seconds=1)  # default grace 30 s, but the deadline is sooner
        assert time.monotonic() - started < 8


def test_an_error_run_needs_no_finished_at() -> None:
    data = run_data(7, 20, finished=False)
    with ScriptedServer(lambda method, path: Answer(body=envelope(data))) as server:
        run = sync_wait(server, max_wait_seconds=10)
    assert run.status is RunStatus.ERROR


# -- 4.3: answers that are not dbt Cloud's fail the wait, named ---------------------------------------------------


@pytest.mark.parametrize("wait", WAITS)
@pytest.mark.parametrize(
    ("answer", "named"),
    [
        (Answer(body=HTML, content_type="text/html"), "not JSON"),
        (Answer(body={"id": 7, "status": 10}), "not the dbt Cloud envelope"),
        (Answer(body=[1, 2, 3]), "not the dbt Cloud envelope"),
    ],
    ids=["html-200", "bare-json", "json-list"],
)
def test_polls_answered_with_something_else_fail_naming_it(
    wait: Callable[..., Run], answer: Answer, named: str
) -> None:
    with ScriptedServer(lambda method, path: answer) as server:
        started = time.monotonic()
        with pytest.raises(DbtCloudResponseError, match=named) as info:
            wait(server, max_wait_seconds=10)
        assert time.monotonic() - started < 5
        assert polls(server) == FAST_RETRY.max_unreadable_attempts
    assert not isinstance(info.value, WaitTimedOut) and "gave up after" in str(info.value)
    assert TOKEN not in str(info.value)


def test_one_html_page_between_good_answers_is_waited_through() -> None:
    def make(n: int) -> Answer:
        if n == 2:
            return Answer(body=HTML, content_type="text/html")
        return Answer(body=envelope(run_data(7, 3 if n < 4 else 10)))

    with ScriptedServer(answering(make)) as server:
        assert sync_wait(server, max_wait_seconds=20).status is RunStatus.SUCCESS


# -- 4.4: the deadline holds whatever the server does -------------------------------------------------------------


@pytest.mark.parametrize("wait", WAITS)
@pytest.mark.parametrize(
    "answer",
    [
        Answer(body=envelope(run_data(7, 10)), delay=40),
        Answer(body=envelope({**run_data(7, 3), "padding": "x" * 4000}), trickle=0.02),
    ],
    ids=["answers-after-40s", "trickled-byte-by-byte"],
)
def test_the_deadline_holds_whatever_the_server_does(wait: Callable[..., Run], answer: Answer) -> None:
    with ScriptedServer(lambda method, path: answer) as server:
        started = time.monotonic()
        with pytest.raises(WaitTimedOut) as info:
            wait(server, max_wait_seconds=3)
        took = time.monotonic() - started
    assert 2.9 <= took < 6, took
    assert info.value.phase == "never-read" and info.value.run is None


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"max_wait_seconds": math.nan}, "max_wait_seconds"),
        ({"max_wait_seconds": math.inf}, "max_wait_seconds"),
        ({"max_wait_seconds": -1}, "max_wait_seconds"),
        ({"max_wait_seconds": 0}, "max_wait_seconds"),
        ({"not_found_grace_seconds": math.nan}, "not_found_grace_seconds"),
        ({"finished_at_grace_seconds": math.inf}, "finished_at_grace_seconds"),
        ({"job_id": 0}, "job_id"),
        ({"job_id": True}, "job_id"),
    ],
)
def test_bad_wait_arguments_are_refused_before_any_request(
    emulator: EmulatorServer, client: DbtCloudClient, options: dict[str, Any], named: str
) -> None:
    with pytest.raises(ValueError, match=named):
        wait_for_run(client, 7, schedule=FAST, **options)
    assert emulator.emulator.requests == []


@pytest.mark.parametrize("run_id", [0, -3, True, 2**63, "7", 7.0, None])
def test_impossible_run_ids_are_refused_before_any_request(
    emulator: EmulatorServer, client: DbtCloudClient, run_id: Any
) -> None:
    with pytest.raises(ValueError, match="run_id"):
        wait_for_run(client, run_id, schedule=FAST)

    async def many() -> None:
        async with AsyncDbtCloudClient(ACCOUNT, TOKEN, emulator.url) as c:
            await await_runs(c, [run_id], schedules=lambda _: FAST)

    with pytest.raises(ValueError, match="run_id"):
        asyncio.run(many())
    assert emulator.emulator.requests == []


@pytest.mark.parametrize("interval", [math.nan, math.inf, -math.inf, 0, -5, True])
def test_poll_intervals_that_are_not_finite_positive_are_refused(interval: Any) -> None:
    with pytest.raises(ValueError, match="finite, positive"):
        FixedInterval(interval)
    with pytest.raises(ValueError, match="finite, positive"):
        make_schedule([600.0] * 5, interval)
    with pytest.raises(ValueError, match="finite, positive"):
        AdaptiveSchedule([600.0] * 5, target_lag_seconds=interval)


def test_a_schedule_that_answers_nan_stops_the_wait_instead_of_polling_flat_out() -> None:
    class Broken:
        def next_interval(self, run: Run, elapsed: float) -> float:
            return math.nan

    watcher = RunWatcher(7, max_wait_seconds=10, schedule=Broken())
    watcher.on_run(Run.model_validate(run_data(7, 3)))
    with pytest.raises(ValueError, match="not a finite delay"):
        watcher.next_delay()


# -- 4.5: the time-out says where the run stood at the deadline ---------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_timeout_message_says_still_queued_never_started() -> None:
    clock = FakeClock()
    created = datetime.now(UTC) - timedelta(seconds=605)
    watcher = RunWatcher(7, max_wait_seconds=600, schedule=FAST, clock=clock)
    watcher.on_run(Run.model_validate(run_data(7, 1, created_at=created)))
    clock.now += 601
    with pytest.raises(WaitTimedOut) as info:
        watcher.next_delay()
    error = info.value
    assert error.phase == "queued" and error.status_at_deadline == "Queued"
    assert "still queued after 60" in str(error) and "never started" in str(error)
    assert error.description.startswith("still queued after 60") and error.description in str(error)
    assert "dbt Cloud run 7" in str(error) and "deadline of 600 s" in str(error)
    assert error.run is not None and error.run.status is RunStatus.QUEUED
    assert error.waited_seconds == pytest.approx(601) and error.max_wait_seconds == 600


def test_timeout_message_says_running_for_and_since_when() -> None:
    clock = FakeClock()
    started = datetime.now(UTC) - timedelta(seconds=540)
    watcher = RunWatcher(7, max_wait_seconds=600, schedule=FAST, clock=clock)
    watcher.on_run(Run.model_validate(run_data(7, 3, started_at=started)))
    clock.now += 600
    error = watcher.timed_out()
    assert error.phase == "running"
    assert "running for 54" in str(error) and f"started at {started.isoformat(timespec='seconds')}" in str(error)
    assert "never started" not in str(error)


def test_the_timeout_of_await_runs_keeps_the_state_at_the_deadline_after_the_cancel() -> None:
    with ScriptedServer(answering(lambda n: Answer(body=envelope(run_data(7, 1))))) as server:

        async def main() -> list[Any]:
            async with AsyncDbtCloudClient(ACCOUNT, TOKEN, server.url, retry=FAST_RETRY) as client:
                return await await_runs(client, [7], schedules=lambda _: FAST, max_wait_seconds=1, job_ids={7: 11})

        [outcome] = asyncio.run(main())
        assert any(seen.path.endswith("/runs/7/cancel/") for seen in server.seen)
    assert outcome.timed_out and outcome.run.status is RunStatus.CANCELLED  # as last seen, after the cancel
    assert outcome.timeout is not None and outcome.timeout.phase == "queued"
    assert "still queued" in str(outcome.timeout) and "Cancelled" not in str(outcome.timeout)
    assert outcome.timeout.run.status is RunStatus.QUEUED


def test_wait_timed_out_keeps_its_old_constructor_and_pickles() -> None:
    import pickle

    error = WaitTimedOut("late", run_id=3, run=None, waited_seconds=1.5)
    assert (error.run_id, error.run, error.waited_seconds, error.phase, error.description) == (
        3,
        None,
        1.5,
        "unknown",
        "late",
    )
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.run_id, copy.waited_seconds, str(copy)) == (3, 1.5, "late")
    from dbt_cloud_gate.dbtcloud_api import wait

    assert wait.WaitTimedOut is WaitTimedOut  # still importable from where the flows import it


def test_a_finished_run_read_again_as_running_keeps_its_finished_state() -> None:
    def make(n: int) -> Answer:
        return Answer(body=envelope(run_data(7, 10, finished=False) if n == 1 else run_data(7, 3)))

    with ScriptedServer(answering(make)) as server:
        with pytest.raises(DbtCloudMissingFinishedAtError):  # never a Running run handed back as the result
            sync_wait(server, max_wait_seconds=30, finished_at_grace_seconds=1.5)
        assert polls(server) >= 2


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"max_wait_seconds": math.nan}, "max_wait_seconds"),
        ({"max_wait_seconds": math.inf}, "max_wait_seconds"),
        ({"max_wait_seconds": 10, "on_timeout": "ignore"}, "on_timeout"),
    ],
)
def test_await_runs_refuses_bad_wait_settings_before_any_request(
    emulator: EmulatorServer, settings: dict[str, Any], named: str
) -> None:
    async def many() -> None:
        async with AsyncDbtCloudClient(ACCOUNT, TOKEN, emulator.url) as c:
            await await_runs(c, [7], schedules=lambda _: FAST, **settings)

    with pytest.raises(ValueError, match=named):
        asyncio.run(many())
    assert emulator.emulator.requests == []


def test_emulator_success_without_finished_at_never_reaches_the_caller(spec_validator: Any) -> None:
    from dbt_cloud_gate.dbtcloud_api.emulator import Emulator, JobSpec

    job = JobSpec(
        id=21, name="no-finish", queue_seconds=0.05, start_seconds=0.05, run_seconds=0.2, finished_at_missing=True
    )
    with EmulatorServer(Emulator([job], account_id=ACCOUNT, token=TOKEN, validator=spec_validator)) as server:
        with DbtCloudClient(ACCOUNT, TOKEN, server.url, retry=FAST_RETRY) as client:
            run = client.trigger_job_run(21, "no finish")
            with pytest.raises(DbtCloudMissingFinishedAtError, match="no watermark"):
                wait_for_run(
                    client, run.id, schedule=FAST, max_wait_seconds=30, finished_at_grace_seconds=1.5, job_id=21
                )


def test_the_poll_that_sees_the_end_is_the_last_read(client: DbtCloudClient, emulator: EmulatorServer) -> None:
    # The terminal poll carries the trigger and (the run having been seen running) its steps: no re-read follows.
    emulator.emulator.set_job(11, run_seconds=1.0)
    run = client.trigger_job_run(11, "no re-read")
    done = wait_for_run(client, run.id, schedule=FixedInterval(0.05), max_wait_seconds=30, job_id=11)
    assert done.status is RunStatus.SUCCESS and done.trigger is not None and done.run_steps
    reads = [r for r in emulator.emulator.requests if r.method == "GET" and r.path.endswith(f"/runs/{run.id}/")]
    assert all("trigger" in ",".join(r.query.get("include_related", [])) for r in reads)
    running = [r for r in reads if "run_steps" in ",".join(r.query.get("include_related", []))]
    assert running and reads[-1] is running[-1]
    assert len(reads) - len(running) <= 3  # queued/starting polls only; nothing read after the end


# -- a Waker between polls --------------------------------------------------------------------------------------


class FakeWaker:
    """A Waker whose wake-ups the test schedules: ``wake_at[k]`` wakes the k-th sleep (0-based) after that many
    seconds; every other sleep runs its full length. Records each sleep asked for."""

    def __init__(self, wake_at: dict[int, float] | None = None) -> None:
        self.wake_at = dict(wake_at or {})
        self.asked: list[tuple[int, float]] = []

    def _plan(self, run_id: int, seconds: float) -> tuple[float, bool]:
        index = len(self.asked)
        self.asked.append((run_id, seconds))
        after = self.wake_at.get(index)
        return (after, True) if after is not None and after < seconds else (seconds, False)

    def wait(self, run_id: int, seconds: float) -> bool:
        pause, woken = self._plan(run_id, seconds)
        time.sleep(pause)
        return woken

    async def await_wake(self, run_id: int, seconds: float) -> bool:
        pause, woken = self._plan(run_id, seconds)
        await asyncio.sleep(pause)
        return woken


def run_reads(emulator: EmulatorServer, run_id: int) -> int:
    return sum(1 for r in emulator.emulator.requests if r.method == "GET" and r.path.endswith(f"/runs/{run_id}/"))


def test_an_early_error_of_a_long_job_is_seen_at_the_early_cadence(
    client: DbtCloudClient, emulator: EmulatorServer
) -> None:
    # A ~10 min job (its band starts minutes in) whose run fails 2 s in: polled every 10 s in its early part, not
    # first at the 30 s cap.
    emulator.emulator.set_job(11, outcome="error", run_seconds=2.0)
    schedule = make_schedule([600.0, 620.0, 580.0, 610.0, 590.0], 30)
    run = client.trigger_job_run(11, "early error")
    waker = FakeWaker()
    done = wait_for_run(
        client, run.id, schedule=schedule, waker=waker, first_poll_delay_seconds=first_poll_delay(schedule)
    )
    assert done.status is RunStatus.ERROR
    assert waker.asked and all(seconds <= 10 for _, seconds in waker.asked)
    assert run_reads(emulator, run.id) <= 2


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_wake_up_polls_at_once_and_that_poll_decides(
    client: DbtCloudClient, emulator: EmulatorServer, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    emulator.emulator.set_job(11, run_seconds=1.0)
    run_id = client.trigger_job_run(11, "woken").id
    # Long sleeps (30 s) that only the wake-up can cut: sleep 0 wakes once the run is surely over.
    waker = FakeWaker({0: 2.0})
    started = time.monotonic()
    caplog.set_level("INFO", logger="dbt_cloud_gate.dbtcloud_api.wait")
    if mode == "sync":
        run = wait_for_run(client, run_id, schedule=FixedInterval(30), waker=waker, first_poll_delay_seconds=30)
    else:

        async def main() -> Run:
            async with AsyncDbtCloudClient(ACCOUNT, TOKEN, emulator.url, retry=FAST_RETRY) as c:
                return await await_run(c, run_id, schedule=FixedInterval(30), waker=waker, first_poll_delay_seconds=30)

        run = asyncio.run(main())
    assert run.status == RunStatus.SUCCESS and run.finished_at is not None
    assert time.monotonic() - started < 10
    assert waker.asked == [(run_id, 30.0)]  # only the first sleep: the poll after the wake-up saw the end
    assert run_reads(emulator, run_id) == 1
    assert "the poll after a wake-up saw it end" in caplog.text


def test_a_wake_up_for_an_unfinished_run_goes_back_to_the_schedule(
    client: DbtCloudClient, emulator: EmulatorServer
) -> None:
    emulator.emulator.set_job(11, run_seconds=1.5)
    run_id = client.trigger_job_run(11, "early wake").id
    # Woken at once (a started event, a reconnect): the run is still going, so the schedule goes on (0.4 s).
    waker = FakeWaker({0: 0.0})
    run = wait_for_run(client, run_id, schedule=FixedInterval(0.4), waker=waker, first_poll_delay_seconds=0.4)
    assert run.is_terminal
    # After the woken poll (still running), each sleep is the schedule's full interval again, not 0.
    assert len(waker.asked) >= 3
    assert all(seconds == pytest.approx(0.4, abs=0.05) for _, seconds in waker.asked)
    assert 3 <= run_reads(emulator, run_id) <= 8


def test_without_a_wake_up_the_waker_sleeps_the_whole_schedule(
    client: DbtCloudClient, emulator: EmulatorServer
) -> None:
    emulator.emulator.set_job(11, run_seconds=0.3)
    run_id = client.trigger_job_run(11, "no wake").id
    waker = FakeWaker()
    run = wait_for_run(client, run_id, schedule=FixedInterval(0.3), waker=waker, first_poll_delay_seconds=0.3)
    assert run.status == RunStatus.SUCCESS
    # The fallback polls found the end: as many sleeps as polls, each the schedule's interval.
    assert len(waker.asked) == run_reads(emulator, run_id) and waker.asked[0] == (run_id, 0.3)


def test_await_runs_shares_one_waker_across_runs(client: DbtCloudClient, emulator: EmulatorServer) -> None:
    emulator.emulator.set_job(11, run_seconds=0.5)
    ids = [client.trigger_job_run(11, f"fan {n}").id for n in range(3)]

    class WakeAfter(FakeWaker):
        async def await_wake(self, run_id: int, seconds: float) -> bool:
            self.asked.append((run_id, seconds))
            await asyncio.sleep(1.5)
            return True

    waker = WakeAfter()

    async def main() -> list[Any]:
        async with AsyncDbtCloudClient(ACCOUNT, TOKEN, emulator.url, retry=FAST_RETRY) as c:
            return await await_runs(
                c, ids, schedules=lambda _: FixedInterval(60), fetch_results=False, waker=waker, max_wait_seconds=30
            )

    outcomes = asyncio.run(main())
    assert [o.run.status for o in outcomes] == [RunStatus.SUCCESS] * 3
    asked = [run_id for run_id, _ in waker.asked]
    assert set(asked) == set(ids)
    # One read at once, then one per wake-up (runs of one job queue behind each other, so some need two):
    # the 60 s schedule never came into play.
    assert all(run_reads(emulator, run_id) == 1 + asked.count(run_id) for run_id in ids)


def test_await_runs_reads_the_results_of_every_step_that_builds(emulator: EmulatorServer) -> None:
    """Not only the last step's file (a `dbt test` step's, which names no model): the seed and run steps'."""
    emulator.emulator.add_job(
        JobSpec(
            id=21,
            queue_seconds=0.05,
            start_seconds=0.05,
            run_seconds=0.3,
            models=["stg_orders", "orders"],
            steps=[StepSpec("dbt seed", models=["raw_orders"]), StepSpec("dbt run"), StepSpec("dbt test")],
        )
    )

    async def main() -> list[Any]:
        async with AsyncDbtCloudClient(ACCOUNT, TOKEN, emulator.url, retry=FAST_RETRY) as client:
            run = await client.trigger_job_run(21, "multi-step")
            return await await_runs(
                client, [run.id], schedules=lambda _: FixedInterval(0.05), max_wait_seconds=20, job_ids={run.id: 21}
            )

    (outcome,) = asyncio.run(main())
    assert [m.name for m in outcome.models] == ["raw_orders", "stg_orders", "orders"]
    reads = [r.query.get("step") for r in emulator.emulator.requests if r.path.endswith("/run_results.json")]
    assert sorted(reads, key=str) == [["4"], ["5"]]


def test_the_first_poll_after_a_trigger_reads_the_history_and_a_failed_read_means_fixed_polling(
    emulator: EmulatorServer, caplog: pytest.LogCaptureFixture
) -> None:
    """``waiting.wait_in_task`` with no history read before the trigger: one list of the job's newest runs, when
    the first poll is due, is both that poll and the history; when that list cannot be read, the wait polls at
    the fixed interval and still ends."""
    from dbt_cloud_gate.settings import WaitSettings
    from dbt_cloud_gate.waiting import wait_in_task

    emulator.emulator.add_job(
        JobSpec(
            id=31, name="steady", queue_seconds=0.05, start_seconds=0.05, run_seconds=1.2, history_seconds=[1.2] * 4
        )
    )
    log = logging.getLogger("test.first-poll")
    caplog.set_level(logging.INFO, logger="test.first-poll")
    wait = WaitSettings(poll_interval_seconds=0.5, max_wait_seconds=30)
    with DbtCloudClient(ACCOUNT, TOKEN, emulator.url, retry=FAST_RETRY) as client:
        for failing in (False, True):
            if failing:
                emulator.emulator.add_fault(Fault(kind="status", status=500, method="GET", path=r"/runs/$", times=50))
            run_id = client.trigger_job_run(31, "first poll").id
            start = len(emulator.emulator.requests)
            finished = wait_in_task(client, run_id, log, wait, job_id=31, just_triggered=True)
            kinds = [r.kind for r in emulator.emulator.requests[start:]]
            assert finished.status == RunStatus.SUCCESS and finished.id == run_id
            # Failing, the list is retried (a 500 each time) and the polls come at the fixed interval.
            assert kinds[0] == "list" and set(kinds[1:]) == ({"list", "run"} if failing else {"run"}), kinds
            if not failing:  # one list, the first read of the run; a band from its history; no re-read of it
                assert kinds.count("list") == 1
                assert f"dbt Cloud run {run_id}: " in caplog.text and "(read with the job's recent runs)" in caplog.text
                assert f"Polling dbt Cloud run {run_id}: AdaptiveSchedule(band" in caplog.text
    emulator.emulator.clear_faults()
    assert "Could not read job 31's history" in caplog.text and "AdaptiveSchedule(no history" in caplog.text


def test_a_run_the_first_poll_saw_finished_is_read_at_once_even_on_a_short_budget(emulator: EmulatorServer) -> None:
    """The list that is the first poll shows the run already finished: the run is read once at once (its steps and
    trigger), and that final read gets its time even when the list used up nearly all of ``max_wait_seconds``."""
    from dbt_cloud_gate.settings import WaitSettings
    from dbt_cloud_gate.waiting import wait_in_task

    emulator.emulator.add_job(JobSpec(id=32, name="quick", queue_seconds=0.02, start_seconds=0.02, run_seconds=0.05))
    log = logging.getLogger("test.first-poll")
    with DbtCloudClient(ACCOUNT, TOKEN, emulator.url, retry=FAST_RETRY) as client:
        for max_wait in (30.0, 0.8):
            run_id = client.trigger_job_run(32, "first poll").id
            start = len(emulator.emulator.requests)
            wait = WaitSettings(poll_interval_seconds=0.5, max_wait_seconds=max_wait)
            finished = wait_in_task(client, run_id, log, wait, job_id=32, just_triggered=True)
            assert finished.status == RunStatus.SUCCESS and finished.finished_at is not None
            assert [r.kind for r in emulator.emulator.requests[start:]] == ["list", "run"]
