"""A receiver no outsider can silence: failures alone are rate limited (a valid delivery never is), slow clients
meet header and body deadlines, idle connections cannot hold the slots deliveries need. The rate limit through
httpx.ASGITransport; the deadlines and the eviction on a loopback port (uvicorn in a thread, short deadlines);
the issue's measurement against the real receiver process started by its command line."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from prefect.events import Event

from dbt_cloud_gate.dbtcloud_api.webhooks import delivery_payload, encode_body, new_event_id, sign
from dbt_cloud_gate.receiver import DEFAULT_PATH, ReceiverConfig, create_app
from dbt_cloud_gate.receiver_guard import ConnectionLimits
from dbt_cloud_gate.stack.flood import EventsSink, FloodPlan, SlowKind, run_flood, slow_connection
from dbt_cloud_gate.stack.services import WebhookReceiver
from tests.conftest import Served

SECRET = "s3cret-of-account-7-0123456789"
TIMEOUT_LINE = "HTTP/1.1 408 Request Timeout"


def signed() -> tuple[bytes, dict[str, str]]:
    body = encode_body(
        delivery_payload(
            "job.run.completed", account_id=7, run_id=501, job_id=11, run_status_code=10, event_id=new_event_id()
        )
    )
    return body, {"Authorization": sign(body, SECRET), "Content-Type": "application/json"}


# -- failures alone are rate limited (no port) ----------------------------------------------------------------


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def receiver_app() -> AsyncIterator[tuple[object, list[Event]]]:
    events: list[Event] = []

    async def emit(event: Event) -> None:
        events.append(event)

    config = ReceiverConfig(secrets={"account:7": SECRET}, rate_per_second=0.001, burst=5)
    yield create_app(config, emit), events


def client_at(app: object, address: str) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(address, 40000))  # type: ignore[arg-type]
    return httpx.AsyncClient(transport=transport, base_url="http://receiver")


@pytest.mark.anyio
async def test_failures_are_rate_limited_per_address_and_a_valid_delivery_never_is(
    receiver_app: tuple[object, list[Event]],
) -> None:
    app, events = receiver_app
    async with client_at(app, "10.0.0.1") as proxy, client_at(app, "10.0.0.2") as other:
        unsigned = [
            await proxy.post(DEFAULT_PATH, content=b"{}", headers={"Authorization": "0" * 64}) for _ in range(6)
        ]
        bad = b"[" * 50_000
        malformed = await proxy.post(DEFAULT_PATH, content=bad, headers={"Authorization": sign(bad, SECRET)})
        too_big = await proxy.post(DEFAULT_PATH, content=b" " * 70_000)
        assert [a.status_code for a in unsigned] == [401] * 5 + [429]  # the flood used up the address's tokens
        assert malformed.status_code == too_big.status_code == 429  # a bad body and an oversized one are failures
        assert int(unsigned[-1].headers["Retry-After"]) >= 1
        # dbt Cloud behind the same proxy, same address, bucket empty: every real delivery still goes through.
        for _ in range(20):
            body, headers = signed()
            answer = await proxy.post(DEFAULT_PATH, content=body, headers=headers)
            assert (answer.status_code, answer.json()["status"]) == (200, "accepted")
        assert (await other.post(DEFAULT_PATH, content=b"{}")).status_code == 401  # another address: its own bucket
    assert len(events) == 20


# -- deadlines and eviction on a loopback port -----------------------------------------------------------------


class GuardedServer(Served):
    """The receiver, keeping what it emits, served with ``limits``."""

    def __init__(self, limits: ConnectionLimits) -> None:
        self.events: list[Event] = []
        super().__init__(create_app(ReceiverConfig(secrets={"account:7": SECRET}), self._emit), limits)

    async def _emit(self, event: Event) -> None:
        self.events.append(event)


@pytest.fixture(scope="module")
def quick() -> Iterator[GuardedServer]:
    """Deadlines of 0.6 s."""
    limits = ConnectionLimits(header_timeout_seconds=0.6, body_timeout_seconds=0.6)
    with GuardedServer(limits) as server:
        yield server


@pytest.mark.parametrize("kind", ["silent", "header", "body"])
def test_a_slow_client_gets_408_and_is_closed_at_its_deadline(quick: GuardedServer, kind: SlowKind) -> None:
    ended = asyncio.run(slow_connection("127.0.0.1", quick.port, kind, DEFAULT_PATH, 0.1, time.monotonic() + 5))
    assert ended.closed and ended.first_line == TIMEOUT_LINE
    assert 0.55 < ended.lived < 1.5, ended  # a byte every 0.1 s does not reset the deadline


def test_the_header_deadline_starts_again_after_each_response_on_a_kept_alive_connection(quick: GuardedServer) -> None:
    with socket.create_connection(("127.0.0.1", quick.port), timeout=5) as sock:
        body, headers = signed()
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        request = f"POST {DEFAULT_PATH} HTTP/1.1\r\nHost: r\r\n{head}Content-Length: {len(body)}\r\n\r\n"
        sock.sendall(request.encode() + body)
        first = b""
        while not first.endswith(b"}"):  # the whole answer: headers and its JSON body
            first += sock.recv(4096)
        assert first.startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        answer = b""
        for char in b"POST / HTTP/1.1\r\nHost: r\r\n":  # the next request, a byte every 0.1 s
            try:
                sock.sendall(bytes([char]))
                sock.settimeout(0.1)
                answer += sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                break
            if answer.endswith(b"\r\n\r\n") or not answer:
                break
        lived = time.monotonic() - started
    assert answer.startswith(TIMEOUT_LINE.encode()) and 0.55 < lived < 1.5, (answer, lived)


def test_past_max_connections_the_address_holding_most_loses_its_oldest_waiting_one() -> None:
    def connect(source: str) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=5, source_address=(source, 0))
        time.sleep(0.05)  # in this order at the receiver
        return sock

    def closed(sock: socket.socket) -> bool:
        sock.settimeout(0.3)
        try:
            return sock.recv(4096).startswith(TIMEOUT_LINE.encode())
        except TimeoutError:
            return False

    limits = ConnectionLimits(header_timeout_seconds=30, body_timeout_seconds=30, max_connections=10)
    with GuardedServer(limits) as server:
        elsewhere = [connect("127.0.0.3") for _ in range(2)]  # the oldest of all, from another address
        proxy = [connect("127.0.0.2") for _ in range(9)]  # the 11th connection: one must go
        assert closed(proxy[0]) and not any(closed(sock) for sock in proxy[1:] + elsewhere)
        # The proxy's address is full of idle connections; a real delivery from it still goes through.
        body, headers = signed()
        with httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2")) as http:
            answer = http.post(server.url, content=body, headers=headers, timeout=5)
        assert answer.status_code == 200 and len(server.events) == 1
        assert closed(proxy[1])  # its connection evicted the next oldest idle one of the proxy's
        for sock in proxy + elsewhere:
            sock.close()


# -- the measurement: the real receiver process ---------------------------------------------------------


@pytest.fixture(scope="module")
def receiver_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[WebhookReceiver, EventsSink]]:
    """``python -m dbt_cloud_gate.receiver serve`` with 2 s deadlines, posting to a stand-in events endpoint."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API", "DBT_CLOUD_WEBHOOK"))}
    with EventsSink() as sink:
        env |= {"PREFECT_API_URL": sink.api_url, "DBT_CLOUD_WEBHOOK_SECRETS": json.dumps({"account:7": SECRET})}
        log = tmp_path_factory.mktemp("receiver") / "receiver.log"
        with WebhookReceiver(env, log, None, extra_args=["--header-timeout", "2", "--body-timeout", "2"]) as receiver:
            yield receiver, sink


