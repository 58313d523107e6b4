"""The emulator's v3 webhook subscriptions and its deliveries, through the client, over loopback HTTP."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from dbt_cloud_gate.dbtcloud_api import AsyncDbtCloudClient, DbtCloudClient, DbtCloudConfigError, DbtCloudNotFoundError
from dbt_cloud_gate.dbtcloud_api.emulator import EmulatorServer, WebhookFault
from dbt_cloud_gate.dbtcloud_api.openapi import SpecValidator, load_default_validator
from dbt_cloud_gate.dbtcloud_api.webhooks import EVENT_TYPES, parse_delivery, verify
from tests.conftest import ACCOUNT, FAST_RETRY, TOKEN


class Recorder:
    """A loopback endpoint that records each POST (headers and raw body) and answers ``status`` after ``delay``."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.status = 200
        self.delay = 0.0
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                recorder.received.append((dict(self.headers.items()), raw))
                time.sleep(recorder.delay)
                self.send_response(recorder.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/dbt-cloud"
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def events(self) -> list[tuple[str, int]]:
        """(eventType, runId) of each delivery received, in arrival order."""
        return [(d.event_type, d.run_id) for d in (parse_delivery(body) for _, body in self.received)]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    sink = Recorder()
    yield sink
    sink.close()


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def fast_retries(emulator: EmulatorServer) -> None:
    hub = emulator.emulator.webhooks
    hub.retry_delays = (0.05,)
    hub.timeout_seconds = 0.5


def test_subscription_life_cycle(client: DbtCloudClient, emulator: EmulatorServer, recorder: Recorder) -> None:
    created = client.create_webhook_subscription("prefect", recorder.url, job_ids=[12, 11], description="gate")
    assert created.id.startswith("wsu_") and created.active and created.job_ids == [11, 12]
    assert created.hmac_secret is not None and len(created.hmac_secret.get_secret_value()) >= 32
    assert created.hmac_secret.get_secret_value() not in repr(created)  # a secret, not printed
    assert sorted(created.event_types) == sorted(EVENT_TYPES)

    listed = client.list_webhook_subscriptions()
    assert [s.id for s in listed] == [created.id] and listed[0].hmac_secret is None  # shown once only
    read = client.get_webhook_subscription(created.id)
    assert read.job_ids == [11, 12] and read.client_url == recorder.url and read.description == "gate"

    updated = client.update_webhook_subscription(
        created.id, "prefect", recorder.url, job_ids=[], event_types=["job.run.completed"], active=False
    )
    assert updated.job_ids == [] and not updated.active and updated.event_types == ["job.run.completed"]

    client.update_webhook_subscription(created.id, "prefect", recorder.url)
    test = client.test_webhook_subscription(created.id)
    wait_for(lambda: len(recorder.received) == 1)
    headers, body = recorder.received[0]
    sample = parse_delivery(body)
    # dbt's test delivery carries a fixed sample run, whatever the account runs.
    assert sample.event_id == test["event_id"] and sample.run_id == 12345 and sample.account_id == ACCOUNT
    assert verify(body, headers["Authorization"], created.hmac_secret.get_secret_value())

    assert client.delete_webhook_subscription(created.id) == created.id
    with pytest.raises(DbtCloudNotFoundError):
        client.get_webhook_subscription(created.id)
    assert client.list_webhook_subscriptions() == []
    v3 = [r for r in emulator.emulator.requests if r.path.startswith("/api/v3/")]
    assert len(v3) == 9 and all(not r.spec_problems for r in v3)


def test_async_client_same_subscription_calls(emulator: EmulatorServer, recorder: Recorder) -> None:
    async def scenario() -> list[str]:
        async with AsyncDbtCloudClient(ACCOUNT, TOKEN, emulator.url, retry=FAST_RETRY) as client:
            created = await client.create_webhook_subscription("a", recorder.url, event_types=["job.run.errored"])
            await client.update_webhook_subscription(created.id, "a", recorder.url, job_ids=[11])
            read = await client.get_webhook_subscription(created.id)
            listed = await client.list_webhook_subscriptions(page_size=1)
            await client.test_webhook_subscription(created.id)
            await client.delete_webhook_subscription(created.id)
            return [str(read.job_ids), str(len(listed))]

    assert asyncio.run(scenario()) == ["[11]", "1"]
    sent = [(r.method, r.path.rsplit("/webhooks/", 1)[-1].split("/")[0]) for r in emulator.emulator.requests]
    assert sent == [
        ("POST", "subscriptions"),
        ("PUT", "subscription"),
        ("GET", "subscription"),
        ("GET", "subscriptions"),
        ("GET", "subscriptions"),  # page size 1: a second page, empty
        ("GET", "subscription"),
        ("DELETE", "subscription"),
    ]


def test_list_pages_through_every_subscription(client: DbtCloudClient, recorder: Recorder) -> None:
    made = {client.create_webhook_subscription(f"s{i}", recorder.url).id for i in range(5)}
    assert {s.id for s in client.list_webhook_subscriptions(page_size=2)} == made


@pytest.mark.parametrize(
    ("call", "problem"),
    [
        (lambda c: c.create_webhook_subscription("x", "http://receiver.example/hook"), "plain http"),
        (lambda c: c.create_webhook_subscription("x", "https://a.example/\thook"), "tab"),
        (lambda c: c.create_webhook_subscription("x", "ftp://a.example/"), "https://"),
        (lambda c: c.create_webhook_subscription("x", "https://u:p@a.example/"), "credentials"),
        (lambda c: c.create_webhook_subscription(" ", "https://a.example/"), "name"),
        (lambda c: c.create_webhook_subscription("x", "https://a.example/", event_types=[]), "event_types"),
        (lambda c: c.create_webhook_subscription("x", "https://a.example/", event_types=["run.done"]), "event_types"),
        (lambda c: c.create_webhook_subscription("x", "https://a.example/", job_ids=[0]), "job_ids"),
        (lambda c: c.create_webhook_subscription("x", "https://a.example/", job_ids=[True]), "job_ids"),
        (lambda c: c.get_webhook_subscription("../runs"), "subscription ID"),
        (lambda c: c.delete_webhook_subscription(""), "subscription ID"),
    ],
)
def test_bad_arguments_are_refused_before_a_request(
    client: DbtCloudClient, emulator: EmulatorServer, call: Callable[[DbtCloudClient], Any], problem: str
) -> None:
    with pytest.raises(DbtCloudConfigError, match=problem):
        call(client)
    assert emulator.emulator.requests == []


def test_client_requests_match_the_v3_spec() -> None:
    validator = load_default_validator("v3")
    assert isinstance(validator, SpecValidator)
    client = DbtCloudClient(1, "t0ken-for-spec", "https://cloud.getdbt.com")
    calls: list[Any] = [
        client.list_webhook_subscriptions_call(100, 0),
        client.create_webhook_subscription_call("n", "https://r.example/h", {"job_ids": [3, 1], "description": "d"}),
        client.create_webhook_subscription_call("n", "https://r.example/h", {}),
        client.get_webhook_subscription_call("wsu_abc"),
        client.update_webhook_subscription_call("wsu_abc", "n", "https://r.example/h", {"active": False}),
        client.delete_webhook_subscription_call("wsu_abc"),
        client.test_webhook_subscription_call("wsu_abc"),
    ]
    for call in calls:
        request = client._http.build_request(**client._request(call))
        split = httpx.URL(str(request.url))
        body = json.loads(request.content) if request.content else None
        query = {key: [value] for key, value in split.params.items()}
        problems = validator.validate(request.method, split.path, query, body, has_body=bool(request.content))
        assert problems == [], f"{request.method} {request.url}: {problems}"
    client.close()


def test_deliveries_follow_each_run_as_dbt_cloud_sends_them(
    client: DbtCloudClient, emulator: EmulatorServer, recorder: Recorder
) -> None:
    secret = client.create_webhook_subscription("all", recorder.url).hmac_secret
    assert secret is not None
    ok = client.trigger_job_run(11, "ok")
    failed = client.trigger_job_run(12, "fails")
    cancelled = client.trigger_job_run(14, "will be cancelled")  # a 30 s run
    wait_for(lambda: ("job.run.started", cancelled.id) in recorder.events())
    client.cancel_run(cancelled.id)
    wait_for(lambda: len(recorder.events()) >= 5)
    time.sleep(0.5)  # anything more (there should be nothing) arrives meanwhile
    events = recorder.events()
    assert sorted(e for e in events if e[1] == ok.id) == [("job.run.completed", ok.id), ("job.run.started", ok.id)]
    assert sorted(e for e in events if e[1] == failed.id) == [
        ("job.run.completed", failed.id),
        ("job.run.errored", failed.id),
        ("job.run.started", failed.id),
    ]
    # A cancellation sends nothing: only the start of the cancelled run arrived.
    assert [e for e in events if e[1] == cancelled.id] == [("job.run.started", cancelled.id)]
    by_event = {(d.event_type, d.run_id): d for d in (parse_delivery(body) for _, body in recorder.received)}
    errored = by_event[("job.run.errored", failed.id)]
    assert errored.status is not None and errored.status.value == 20 and errored.data.run_errored_at is not None
    assert by_event[("job.run.completed", ok.id)].data.run_status_code == 10
    assert by_event[("job.run.completed", failed.id)].data.run_status_code == 20
    assert by_event[("job.run.completed", ok.id)].data.run_reason == "ok"
    for headers, body in recorder.received:
        assert verify(body, headers["Authorization"], secret.get_secret_value())
        assert headers["Content-Type"] == "application/json"
    # errored fires at once; completed only after the artifacts (later).
    order = [e for e in events if e[1] == failed.id]
    assert order.index(("job.run.errored", failed.id)) < order.index(("job.run.completed", failed.id))


def test_job_ids_and_event_types_narrow_what_is_sent(
    client: DbtCloudClient, emulator: EmulatorServer, recorder: Recorder
) -> None:
    client.create_webhook_subscription("only-11", recorder.url, job_ids=[11], event_types=["job.run.completed"])
    runs = [client.trigger_job_run(11, "a"), client.trigger_job_run(12, "b")]
    wait_for(lambda: len(recorder.received) >= 1)
    time.sleep(0.8)  # job 12's run ends meanwhile: nothing for it
    assert recorder.events() == [("job.run.completed", runs[0].id)]


def test_failed_deliveries_are_retried_then_the_subscription_is_deactivated(
    client: DbtCloudClient, emulator: EmulatorServer, recorder: Recorder
) -> None:
    fast_retries(emulator)
    recorder.status = 500
    made = client.create_webhook_subscription("flaky", recorder.url, event_types=["job.run.completed"])
    run = client.trigger_job_run(11, "x")
    wait_for(lambda: not client.get_webhook_subscription(made.id).active)
    read = client.get_webhook_subscription(made.id)
    assert read.deactivate_reason and "5 consecutive" in read.deactivate_reason and read.http_status_code == "500"
    attempts = [d for d in emulator.emulator.webhooks.deliveries if d.run_id == run.id]
    assert [d.attempt for d in attempts] == [1, 2, 3, 4, 5]
    assert len({d.event_id for d in attempts}) == 1  # a retry re-sends the same event
    # Deactivated: the next run sends nothing, until a PUT turns it on again.
    client.trigger_job_run(11, "while off")
    time.sleep(0.8)
    assert len(recorder.received) == 5
    recorder.status = 200
    client.update_webhook_subscription(made.id, "flaky", recorder.url, event_types=["job.run.completed"])
    again = client.trigger_job_run(11, "on again")
    wait_for(lambda: ("job.run.completed", again.id) in recorder.events())
    assert client.get_webhook_subscription(made.id).deactivate_reason is None


def test_a_retry_succeeds_and_a_slow_receiver_counts_as_a_failure(
    client: DbtCloudClient, emulator: EmulatorServer, recorder: Recorder
) -> None:
    fast_retries(emulator)
    emulator.emulator.webhooks.timeout_seconds = 0.2
    recorder.delay = 0.4  # past the sender's timeout
    client.create_webhook_subscription("slow", recorder.url, event_types=["job.run.completed"])
    run = client.trigger_job_run(11, "x")
    wait_for(lambda: len(recorder.received) >= 2)
    recorder.delay = 0.0
    hub = emulator.emulator.webhooks
    wait_for(lambda: any(d.ok for d in hub.deliveries))
    attempts = [d for d in hub.deliveries if d.run_id == run.id]
    assert attempts[0].status is None and "Timeout" in (attempts[0].error or "")
    assert attempts[-1].ok and attempts[-1].attempt >= 2


@pytest.mark.parametrize("kind", ["drop", "bad_signature", "duplicate", "delay"])
def test_injected_delivery_faults(
    client: DbtCloudClient, emulator: EmulatorServer, recorder: Recorder, kind: str
) -> None:
    hub = emulator.emulator.webhooks
    hub.add_fault(WebhookFault(kind, event_type="job.run.completed", delay=0.6, times=1))  # type: ignore[arg-type]
    made = client.create_webhook_subscription("faulty", recorder.url, event_types=["job.run.completed"])
    assert made.hmac_secret is not None
    started = time.monotonic()
    run = client.trigger_job_run(11, "x")
    if kind == "drop":
        time.sleep(1.2)
        assert recorder.received == [] and hub.deliveries[0].fault == "drop"
        return
    expected = 2 if kind == "duplicate" else 1
    wait_for(lambda: len(recorder.received) >= expected)
    time.sleep(0.2)
    assert recorder.events() == [("job.run.completed", run.id)] * expected
    headers, body = recorder.received[0]
    signed = verify(body, headers["Authorization"], made.hmac_secret.get_secret_value())
    assert signed == (kind != "bad_signature")
    if kind == "duplicate":
        assert recorder.received[0][1] == recorder.received[1][1]  # same event, same bytes
    if kind == "delay":
        assert time.monotonic() - started >= 0.6 + 0.3  # the run's length plus the delay


def test_admin_endpoints_configure_faults_and_list_deliveries(emulator: EmulatorServer) -> None:
    with httpx.Client(base_url=emulator.url, timeout=5) as http:
        made = http.post("/_emulator/webhooks/faults", json={"kind": "drop", "probability": 0.1})
        assert made.status_code == 200 and made.json()["data"]["kind"] == "drop"
        assert http.post("/_emulator/webhooks/faults", json={"kind": "explode"}).status_code == 400
        settings = http.post("/_emulator/webhooks/settings", json={"retry_delays": [0.1], "max_retries": 2})
        assert settings.json()["data"]["max_retries"] == 2
        assert http.post("/_emulator/webhooks/settings", json={"nope": 1}).status_code == 400
        assert http.get("/_emulator/webhooks/deliveries").json()["data"] == []
        assert http.delete("/_emulator/webhooks/faults").status_code == 200
    assert emulator.emulator.webhooks.faults == [] and emulator.emulator.webhooks.retry_delays == (0.1,)
