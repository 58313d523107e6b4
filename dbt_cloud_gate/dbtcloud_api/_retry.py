"""Retry decisions, with no I/O: after each attempt of a call, retry (after how long) or raise which error.

:class:`RetryState` applies the rules of :mod:`.client`'s docstring to one call (:class:`Call`): what failed,
how safe the call is to resend (``Call.kind``), the policy's budget and the caller's deadline. It reads the
clock, never the network; the clients send, then hand it the outcome.
"""

from __future__ import annotations

import email.utils
import logging
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, Literal, TypeVar

import httpx

from dbt_cloud_gate.dbtcloud_api._config import RetryPolicy, Timeouts
from dbt_cloud_gate.dbtcloud_api._deadline import CALL_DEADLINE
from dbt_cloud_gate.dbtcloud_api.errors import (
    DbtCloudAmbiguousTriggerError,
    DbtCloudAPIError,
    DbtCloudAuthError,
    DbtCloudBadRequestError,
    DbtCloudDeadlineExceeded,
    DbtCloudNotFoundError,
    DbtCloudRateLimitError,
    DbtCloudResponseError,
    DbtCloudServerError,
    DbtCloudTransportError,
    scrub,
)

__all__ = ["RETRYABLE_STATUSES", "Call", "CallKind", "RetryState", "body_summary", "parse_retry_after"]

logger = logging.getLogger("dbt_cloud_gate.dbtcloud_api")

T = TypeVar("T")

RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})
# Failures that prove the request never left this machine: safe to resend even when it starts a run.
_NOT_SENT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
# Failures of this machine to even write the request (an illegal header value, an unknown scheme): sending it
# again fails the same way, so they are never retried.
_CANNOT_HEAL_ERRORS = (httpx.LocalProtocolError, httpx.UnsupportedProtocol)

CallKind = Literal["read", "write", "start_run"]


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP date; ``None`` if unusable."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = now or datetime.now(UTC)
    return max(0.0, (when - current).total_seconds())


@dataclass
class Call(Generic[T]):
    """One logical API call: what to send, how to read the answer, and how safe it is to resend."""

    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    params: list[tuple[str, str]] = field(default_factory=list)
    json_body: Any = None
    kind: CallKind = "read"
    not_found_grace: float = 0.0
    job_id: int | None = None
    cause: str | None = None

    @property
    def label(self) -> str:
        """``METHOD path``, as messages name the call."""
        return f"{self.method} {self.path}"