def test_real_deliveries_are_accepted_within_2_s_through_a_flood_and_500_slow_connections(
    receiver_process: tuple[WebhookReceiver, EventsSink],
) -> None:
    receiver, sink = receiver_process
    report = run_flood(FloodPlan(receiver.url, SECRET, seconds=8, slow_connections=500))
    statuses = [status for status, _ in report.deliveries]
    assert len(statuses) >= 20 and set(statuses) == {200}, statuses
    assert report.slowest_delivery < 2.0, sorted(seconds for _, seconds in report.deliveries)[-5:]
    # The flood was refused (401, then 429 once its address used up its failures), and it was a flood.
    assert set(report.flood) <= {401, 429} and report.flood[429] > 0 and sum(report.flood.values()) > 200
    # Every slow connection was closed with a 408 at its 2 s deadline (silent, header and body trickles alike).
    for kind, lifetimes in report.slow_lifetimes.items():
        assert len(lifetimes) >= 500 // 3 and max(lifetimes) < 4.0, (kind, max(lifetimes, default=0))
    assert set(report.slow_answers) == {TIMEOUT_LINE}
    deadline = time.monotonic() + 10
    while sink.events < len(statuses):  # each accepted delivery became one event at "Prefect"
        assert time.monotonic() < deadline, (sink.events, len(statuses))
        time.sleep(0.1)
