"""An outsider's attack on the webhook receiver, for its test and its benchmark (``bench/receiver_flood.py``).

From one address (as every client is behind the TLS proxy), in a process of its own: a flood of unsigned POSTs
from a few keep-alive connections, and slow connections held open all along (each reopened as soon as the
receiver closes it), of three kinds in turn: silent (connects, sends nothing), header trickle (a byte of the
request line every few seconds), body trickle (whole headers, then a byte of the body every few seconds).
Meanwhile, from the calling process, real deliveries signed with the receiver's secret, each on a new connection
(a proxy without upstream keep-alive), are timed from the request to the answer. :class:`EventsSink` stands in for
Prefect's ``POST /api/events``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import multiprocessing
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from multiprocessing.connection import Connection
from typing import Literal, NamedTuple
from urllib.parse import urlsplit

import httpx

from dbt_cloud_gate.dbtcloud_api.webhooks import delivery_payload, encode_body, new_event_id, sign

__all__ = ["EventsSink", "FloodPlan", "FloodReport", "SlowKind", "SlowResult", "run_flood", "slow_connection"]

SlowKind = Literal["silent", "header", "body"]
SLOW_KINDS: tuple[SlowKind, ...] = ("silent", "header", "body")
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length: *([0-9]+)", re.IGNORECASE)


@dataclass(frozen=True)
class FloodPlan:
    """What to send, for how long. ``url`` is the receiver's deliveries URL; ``secret`` signs the real ones."""

    url: str
    secret: str
    account_id: int = 7
    seconds: float = 10.0
    slow_connections: int = 500
    flooders: int = 8
    delivery_every_seconds: float = 0.25
    trickle_every_seconds: float = 2.0


@dataclass
class FloodReport:
    """What happened. Seconds are measured by the attacking process."""

    deliveries: list[tuple[int, float]] = field(default_factory=list)  # (status, seconds) of each real delivery
    flood: Counter[int] = field(default_factory=Counter)  # status of each unsigned request (0: connection failed)
    slow_lifetimes: dict[SlowKind, list[float]] = field(default_factory=dict)  # until the receiver closed each
    slow_answers: Counter[str] = field(default_factory=Counter)  # first line the receiver sent before closing
    slow_open_at_end: int = 0  # slow connections the receiver had not closed when the flood ended

    @property
    def slowest_delivery(self) -> float:
        """The longest a real delivery took (0 with none)."""
        return max((seconds for _, seconds in self.deliveries), default=0.0)


class SlowResult(NamedTuple):
    """How one slow connection ended."""

    lived: float  # seconds from connect to its end
    closed: bool  # by the receiver (else it was still open at the end of the flood)
    first_line: str  # of what the receiver sent before closing ("" if nothing)


async def slow_connection(host: str, port: int, kind: SlowKind, path: str, every: float, until: float) -> SlowResult:
    """Hold one slow connection of ``kind``, sending a byte every ``every`` seconds, until the receiver closes it
    or ``until`` (monotonic) passes."""
    opened = time.monotonic()
    reader, writer = await asyncio.open_connection(host, port)
    headers = f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
    if kind == "body":
        writer.write(f"{headers}Content-Length: 1000\r\n\r\n".encode())
    trickle = itertools.cycle(headers.encode() if kind == "header" else b"{" + b" " * 998 + b"}")
    answer = b""
    try:
        while time.monotonic() < until:
            if kind != "silent":
                writer.write(bytes([next(trickle)]))
            try:
                chunk = await asyncio.wait_for(
                    reader.read(4096), timeout=min(every, max(0.01, until - time.monotonic()))
                )
            except TimeoutError:
                continue
            answer += chunk
            if not chunk:
                break
        else:
            return SlowResult(time.monotonic() - opened, False, "")
    except OSError:  # reset by the receiver
        pass
    finally:
        writer.close()
    return SlowResult(time.monotonic() - opened, True, answer.split(b"\r\n", 1)[0].decode(errors="replace"))


def _signed_delivery(plan: FloodPlan, run_id: int) -> tuple[bytes, dict[str, str]]:
    body = encode_body(
        delivery_payload(
            "job.run.completed",
            account_id=plan.account_id,
            run_id=run_id,
            job_id=11,
            run_status_code=10,
            event_id=new_event_id(),
        )
    )
    return body, {"Content-Type": "application/json", "Authorization": sign(body, plan.secret)}


