"""The webhook receiver: HTTP behaviour through httpx.ASGITransport (no port), the emulator delivering to it over
loopback, and the event landing on a real `prefect server`."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from prefect.events import Event

from dbt_cloud_gate.dbtcloud_api import DbtCloudClient
from dbt_cloud_gate.dbtcloud_api.emulator import EmulatorServer
from dbt_cloud_gate.dbtcloud_api.webhooks import delivery_payload, encode_body, sign
from dbt_cloud_gate.events import (
    LABEL_ACCOUNT_ID,
    LABEL_JOB_ID,
    LABEL_RUN_ID,
    WEBHOOK_EVENT_COMPLETED,
    event_uuid,
    run_id_of,
    webhook_event_filter,
)
from dbt_cloud_gate.receiver import (
    DEFAULT_PATH,
    PrefectEventsEmitter,
    ReceiverConfig,
    SeenEvents,
    TokenBuckets,
    create_app,
    secrets_from_env,
)
from dbt_cloud_gate.stack.services import PrefectServer
from tests.conftest import Served
from tests.prefect_db import seed_prefect_home

# The async tests run on anyio's pytest plugin (installed with httpx), on asyncio.
pytestmark = pytest.mark.anyio

SECRET = "s3cret-of-account-7-0123456789"
OTHER = "s3cret-of-account-8-9876543210"


class Recorded:
    """An emitter that keeps the events (or fails, when told to)."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.fail = False

    async def __call__(self, event: Event) -> None:
        if self.fail:
            raise ConnectionError("Prefect is down")
        self.events.append(event)


def body_for(event_type: str = "job.run.completed", *, account: int = 7, run: int = 501, **extra: Any) -> bytes:
    payload = delivery_payload(
        event_type, account_id=account, run_id=run, job_id=11, run_status_code=10, run_reason="secret-ish reason"
    )
    payload.update(extra)
    return encode_body(payload)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def emitted() -> Recorded:
    return Recorded()


@pytest.fixture
async def http(emitted: Recorded) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(ReceiverConfig(secrets={"account:7": SECRET, "8": OTHER}, burst=30, rate_per_second=5), emitted)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://receiver") as client:
        yield client


async def post(http: httpx.AsyncClient, body: bytes, signature: str | None) -> httpx.Response:
    headers = {"Content-Type": "application/json"}
    if signature is not None:
        headers["Authorization"] = signature
    return await http.post(DEFAULT_PATH, content=body, headers=headers)


async def test_a_verified_delivery_becomes_one_prefect_event(http: httpx.AsyncClient, emitted: Recorded) -> None:
    body = body_for()
    answer = await post(http, body, sign(body, SECRET))
    assert answer.status_code == 200 and answer.json()["status"] == "accepted"
    [event] = emitted.events
    dbt_event_id = json.loads(body)["eventId"]
    assert event.event == WEBHOOK_EVENT_COMPLETED == "dbt-cloud.run.webhook.completed"
    assert event.resource.id == "dbt-cloud.run.501" and run_id_of(event) == 501
    assert event.id == event_uuid(dbt_event_id)
    labels = dict(event.resource.items())
    assert (labels[LABEL_RUN_ID], labels[LABEL_JOB_ID], labels[LABEL_ACCOUNT_ID]) == ("501", "11", "7")
    assert all(isinstance(value, str) for value in labels.values())
    assert {(r.id, r.role) for r in event.related} == {("dbt-cloud.job.11", "job"), ("dbt-cloud.account.7", "account")}
    assert event.payload["dbt_event_id"] == dbt_event_id and event.payload["run_status_code"] == 10
    # A delivery for a run nobody waits for (dbt's test sample) is accepted too.
    sample = body_for(run=12345, account=8)
    assert (await post(http, sample, sign(sample, OTHER))).status_code == 200


@pytest.mark.parametrize("signature", [None, "", "0" * 64, "not hex at all"])
async def test_missing_or_wrong_signature_is_401(
    http: httpx.AsyncClient, emitted: Recorded, signature: str | None
) -> None:
    answer = await post(http, body_for(), signature)
    assert answer.status_code == 401 and emitted.events == []


async def test_a_signature_over_other_bytes_or_by_another_account_is_401(
    http: httpx.AsyncClient, emitted: Recorded
) -> None:
    body = body_for()
    assert (await post(http, body + b"\n", sign(body, SECRET))).status_code == 401
    # Account 8's secret cannot vouch for a delivery about account 7.
    assert (await post(http, body, sign(body, OTHER))).status_code == 401
    assert emitted.events == []


async def test_oversized_bodies_are_413_without_reading_them_whole(http: httpx.AsyncClient) -> None:
    big = b"{" + b" " * (70 * 1024) + b"}"
    assert (await post(http, big, sign(big, SECRET))).status_code == 413

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the cap applies while reading
        for _ in range(1000):
            yield b" " * 1024

    answer = await http.post(DEFAULT_PATH, content=chunks(), headers={"Authorization": "0" * 64})
    assert answer.status_code == 413