class RetryState:
    """Decides, after each attempt of a call, whether to retry (and after how long) or to raise."""

    def __init__(
        self, call: Call[Any], policy: RetryPolicy, rng: random.Random, token: str, timeouts: Timeouts
    ) -> None:
        self.call = call
        self.policy = policy
        self.rng = rng
        self.token = token
        self.timeouts = timeouts
        self.attempt = 0
        self.unreadable = 0
        self.started = time.monotonic()
        self.deadline = CALL_DEADLINE.get()
        self.attempt_deadline: float | None = None

    def elapsed(self) -> float:
        """Seconds since the call began."""
        return time.monotonic() - self.started

    def begin_attempt(self) -> float:
        """Count an attempt; returns its deadline (the call's deadline or ``Timeouts.total`` from now)."""
        self.attempt += 1
        now = time.monotonic()
        at = now + self.timeouts.total
        if self.deadline is not None:
            if self.deadline <= now:
                self.on_deadline("no time left to send it", not_sent=True)
            at = min(at, self.deadline)
        self.attempt_deadline = at
        return at

    def cut_by_deadline(self) -> bool:
        """Whether the attempt that just failed ran into the caller's deadline (not only ``Timeouts.total``)."""
        if self.deadline is None:
            return False
        return time.monotonic() >= self.deadline - 0.05

    def _error_kwargs(self, status: int | None = None, user_message: str | None = None) -> dict[str, Any]:
        return {
            "method": self.call.method,
            "path": self.call.path,
            "status_code": status,
            "user_message": user_message,
        }

    def _before_deadline(self, delay: float) -> bool:
        return self.deadline is None or time.monotonic() + delay < self.deadline

    def _within_budget(self, delay: float) -> bool:
        return (
            self.attempt < self.policy.max_attempts
            and self.elapsed() + delay <= self.policy.max_elapsed_seconds
            and self._before_deadline(delay)
        )

    def _exhausted(self) -> str:
        return f" (gave up after {self.attempt} attempt(s) over {self.elapsed():.1f} s)" if self.attempt > 1 else ""

    def _ambiguous(self, what: str, **kwargs: Any) -> DbtCloudAmbiguousTriggerError:
        call = self.call
        return DbtCloudAmbiguousTriggerError(
            scrub(
                f"{call.label} {what}; a run may or may not have been started. Look for a run carrying the same "
                "cause before triggering again.",
                self.token,
            ),
            job_id=call.job_id,
            cause=call.cause,
            **(kwargs or self._error_kwargs()),
        )

    def on_deadline(self, detail: str, *, not_sent: bool) -> None:
        """The caller's deadline passed: raise, as ambiguous if a run may have been started."""
        if self.call.kind == "start_run" and not not_sent:
            raise self._ambiguous(f"had no answer by the caller's deadline ({detail})") from None
        raise DbtCloudDeadlineExceeded(
            scrub(
                f"{self.call.label} did not complete by the caller's deadline ({detail}){self._exhausted()}.",
                self.token,
            ),
            **self._error_kwargs(),
        ) from None

    def on_transport_error(self, exc: httpx.TransportError) -> float:
        """Delay before the next attempt after a transport error, or raise the final error."""
        call = self.call
        kind = type(exc).__name__
        detail = scrub(str(exc) or kind, self.token)
        not_sent = isinstance(exc, _NOT_SENT_ERRORS)
        if isinstance(exc, _CANNOT_HEAL_ERRORS):
            raise DbtCloudTransportError(
                f"{call.label} could not be sent: {kind}: {detail}. This is not transient and was not retried; "
                "check the access URL and the API token (printable ASCII, no spaces or line breaks).",
                **self._error_kwargs(),
            ) from None
        if isinstance(exc, httpx.TimeoutException) and self.cut_by_deadline():
            self.on_deadline(f"{kind}", not_sent=not_sent)
        if call.kind == "start_run" and not not_sent:
            raise self._ambiguous(f"failed after the request may have reached dbt Cloud ({kind}: {detail})") from None
        delay = self.policy.backoff(self.attempt, self.rng)
        if self._within_budget(delay):
            logger.warning("%s: %s (%s); retrying in %.2f s", call.label, kind, detail, delay)
            return delay
        if not self._before_deadline(delay):
            self.on_deadline(f"{kind}: {detail}", not_sent=True)
        raise DbtCloudTransportError(
            f"{call.label} failed: {kind}: {detail}{self._exhausted()}. Check the access URL and the network.",
            **self._error_kwargs(),
        ) from None

    def on_attempt_timeout(self) -> float:
        """The attempt ran out of time as a whole (the asyncio twin's limit): a read timeout, or the deadline."""
        return self.on_transport_error(httpx.ReadTimeout("the attempt exceeded its total time limit"))

    def on_unreadable(self, exc: DbtCloudResponseError) -> float:
        """A 2xx answer that is not dbt Cloud's (or not the run asked for): retry a read a few times, then raise."""
        call = self.call
        self.unreadable += 1
        if call.kind == "start_run":
            raise self._ambiguous(f"got an answer this client cannot trust ({exc})") from None
        delay = self.policy.backoff(self.attempt, self.rng)
        if self.unreadable < self.policy.max_unreadable_attempts and self._within_budget(delay):
            logger.warning("%s: %s; retrying in %.2f s", call.label, scrub(str(exc), self.token), delay)
            return delay
        exc.args = (scrub(f"{exc}{self._exhausted()}", self.token),)
        exc.message = exc.args[0]
        exc.method, exc.path = call.method, call.path
        raise exc

    def on_response(self, response: httpx.Response) -> float:
        """Delay before the next attempt after an HTTP error answer, or raise the final error."""
        call = self.call
        status = response.status_code
        user_message, developer_message, field_errors = _error_details(response)
        text = _describe_error(response, user_message, developer_message, field_errors)
        message = scrub(f"{call.label} answered {status} {response.reason_phrase}: {text}", self.token)
        kwargs = self._error_kwargs(status, user_message)
        if status in (401, 403):
            raise DbtCloudAuthError(
                f"{message}. Check the API token and that it has access to this account "
                "(a service token needs the Job Admin or Job Runner permission to trigger jobs).",
                **kwargs,
            )
        if status == 400:
            raise DbtCloudBadRequestError(message, field_errors=field_errors, **kwargs)
        if status == 404:
            delay = self.policy.backoff(self.attempt, self.rng)
            # Bounded by the grace window (and the total budget), not by the attempt count.
            within_grace = self.elapsed() < call.not_found_grace
            if (
                within_grace
                and self.elapsed() + delay <= self.policy.max_elapsed_seconds
                and self._before_deadline(delay)
            ):
                logger.info("%s: 404 for a run created moments ago; retrying in %.2f s", call.label, delay)
                return delay
            raise DbtCloudNotFoundError(f"{message}. Check the account ID and the job or run ID.", **kwargs)
        if status == 429:
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            delay = self.policy.backoff(self.attempt, self.rng)
            if retry_after is not None:
                delay = max(delay, min(retry_after, self.policy.max_retry_after_seconds))
            if self._within_budget(delay):
                logger.warning("%s: rate limited (429); retrying in %.2f s", call.label, delay)
                return delay
            raise DbtCloudRateLimitError(
                f"{message}{self._exhausted()}. The account's API rate limit is exhausted; lower the polling "
                "rate or the number of concurrent waits.",
                retry_after=retry_after,
                **kwargs,
            )
        if status >= 500:
            if call.kind == "start_run":
                raise self._ambiguous(f"answered {status} {response.reason_phrase}: {text}", **kwargs)
            delay = self.policy.backoff(self.attempt, self.rng)
            if status in RETRYABLE_STATUSES and self._within_budget(delay):
                logger.warning("%s: server error %s; retrying in %.2f s", call.label, status, delay)
                return delay
            raise DbtCloudServerError(f"{message}{self._exhausted()}", **kwargs)
        raise DbtCloudAPIError(message, **kwargs)


