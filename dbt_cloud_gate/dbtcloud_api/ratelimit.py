"""A per-account request rate limiter shared by every client (sync and async) in a process.

A GCRA token bucket: requests are spaced evenly, with bursts of up to ``burst``, and no rolling minute holds more
than ``per_minute`` of them. A 429 from dbt Cloud calls :meth:`RateLimiter.penalize`, which holds back every request on the
account, not only the one that got it. Thread-safe; waits happen outside the lock.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

DEFAULT_PER_MINUTE = 4500.0  # dbt Cloud documents 5,000 a minute per account; keep a 10% margin.
RATE_ENV = "DBT_CLOUD_RATE_LIMIT_PER_MINUTE"


class RateLimiter:
    """Spaces requests to at most ``per_minute`` a minute (bursts of ``burst``)."""

    def __init__(
        self, per_minute: float = DEFAULT_PER_MINUTE, burst: int = 20, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if per_minute <= 0 or burst < 1:
            raise ValueError("per_minute must be positive and burst at least 1")
        self.per_minute = per_minute
        # A burst is paid for by a slightly longer spacing, so that no rolling minute holds more than
        # ``per_minute`` requests (bursts + the steady rate), with 1% to spare for timing jitter.
        burst = max(1, min(burst, int(per_minute // 10)))
        self.burst = burst
        self.interval = 60.0 / (per_minute - burst + 1) * 1.01 if per_minute > burst else 60.0 / per_minute
        self.tolerance = self.interval * (burst - 1)
        self.clock = clock
        self._lock = threading.Lock()
        self._tat = 0.0  # theoretical arrival time of the next request
        self._hold_until = 0.0
        self.waited_seconds = 0.0
        self.penalties = 0

    def reserve(self) -> float:
        """Take the next slot; returns how long to wait before sending."""
        with self._lock:
            now = self.clock()
            tat = max(self._tat, now)
            wait = max(0.0, tat - self.tolerance - now, self._hold_until - now)
            self._tat = max(tat, now + wait) + self.interval
            self.waited_seconds += wait
            return wait

    def penalize(self, seconds: float) -> None:
        """Hold every request on this account back for ``seconds`` (after a 429)."""
        with self._lock:
            self._hold_until = max(self._hold_until, self.clock() + max(seconds, 0.0))
            self.penalties += 1


_SHARED: dict[tuple[str, int], RateLimiter] = {}
_SHARED_LOCK = threading.Lock()


def shared_limiter(access_url: str, account_id: int, per_minute: float | None = None) -> RateLimiter:
    """The process-wide limiter of one account (created on first use; ``DBT_CLOUD_RATE_LIMIT_PER_MINUTE``)."""
    key = (access_url, account_id)
    with _SHARED_LOCK:
        limiter = _SHARED.get(key)
        if limiter is None:
            rate = per_minute or float(os.environ.get(RATE_ENV) or DEFAULT_PER_MINUTE)
            limiter = _SHARED[key] = RateLimiter(rate)
        return limiter