@pytest.mark.parametrize(
    "body", [b"not json", b"[]", encode_body({"accountId": 7}), encode_body({"hello": "x", "eventId": "wev_1"})]
)
async def test_a_signed_body_that_is_not_a_delivery_is_400(
    http: httpx.AsyncClient, emitted: Recorded, body: bytes
) -> None:
    answer = await post(http, body, sign(body, SECRET))
    assert answer.status_code == 400 and "delivery" in answer.json()["detail"] and emitted.events == []


async def test_redeliveries_make_one_event_and_a_failed_emit_is_retried(
    http: httpx.AsyncClient, emitted: Recorded
) -> None:
    body = body_for()
    emitted.fail = True
    assert (await post(http, body, sign(body, SECRET))).status_code == 503  # dbt Cloud will retry
    emitted.fail = False
    assert (await post(http, body, sign(body, SECRET))).json()["status"] == "accepted"
    again = await post(http, body, sign(body, SECRET))
    assert again.status_code == 200 and again.json()["status"] == "duplicate"
    assert len(emitted.events) == 1


async def test_unknown_event_types_are_acknowledged_and_ignored(http: httpx.AsyncClient, emitted: Recorded) -> None:
    body = body_for(eventType="job.run.cancelled")
    answer = await post(http, body, sign(body, SECRET))
    assert answer.status_code == 200 and answer.json()["status"] == "ignored" and emitted.events == []


async def test_rate_limit_per_client_address(http: httpx.AsyncClient) -> None:
    statuses = [(await http.get("/healthz")).status_code for _ in range(3)]
    assert statuses == [200, 200, 200]  # health is not rate limited
    answers = [await post(http, b"{}", "0" * 64) for _ in range(40)]
    codes = [a.status_code for a in answers]
    assert codes[:30] == [401] * 30 and set(codes[30:]) == {429}
    assert int(answers[-1].headers["Retry-After"]) >= 1


def test_token_bucket_refills_and_is_per_address() -> None:
    buckets = TokenBuckets(rate=2.0, burst=2.0)
    assert [buckets.take("a", now=0.0) for _ in range(3)] == [0.0, 0.0, 0.5]
    assert buckets.take("b", now=0.0) == 0.0
    assert buckets.take("a", now=1.0) == 0.0
    seen = SeenEvents(ttl_seconds=10)
    assert seen.add("wev_1", now=0) and not seen.add("wev_1", now=5) and seen.add("wev_1", now=11)


async def test_health_and_counts(http: httpx.AsyncClient) -> None:
    body = body_for()
    await post(http, body, sign(body, SECRET))
    await post(http, body, None)
    health = (await http.get("/healthz")).json()
    assert health["status"] == "ok" and health["secrets"] == 2
    assert health["counts"] == {"accepted": 1, "unauthorized": 1}
    assert SECRET not in json.dumps(health)


async def test_logs_carry_ids_only(
    http: httpx.AsyncClient, emitted: Recorded, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="dbt_cloud_gate.receiver")
    body = body_for()
    signature = sign(body, SECRET)
    await post(http, body, signature)
    await post(http, body, signature)
    await post(http, body, "f" * 64)
    text = caplog.text
    assert json.loads(body)["eventId"] in text and "run 501" in text
    for leaked in (SECRET, OTHER, signature, "secret-ish reason", body.decode()):
        assert leaked not in text


async def test_secrets_are_reloaded_when_none_matches(emitted: Recorded) -> None:
    loads: list[int] = []

    async def reload() -> dict[str, str]:
        loads.append(1)
        return {"rotated": "a-new-secret-after-rotation"}

    config = ReceiverConfig(secrets={"old": SECRET}, reload_secrets=reload, reload_min_seconds=0.0)
    app = create_app(config, emitted)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://r") as http:
        body = body_for()
        assert (await post(http, body, sign(body, "a-new-secret-after-rotation"))).status_code == 200
    assert loads == [1] and len(emitted.events) == 1


def test_configuration_is_checked() -> None:
    with pytest.raises(ValueError, match="no secret"):
        create_app(ReceiverConfig(), Recorded())
    env = {"DBT_CLOUD_WEBHOOK_SECRETS": json.dumps({"account:7": "a", "wsu_1": "b"}), "DBT_CLOUD_WEBHOOK_SECRET": "c"}
    assert secrets_from_env(env) == {"account:7": "a", "wsu_1": "b", "DBT_CLOUD_WEBHOOK_SECRET": "c"}
    for bad in ("not json", "[1]", json.dumps({"a": ""})):
        with pytest.raises(ValueError, match="DBT_CLOUD_WEBHOOK_SECRETS"):
            secrets_from_env({"DBT_CLOUD_WEBHOOK_SECRETS": bad})