def _error_details(response: httpx.Response) -> tuple[str | None, str | None, dict[str, list[str]]]:
    """The service's ``user_message``, ``developer_message`` and field errors, if the body is its envelope."""
    try:
        body = response.json()
    except (ValueError, UnicodeDecodeError):
        return None, None, {}
    if not isinstance(body, dict):
        return None, None, {}
    raw_status = body.get("status")
    status: dict[str, Any] = raw_status if isinstance(raw_status, dict) else {}
    field_errors: dict[str, list[str]] = {}
    data = body.get("data")
    if isinstance(data, dict):
        for name, problems in data.items():
            if isinstance(problems, list) and all(isinstance(p, str) for p in problems):
                field_errors[str(name)] = list(problems)
            elif isinstance(problems, str):
                field_errors[str(name)] = [problems]
    return status.get("user_message") or None, status.get("developer_message") or None, field_errors


_TAGS = re.compile(r"<[^>]+>")


def body_summary(response: httpx.Response, *, missing: str = "no content type", width: int = 120) -> str:
    """What a body that is not dbt Cloud's holds: its content type, size and the start of its text, tags cut."""
    content_type = response.headers.get("content-type", missing).split(";")[0]
    snippet = " ".join(_TAGS.sub(" ", response.text[:2000]).split())[:width]
    return f"{content_type}, {len(response.content)} bytes{': ' + snippet if snippet else ''}"


def _describe_error(
    response: httpx.Response,
    user_message: str | None,
    developer_message: str | None,
    field_errors: dict[str, list[str]],
) -> str:
    parts: list[str] = []
    if user_message:
        parts.append(user_message)
    if developer_message and developer_message != user_message:
        parts.append(f"({developer_message})")
    for name, problems in field_errors.items():
        parts.append(f"{name}: {' '.join(problems)}")
    if parts:
        # Without its own final full stop: the caller adds a sentence after it (no "token.. Check").
        return " ".join(parts).rstrip(". ")
    return f"no dbt Cloud error body ({body_summary(response, missing='unknown content type', width=160)})"
