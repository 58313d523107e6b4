"""The receiver's front door: read deadlines and connection limits that no outsider can turn against dbt Cloud.

Behind the TLS proxy docs/webhooks.md asks for, every client (dbt Cloud and anyone else) reaches the receiver from the
proxy's one address, so no limit here may refuse a connection because some address or the server has too many:
a flood would fill it, and dbt Cloud's deliveries would be refused with the flood.

* **Read deadlines.** A request's headers must arrive within ``header_timeout_seconds`` (10 s) of the
  connection's opening or of the previous response's end, and its body within ``body_timeout_seconds`` (10 s)
  of its headers; past either, the client gets a 408 and the connection is closed. uvicorn has neither: its one
  timer, keep-alive, is cancelled by any byte received, so a byte every 2 s held a connection for ever; and
  hypercorn's ``read_timeout`` is per read, which the same trickle resets. Here the deadline follows h11's own
  state machine after every read (``their_state`` is ``IDLE`` while headers come, ``SEND_BODY`` while the body
  comes), in a subclass of uvicorn's h11 protocol, so no second HTTP parser is needed.
* **No cap that refuses.** uvicorn's ``limit_concurrency`` answers 503 once that many connections are open,
  idle ones included: 220 connections that never finished their headers made every real delivery a 503. It is
  off. Instead, past ``max_connections`` open connections, each new one closes the connection that has waited
  longest for its request, taken from the address that holds the most such connections (behind the proxy: the
  oldest of all). A real delivery sends its request at once and is answered within milliseconds, so it is never
  the one waiting longest; a slow client only loses its own connection sooner.
* Rate limits count failed deliveries only, after the signature check (:mod:`dbt_cloud_gate.receiver`).
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from collections import Counter, OrderedDict
from typing import Any, ClassVar, Literal

import h11
import uvicorn
from pydantic import BaseModel, ConfigDict, Field
from uvicorn.protocols.http.h11_impl import H11Protocol

from dbt_cloud_gate.dbtcloud_api.types import Seconds

__all__ = ["ConnectionGuard", "ConnectionLimits", "GuardedH11Protocol", "guarded_config", "serve"]

logger = logging.getLogger("dbt_cloud_gate.receiver")

Phase = Literal["header", "body"]
# Sent before closing a connection whose request came too slowly (nginx and Apache answer the same).
_TIMEOUT_ANSWER = b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
# Files the process needs besides its connections: the listening socket, the client to Prefect, logs, databases.
_SPARE_FILES = 256
_REPORT_EVERY_SECONDS = 60.0


class ConnectionLimits(BaseModel):
    """How long a client may take to send a request, and how many connections stay open before the one waiting
    longest for its request is closed."""

    model_config = ConfigDict(frozen=True)

    header_timeout_seconds: Seconds = Field(default=10.0, description="From connect (or last response) to headers.")
    body_timeout_seconds: Seconds = Field(default=10.0, description="From the end of the headers to the body's.")
    max_connections: int = Field(default=1000, ge=10, le=1_000_000, description="Open connections before evicting.")


class ConnectionGuard:
    """One server's connections that wait for a request (per client address, oldest first), and what was closed.

    Every method runs on the server's event loop.
    """

    def __init__(self, limits: ConnectionLimits) -> None:
        self.limits = limits
        self.open = 0
        self.closed: Counter[str] = Counter()  # header_timeout, body_timeout, evicted
        self._waiting: dict[str, OrderedDict[GuardedH11Protocol, None]] = {}
        self._reported: Counter[str] = Counter()
        self._report_at = time.monotonic() + _REPORT_EVERY_SECONDS

    def opened(self) -> None:
        """A connection opened: past the limit, close the one waiting longest, of the address holding most."""
        self.open += 1
        if self.open > self.limits.max_connections and self._waiting:
            address = max(self._waiting, key=lambda key: len(self._waiting[key]))
            victim = next(iter(self._waiting[address]))
            self.ready(victim)
            victim.expire("evicted")

    def lost(self, connection: GuardedH11Protocol) -> None:
        """A connection closed."""
        self.open -= 1
        self.ready(connection)

    def waiting(self, connection: GuardedH11Protocol) -> None:
        """``connection`` waits for (the rest of) a request; it keeps its place if it already waited."""
        self._waiting.setdefault(connection.address, OrderedDict()).setdefault(connection, None)

    def ready(self, connection: GuardedH11Protocol) -> None:
        """``connection`` has its whole request (or is gone)."""
        queue = self._waiting.get(connection.address)
        if queue is not None:
            queue.pop(connection, None)
            if not queue:
                del self._waiting[connection.address]

    def note(self, reason: str) -> None:
        """Count a closed connection; one log line a minute at most (a log line each would be a flood of its own)."""
        self.closed[reason] += 1
        self._reported[reason] += 1
        if time.monotonic() >= self._report_at:
            summary = ", ".join(f"{count} {kind.replace('_', ' ')}" for kind, count in sorted(self._reported.items()))
            logger.warning("closed slow or idle connections in the last minute: %s", summary)
            self._reported.clear()
            self._report_at = time.monotonic() + _REPORT_EVERY_SECONDS


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with the header and body deadlines and the eviction of :class:`ConnectionGuard`.

    A subclass per server binds ``guard`` (:func:`guarded_config`).
    """

    guard: ClassVar[ConnectionGuard]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._phase: Phase | None = None
        self._deadline: asyncio.TimerHandle | None = None

    @property
    def address(self) -> str:
        """The peer's address (behind a proxy: the proxy's)."""
        return self.client[0] if self.client else "unknown"

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.guard.opened()
        self._follow()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._follow()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._follow()

    def connection_lost(self, exc: Exception | None) -> None:
        self._enter(None)
        self.guard.lost(self)
        super().connection_lost(exc)

    def _follow(self) -> None:
        """Start, keep or stop the deadline as h11 moves from waiting for headers, to the body, to done."""
        phase: Phase | None = None
        if not self.transport.is_closing():
            state = self.conn.their_state
            phase = "header" if state is h11.IDLE else "body" if state is h11.SEND_BODY else None
        if phase != self._phase:
            self._enter(phase)

    def _enter(self, phase: Phase | None) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._phase = phase
        if phase is None:
            self.guard.ready(self)
            return
        limits = self.guard.limits
        seconds = limits.header_timeout_seconds if phase == "header" else limits.body_timeout_seconds
        self._deadline = self.loop.call_later(seconds, self.expire, f"{phase}_timeout")
        self.guard.waiting(self)

    def expire(self, reason: str) -> None:
        """Close the connection (its request came too slowly, or it was evicted); a 408 if nothing was answered."""
        self._deadline = None
        self.guard.note(reason)
        if self.transport.is_closing():
            return
        if self.cycle is None or not self.cycle.response_started or self.cycle.response_complete:
            self.transport.write(_TIMEOUT_ANSWER)
        self.transport.close()


