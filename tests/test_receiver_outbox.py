"""The receiver's durable outbox: a 2xx only once the event is a row on disk, one row per dbt event, 503 when the
row cannot be written, depth and age in /healthz and /metrics; and, against real `prefect server` processes
killed with SIGKILL, every acknowledged event in Prefect exactly once after the restarts."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from dbt_cloud_gate.dbtcloud_api.webhooks import delivery_payload, encode_body, sign
from dbt_cloud_gate.events import event_uuid
from dbt_cloud_gate.forwarder import DurableEmitter, Forwarder, ForwarderSettings, PrefectEventsApi
from dbt_cloud_gate.outbox import Outbox, OutboxError
from dbt_cloud_gate.receiver import DEFAULT_PATH, ReceiverConfig, create_app
from dbt_cloud_gate.stack.services import PrefectServer, free_port, kill_process_tree, stop_process_tree, wait_healthy
from tests.prefect_db import seed_prefect_home

pytestmark = pytest.mark.anyio

SECRET = "s3cret-of-account-7-0123456789"
FAST = ForwarderSettings(confirm_poll_seconds=0.05, backoff_initial_seconds=0.05, backoff_max_seconds=0.1)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def delivery(run: int, event_type: str = "job.run.completed") -> bytes:
    """A delivery body as dbt Cloud sends it (a fresh eventId each call)."""
    return encode_body(delivery_payload(event_type, account_id=7, run_id=run, job_id=11, run_status_code=10))


def prefect_id(body: bytes) -> str:
    return str(event_uuid(json.loads(body)["eventId"]))


def signed(body: bytes) -> dict[str, str]:
    return {"Authorization": sign(body, SECRET), "Content-Type": "application/json"}


def rows(path: Path) -> list[tuple[str, float | None]]:
    """The outbox's rows, read by a connection of the test's own (what is committed is what it sees)."""
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT event_id, confirmed_at FROM outbox ORDER BY received_at").fetchall()


def durable(path: Path, api_url: str | None = None, **outbox: Any) -> DurableEmitter:
    """An emitter on the outbox at ``path``, forwarding to ``api_url`` (default: a closed loopback port)."""
    box = Outbox(path, **outbox).open()
    api = PrefectEventsApi(api_url or f"http://127.0.0.1:{free_port()}/api", timeout_seconds=2)
    return DurableEmitter(box, Forwarder(box, api, FAST))


@asynccontextmanager
async def receiver(emit: DurableEmitter, *, forward: bool = False) -> AsyncIterator[httpx.AsyncClient]:
    """The app through ASGITransport (no port); ``forward`` runs its lifespan (the forwarder) too."""
    app = create_app(ReceiverConfig(secrets={"account:7": SECRET}), emit)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://receiver") as http:
        if forward:
            async with emit.lifespan(app):
                yield http
        else:
            yield http
            await emit.forwarder.api.aclose()
            emit.outbox.close()


async def deliver(http: httpx.AsyncClient, body: bytes) -> httpx.Response:
    return await http.post(DEFAULT_PATH, content=body, headers=signed(body))


async def test_the_200_comes_after_the_row_and_a_redelivery_is_the_same_row(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    body = delivery(501)
    async with receiver(durable(path)) as http:
        answer = await deliver(http, body)
        assert answer.status_code == 200 and answer.json()["status"] == "accepted"
        assert rows(path) == [(prefect_id(body), None)]  # committed before the answer, waiting for Prefect
        assert (await deliver(http, body)).json()["status"] == "duplicate"
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    # A restarted receiver (its memory empty) still knows the event from the outbox.
    async with receiver(durable(path)) as http:
        again = await deliver(http, body)
        assert again.status_code == 200 and again.json()["status"] == "duplicate"
    assert rows(path) == [(prefect_id(body), None)]


async def test_a_full_outbox_answers_503_and_nothing_is_acknowledged_unwritten(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    emit = durable(path, max_bytes=8 * 4096)  # SQLITE_FULL after a few rows: the error a full disk gives
    async with receiver(emit) as http:
        bodies = [delivery(600 + n) for n in range(60)]
        answers = [await deliver(http, body) for body in bodies]
        codes = [a.status_code for a in answers]
        assert 200 in codes and 503 in codes, codes
        accepted = {prefect_id(b) for b, a in zip(bodies, answers, strict=True) if a.status_code == 200}
        assert {event_id for event_id, _ in rows(path)} == accepted  # every 2xx is a row, every row a 2xx
        refused = answers[codes.index(503)].json()
        assert refused["status"] == "unavailable" and "retry" in refused["detail"]
        health = (await http.get("/healthz")).json()
        assert health["outbox"]["depth"] == len(accepted) and health["counts"]["unavailable"] == codes.count(503)


async def test_a_locked_or_closed_outbox_answers_503_and_the_retry_goes_through(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    emit = durable(path, busy_timeout_seconds=0.2)
    body = delivery(701)
    async with receiver(emit) as http:
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")  # another process holds the write lock (a backup, a second writer)
        started = time.monotonic()
        answer = await deliver(http, body)
        assert answer.status_code == 503 and time.monotonic() - started < 5
        holder.execute("ROLLBACK")
        holder.close()
        assert rows(path) == []
        assert (await deliver(http, body)).json()["status"] == "accepted"  # dbt Cloud's retry
        assert rows(path) == [(prefect_id(body), None)]
        emit.outbox.close()  # an outbox that cannot be used at all: deliveries and health say so
        assert (await deliver(http, delivery(702))).status_code == 503
        health = await http.get("/healthz")
        assert health.status_code == 503 and health.json()["status"] == "outbox_unavailable"


def test_an_outbox_that_cannot_be_opened_is_a_clear_error(tmp_path: Path) -> None:
    garbage = tmp_path / "not-an-outbox.sqlite3"
    garbage.write_bytes(b"these bytes are no SQLite database " * 200)
    with pytest.raises(OutboxError, match=r"not-an-outbox\.sqlite3"):
        Outbox(garbage).open()
    first = Outbox(tmp_path / "outbox.sqlite3").open()
    with pytest.raises(OutboxError, match="another receiver"):
        Outbox(tmp_path / "outbox.sqlite3").open()
    first.close()
    Outbox(tmp_path / "outbox.sqlite3").open().close()  # the lock went with the first


async def test_depth_and_age_show_in_healthz_and_metrics(tmp_path: Path) -> None:
    emit = durable(tmp_path / "outbox.sqlite3")
    first, second = delivery(801), delivery(802)
    async with receiver(emit) as http:
        empty = (await http.get("/healthz")).json()["outbox"]
        assert (empty["depth"], empty["oldest_age_seconds"]) == (0, None)
        await deliver(http, first)
        await asyncio.sleep(0.3)
        second_sent = time.monotonic()
        await deliver(http, second)
        outbox = (await http.get("/healthz")).json()["outbox"]
        assert outbox["depth"] == 2 and 0.3 <= outbox["oldest_age_seconds"] < 30
        metrics = await http.get("/metrics")
        assert metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
        values = dict(line.rsplit(" ", 1) for line in metrics.text.splitlines() if not line.startswith("#"))
        assert values["dbt_cloud_gate_receiver_outbox_depth"] == "2"
        assert float(values["dbt_cloud_gate_receiver_outbox_oldest_age_seconds"]) >= 0.3
        assert values['dbt_cloud_gate_receiver_deliveries_total{outcome="accepted"}'] == "2"
        assert await emit.outbox.confirm([prefect_id(first)]) == 1  # as the forwarder does once Prefect has it
        outbox = (await http.get("/healthz")).json()["outbox"]
        # The age is now the second's: no older than the time since it was sent (the first's is 0.3 s more), however
        # long a loaded machine took to get here.
        assert outbox["depth"] == 1 and outbox["oldest_age_seconds"] <= time.monotonic() - second_sent + 0.05


async def test_while_prefect_is_unreachable_every_event_stays_and_health_says_why(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    emit = durable(path)  # its Prefect is a closed port
    bodies = [delivery(900 + n) for n in range(3)]
    async with receiver(emit, forward=True) as http:
        assert [(await deliver(http, body)).status_code for body in bodies] == [200] * 3
        deadline = time.monotonic() + 10
        while emit.forwarder.failures_total < 3:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        outbox = (await http.get("/healthz")).json()["outbox"]
    assert outbox["depth"] == 3 and outbox["confirmed"] == 0 and outbox["last_error"] == "ConnectError"
    assert sorted(event_id for event_id, _ in rows(path)) == sorted(prefect_id(b) for b in bodies)


# -- real Prefect servers, killed ---------------------------------------------------------------------------


class ReceiverProcess:
    """``python -m dbt_cloud_gate.receiver serve`` as its own process (killed with SIGKILL in the test)."""

    def __init__(self, api_url: str, outbox: Path, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API", "DBT_CLOUD_WEBHOOK"))}
        env.update(PREFECT_API_URL=api_url, DBT_CLOUD_WEBHOOK_SECRET=SECRET)
        args = ["serve", "--port", str(self.port), "--outbox", str(outbox)]
        with log.open("ab") as sink:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "dbt_cloud_gate.receiver", *args],
                env=env,
                stdout=sink,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        wait_healthy(self.process, f"{self.url}/healthz", log, "the receiver", 60)

    def outbox(self) -> dict[str, Any]:
        return dict(httpx.get(f"{self.url}/healthz", timeout=5).json()["outbox"])

    def deliver(self, body: bytes) -> httpx.Response:
        return httpx.post(f"{self.url}{DEFAULT_PATH}", content=body, headers=signed(body), timeout=10)

    def wait_for(self, what: str, test: Any, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while not test(outbox := self.outbox()):
            assert time.monotonic() < deadline, f"{what}: {outbox}"
            time.sleep(0.05)
        return outbox


def stored_webhook_events(api_url: str) -> list[str]:
    """The IDs of the webhook events in the server's database (what /events/filter reads)."""
    answer = httpx.post(
        f"{api_url}/events/filter",
        json={"filter": {"event": {"prefix": ["dbt-cloud.run.webhook."]}}, "limit": 50},
        timeout=10,
    )
    answer.raise_for_status()
    return [str(event["id"]) for event in answer.json()["events"]]


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts: stopped (with their children) whatever happens."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        stop_process_tree(process, timeout=10)