def test_cli_refuses_to_start_without_a_prefect_server_or_a_secret() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API", "DBT_CLOUD_WEBHOOK"))}
    for api_url, problem in ((None, "PREFECT_API_URL"), ("http://127.0.0.1:9/api", "no webhook secret")):
        if api_url:
            env["PREFECT_API_URL"] = api_url
        done = subprocess.run(
            [sys.executable, "-m", "dbt_cloud_gate.receiver", "serve", "--port", "0"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 2 and problem in done.stderr


# -- over loopback ------------------------------------------------------------------------------------------


def test_the_emulator_delivers_to_the_receiver_over_loopback(
    client: DbtCloudClient, emulator: EmulatorServer, emitted: Recorded
) -> None:
    holder: dict[str, str] = {}
    app = create_app(ReceiverConfig(secrets={"placeholder": "x" * 32}), emitted)
    with Served(app) as served:
        made = client.create_webhook_subscription("loopback", served.url)
        assert made.hmac_secret is not None
        holder[made.id] = made.hmac_secret.get_secret_value()
        app.state.receiver.config.secrets = holder  # as a reload from the Secret block would
        ok, failed = client.trigger_job_run(11, "ok"), client.trigger_job_run(12, "fails")
        deadline = time.monotonic() + 10
        while len(emitted.events) < 5:
            assert time.monotonic() < deadline, [e.event for e in emitted.events]
            time.sleep(0.05)
    names = sorted((e.event.rsplit(".", 1)[-1], run_id_of(e)) for e in emitted.events)
    expected = [("started", ok.id), ("completed", ok.id), ("started", failed.id), ("errored", failed.id)]
    assert names == sorted([*expected, ("completed", failed.id)])
    attempts = emulator.emulator.webhooks.deliveries
    assert all(d.ok for d in attempts) and max(d.seconds for d in attempts) < 1.0


# -- a real Prefect server ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The API URL of a `prefect server start` of this module's own."""
    with PrefectServer(seed_prefect_home(tmp_path_factory.mktemp("receiver-prefect-home")), ui=False) as server:
        yield server.api_url


@pytest.mark.slow
def test_the_event_lands_on_a_real_prefect_server_once(prefect_server: str) -> None:
    from prefect.events.clients import get_events_subscriber
    from prefect.settings import PREFECT_API_URL, temporary_settings

    body = body_for(run=777001)
    dbt_event_id = json.loads(body)["eventId"]

    async def scenario() -> tuple[Event, list[dict[str, Any]], float]:
        emitter = PrefectEventsEmitter(prefect_server)
        # Two receivers (no shared memory): both emit the redelivery; the server keeps one event.
        apps = [create_app(ReceiverConfig(secrets={"7": SECRET}), emitter) for _ in range(2)]
        async with get_events_subscriber(filter=webhook_event_filter([777001])) as subscriber:
            started = time.monotonic()
            for app in apps:
                async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://r") as http:
                    assert (await post(http, body, sign(body, SECRET))).json()["status"] == "accepted"
            live = await asyncio.wait_for(anext(aiter(subscriber)), timeout=20)
            lag = time.monotonic() - started
        await emitter.aclose()
        stored: list[dict[str, Any]] = []
        deadline = time.monotonic() + 30  # the server persists events in batches (every 5 s)
        async with httpx.AsyncClient(timeout=10) as api:
            while not stored and time.monotonic() < deadline:
                await asyncio.sleep(1)
                found = await api.post(
                    f"{prefect_server}/events/filter",
                    json={"filter": {"any_resource": {"id": ["dbt-cloud.run.777001"]}}, "limit": 50},
                )
                stored = found.json()["events"]
            await asyncio.sleep(6)  # a second copy, had the server kept one, would be persisted by now
            found = await api.post(
                f"{prefect_server}/events/filter",
                json={"filter": {"any_resource": {"id": ["dbt-cloud.run.777001"]}}, "limit": 50},
            )
            stored = found.json()["events"]
        return live, stored, lag

    with temporary_settings({PREFECT_API_URL: prefect_server}):
        live, stored, lag = asyncio.run(scenario())
    assert live.event == "dbt-cloud.run.webhook.completed" and live.id == event_uuid(dbt_event_id)
    assert lag < 5, f"the live event took {lag:.2f} s"
    assert [e["id"] for e in stored] == [str(event_uuid(dbt_event_id))]
    assert stored[0]["resource"]["dbt-cloud.run-id"] == "777001"
    # occurred is the receiving time (a subscriber's window starts a minute back), not dbt's timestamp.
    assert abs(datetime.now(UTC) - live.occurred) < timedelta(seconds=60)