def guarded_config(app: Any, *, host: str, port: int, limits: ConnectionLimits, log_level: str) -> uvicorn.Config:
    """uvicorn's settings for the receiver: the guarded h11 protocol, no ``limit_concurrency``, short keep-alive."""
    protocol = type("GuardedH11", (GuardedH11Protocol,), {"guard": ConnectionGuard(limits)})
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=protocol,
        ws="none",
        log_level=log_level,
        access_log=False,  # the receiver logs each delivery by its IDs
        timeout_keep_alive=5,
        limit_concurrency=None,  # a cap any flood fills: see the module's docstring
        h11_max_incomplete_event_size=16 * 1024,  # the request line and headers (a delivery's are under 1 KiB)
    )


def fit_open_files(limits: ConnectionLimits) -> ConnectionLimits:
    """``limits``, with ``max_connections`` lowered to what the open-file limit allows once that is raised as far
    as the hard limit lets it: past the limit, accept() would fail and every new connection, dbt's too, wait."""
    need = limits.max_connections + _SPARE_FILES
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY or soft >= need:
        return limits
    fitted = max(10, soft - _SPARE_FILES)
    logger.warning("the open-file limit is %d: at most %d connections stay open (asked %d)", soft, fitted, need)
    return limits.model_copy(update={"max_connections": fitted})


def serve(app: Any, *, host: str, port: int, limits: ConnectionLimits, log_level: str) -> None:
    """Serve ``app`` until interrupted, guarded by ``limits``."""
    uvicorn.Server(guarded_config(app, host=host, port=port, limits=fit_open_files(limits), log_level=log_level)).run()