@pytest.mark.slow
def test_sigkill_of_prefect_and_of_the_receiver_after_the_200s_loses_no_event(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    home, outbox = seed_prefect_home(tmp_path / "prefect"), tmp_path / "outbox.sqlite3"
    # The first server never flushes its queue on its own (as if killed within Prefect's 5 s flush interval).
    first = PrefectServer(home, ui=False, extra_env={"PREFECT_SERVER_SERVICES_EVENT_PERSISTER_FLUSH_INTERVAL": "3600"})
    processes.append(first.start().process)  # type: ignore[arg-type]
    receiver = ReceiverProcess(first.api_url, outbox, tmp_path / "receiver-1.log")
    processes.append(receiver.process)

    # 1. Five deliveries, answered 200 and posted to Prefect, which answered once they were in its memory...
    handed = [delivery(3000 + n) for n in range(5)]
    assert [receiver.deliver(body).json()["status"] for body in handed] == ["accepted"] * 5
    receiver.wait_for("posted to Prefect", lambda o: o["posted"] >= 5)
    assert first.process is not None
    kill_process_tree(first.process)  # ...then Prefect dies.
    # 2. Five more, answered 200 while Prefect is down; then the receiver dies before it could forward them.
    unsent = [delivery(4000 + n) for n in range(5)]
    assert [receiver.deliver(body).json()["status"] for body in unsent] == ["accepted"] * 5
    at_kill = receiver.outbox()
    kill_process_tree(receiver.process)
    assert at_kill["depth"] == 10 and at_kill["confirmed"] == 0, at_kill

    # 3. Prefect comes back (on its database; a new port) without the first five: they were only in its memory.
    second = PrefectServer(home, ui=False, extra_env={"PREFECT_SERVER_SERVICES_EVENT_PERSISTER_FLUSH_INTERVAL": "0.3"})
    processes.append(second.start().process)  # type: ignore[arg-type]
    assert stored_webhook_events(second.api_url) == []
    # 4. The receiver comes back on the same outbox and forwards all ten; each leaves once read back.
    restarted = ReceiverProcess(second.api_url, outbox, tmp_path / "receiver-2.log")
    processes.append(restarted.process)
    done = restarted.wait_for("all ten confirmed", lambda o: o["depth"] == 0)
    assert done["confirmed"] == 10 and done["posted"] >= 10
    expected = sorted(prefect_id(body) for body in handed + unsent)
    assert sorted(stored_webhook_events(second.api_url)) == expected  # every one, once

    # 5. dbt Cloud's redeliveries of all ten make no event; a new one still does.
    assert {restarted.deliver(body).json()["status"] for body in handed + unsent} == {"duplicate"}
    late = delivery(5000)
    assert restarted.deliver(late).json()["status"] == "accepted"
    restarted.wait_for("the late one confirmed", lambda o: o["depth"] == 0 and o["confirmed"] == 11)
    assert sorted(stored_webhook_events(second.api_url)) == sorted([*expected, prefect_id(late)])
    assert len(rows(outbox)) == 11 and all(confirmed for _, confirmed in rows(outbox))
