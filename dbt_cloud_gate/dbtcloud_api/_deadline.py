"""Request deadlines: every call made inside ``request_deadline(at)`` ends by ``at``, retries and sleeps included.

Two context variables carry the deadlines (so threads and asyncio tasks each see their own): the caller's, for
every call of a block, and the attempt's, which the blocking client's transport applies to each socket read
and write (:func:`deadline_transport`), so that an answer trickled a byte at a time still ends on time.
"""

from __future__ import annotations

import contextvars
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpcore
import httpx

from dbt_cloud_gate.dbtcloud_api._tls import verification_context
from dbt_cloud_gate.dbtcloud_api.errors import DbtCloudConfigError

__all__ = ["ATTEMPT_DEADLINE", "CALL_DEADLINE", "check_deadline", "deadline_transport", "request_deadline"]

# The deadline (``time.monotonic()``) of the calls made in this context, and of the attempt being sent.
CALL_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("dbtcloud_call_deadline", default=None)
ATTEMPT_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "dbtcloud_attempt_deadline", default=None
)


def check_deadline(at: float | None) -> float | None:
    """``at`` if it is a usable ``time.monotonic()`` deadline (or ``None``); refuses NaN and infinity."""
    if at is None:
        return None
    if isinstance(at, bool) or not isinstance(at, int | float) or not math.isfinite(at):
        raise DbtCloudConfigError(f"A deadline must be a finite time.monotonic() value, got {at!r}.")
    return float(at)


@contextmanager
def request_deadline(at: float | None) -> Iterator[float | None]:
    """Every dbt Cloud call made inside this block ends by ``at`` (a ``time.monotonic()`` time).

    Each attempt's timeouts are capped to the time left, no retry sleeps past ``at``, and a call still
    unanswered at ``at`` raises ``DbtCloudDeadlineExceeded`` (``DbtCloudAmbiguousTriggerError`` for a request
    that may have started a run). Nested blocks keep the earlier deadline. Works for threads and asyncio tasks
    alike (a context variable); yields the deadline in force.
    """
    at = check_deadline(at)
    current = CALL_DEADLINE.get()
    effective = at if current is None else current if at is None else min(current, at)
    token = CALL_DEADLINE.set(effective)
    try:
        yield effective
    finally:
        CALL_DEADLINE.reset(token)


def _capped(timeout: float | None, error: type[Exception]) -> float | None:
    """A socket operation's timeout, capped to what is left of the current attempt; raises past it."""
    deadline = ATTEMPT_DEADLINE.get()
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise error("the request's deadline passed")
    return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    """A socket stream whose every read and write ends by the attempt's deadline (see ``_capped``).

    httpx's own timeouts bound each read; a server trickling its answer a byte at a time would pass them
    all. Capping each socket operation to the time left bounds the whole answer, headers included.
    """

    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _capped(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _capped(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        inner = self._inner.start_tls(ssl_context, server_hostname, _capped(timeout, httpcore.ConnectTimeout))
        return _DeadlineStream(inner)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    """The default network backend, its streams wrapped in :class:`_DeadlineStream`."""

    def __init__(self, inner: httpcore.NetworkBackend) -> None:
        self._inner = inner

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.NetworkStream:
        stream = self._inner.connect_tcp(
            host, port, _capped(timeout, httpcore.ConnectTimeout), local_address, socket_options
        )
        return _DeadlineStream(stream)

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Any = None
    ) -> httpcore.NetworkStream:
        stream = self._inner.connect_unix_socket(path, _capped(timeout, httpcore.ConnectTimeout), socket_options)
        return _DeadlineStream(stream)

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def deadline_transport(limits: httpx.Limits | None = None) -> httpx.HTTPTransport:
    """httpx's transport, with every socket operation bounded by the attempt's deadline (and the process's one
    verification context: :mod:`._tls`)."""
    transport = httpx.HTTPTransport(verify=verification_context(), limits=limits or httpx.Limits())
    pool = getattr(transport, "_pool", None)
    backend = getattr(pool, "_network_backend", None)
    if isinstance(backend, httpcore.NetworkBackend):
        # httpx takes no network backend argument; without this hook each read is still capped to the time
        # left, but an answer trickled a byte at a time would not end at the deadline.
        pool._network_backend = _DeadlineBackend(backend)  # type: ignore[union-attr]
    return transport