async def _attack(plan: FloodPlan, report: FloodReport, ready: Connection) -> None:
    """The slow connections and the unsigned flood, until ``plan.seconds`` have passed."""
    parts = urlsplit(plan.url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    until = time.monotonic() + plan.seconds

    async def hold(kind: SlowKind) -> None:
        while time.monotonic() < until:
            try:
                ended = await slow_connection(host, port, kind, parts.path, plan.trickle_every_seconds, until)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            if ended.closed:
                report.slow_lifetimes[kind].append(ended.lived)
                report.slow_answers[ended.first_line or "(closed without an answer)"] += 1
            else:
                report.slow_open_at_end += 1

    async def flood() -> None:  # raw HTTP/1.1 on one kept-alive connection: as fast as the receiver answers
        body = b'{"accountId": 7, "eventId": "wev_forged"}'
        request = (
            f"POST {parts.path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: {'0' * 64}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        while time.monotonic() < until:
            try:
                reader, writer = await asyncio.open_connection(host, port)
                while time.monotonic() < until:
                    writer.write(request)
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
                    report.flood[int(head.split(b" ", 2)[1])] += 1
                    length = _CONTENT_LENGTH.search(head)
                    await reader.readexactly(int(length.group(1)) if length else 0)
                    if b"connection: close" in head.lower():
                        break
                writer.close()
            except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError):
                report.flood[0] += 1

    tasks = [asyncio.create_task(hold(SLOW_KINDS[i % 3])) for i in range(plan.slow_connections)]
    tasks += [asyncio.create_task(flood()) for _ in range(plan.flooders)]
    await asyncio.sleep(min(1.0, plan.seconds / 4))  # the slow connections and the flood are in place
    ready.send(until)
    await asyncio.gather(*tasks)


def _attack_process(plan: FloodPlan, results: Connection) -> None:
    """The attacker's process: sends the moment its attack ends once it is under way, then its report."""
    report = FloodReport(slow_lifetimes={kind: [] for kind in SLOW_KINDS})
    asyncio.run(_attack(plan, report, results))
    results.send(report)


async def _deliver(plan: FloodPlan, report: FloodReport, until: float) -> None:
    """A real delivery every ``plan.delivery_every_seconds`` until ``until``, each timed, each on a new connection."""

    async def one(client: httpx.AsyncClient, run_id: int) -> None:
        body, headers = _signed_delivery(plan, run_id)
        started = time.monotonic()
        try:
            answer = await client.post(plan.url, content=body, headers=headers)
            report.deliveries.append((answer.status_code, time.monotonic() - started))
        except httpx.HTTPError:
            report.deliveries.append((0, time.monotonic() - started))

    limits = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=httpx.Timeout(10.0), limits=limits) as client:
        tasks = []
        for n in itertools.count(1):
            if time.monotonic() >= until:
                break
            tasks.append(asyncio.create_task(one(client, 900_000 + n)))
            await asyncio.sleep(plan.delivery_every_seconds)
        await asyncio.gather(*tasks)


def run_flood(plan: FloodPlan) -> FloodReport:
    """Run ``plan`` against a running receiver and report what each kind of client saw.

    The attack runs in a process of its own: the real deliveries are sent and timed here, on an event loop the
    attack's thousands of connections do not slow down (on one machine they still share its cores). That process
    is spawned, so a script calling this needs the ``if __name__ == "__main__":`` guard.
    """
    here, there = multiprocessing.get_context("spawn").Pipe()
    attacker = multiprocessing.get_context("spawn").Process(target=_attack_process, args=(plan, there), daemon=True)
    attacker.start()
    try:
        if not here.poll(60):
            raise RuntimeError("the attacking process did not start")
        until = here.recv()
        deliveries = FloodReport()
        asyncio.run(_deliver(plan, deliveries, until))
        if not here.poll(30 + plan.trickle_every_seconds):
            raise RuntimeError("the attacking process did not report")
        report: FloodReport = here.recv()
    finally:
        attacker.join(timeout=10)
        if attacker.is_alive():
            attacker.kill()
    report.deliveries = deliveries.deliveries
    return report


class EventsSink:
    """A stand-in for a Prefect server's events endpoint on loopback: ``POST /api/events`` answers 200 and counts
    the events; ``api_url`` is what ``PREFECT_API_URL`` is set to."""

    def __init__(self) -> None:
        self.events = 0
        sink = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path.rstrip("/") == "/api/events":
                    sink.events += len(json.loads(body or b"[]"))
                    self._answer(200, b"")
                else:
                    self._answer(404, b'{"detail": "Not found"}')

            def do_GET(self) -> None:
                self._answer(200 if self.path.startswith("/api/health") else 404, b"true")

            def _answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.api_url = f"http://127.0.0.1:{self.server.server_address[1]}/api"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> EventsSink:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
