"""Sync and async clients of the dbt Cloud Administrative API v2.

Both clients share one path for building requests (``_Call``), deciding on retries (``_RetryState``) and
parsing responses (``_Core``); they differ only in how they send and sleep. The client knows HTTP and
dbt Cloud, nothing of Prefect.

Retry rules:
- reads, cancels and job updates are retried on transport errors, 429 (honouring ``Retry-After``) and
  500/502/503/504, with exponential backoff and jitter, bounded in attempts and in total time;
- 400, 401 and 403 are never retried; 404 is retried only inside a short grace window on a run this client
  (or the caller) knows was just created;
- a request that starts a run (trigger, retry) is retried only when it certainly did not reach dbt Cloud
  (connection refused, pool timeout, 429); any other failure raises ``DbtCloudAmbiguousTriggerError``;
- a 2xx answer that is not the dbt Cloud envelope (an HTML page, other JSON) or that carries another run than
  the one asked for is retried a few times on reads (``RetryPolicy.max_unreadable_attempts``), then raises a
  ``DbtCloudResponseError``; on a trigger it is ambiguous, as above;
- what cannot heal (a request this machine cannot even encode) is never retried.

Deadlines: every attempt ends within ``Timeouts.total`` seconds, whatever the server does (slow answers,
answers trickled a byte at a time), and every call made inside ``request_deadline(at)`` ends by ``at``, retries
and their sleeps included (``DbtCloudDeadlineExceeded``).
"""

from __future__ import annotations

import asyncio
import contextvars
import email.utils
import json
import logging
import math
import random
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from importlib import metadata
from typing import Any, Generic, Literal, TypeVar, Unpack
from urllib.parse import quote

import httpcore
import httpx

from dbt_cloud_gate.dbtcloud_api.errors import (
    DbtCloudAmbiguousTriggerError,
    DbtCloudAPIError,
    DbtCloudAuthError,
    DbtCloudBadRequestError,
    DbtCloudConfigError,
    DbtCloudDeadlineExceeded,
    DbtCloudNotFoundError,
    DbtCloudRateLimitError,
    DbtCloudResponseError,
    DbtCloudRunMismatchError,
    DbtCloudServerError,
    DbtCloudTransportError,
    scrub,
)
from dbt_cloud_gate.dbtcloud_api.models import Job, Run, RunPage, RunStatus
from dbt_cloud_gate.dbtcloud_api.polling import durations_from_runs
from dbt_cloud_gate.dbtcloud_api.ratelimit import RateLimiter
from dbt_cloud_gate.dbtcloud_api.types import check_id
from dbt_cloud_gate.dbtcloud_api.urls import DEFAULT_ACCESS_URL, describe_character, normalize_access_url
from dbt_cloud_gate.dbtcloud_api.webhooks import (
    SubscriptionSettings,
    WebhookSubscription,
    check_subscription_id,
    subscription_body,
)

logger = logging.getLogger("dbt_cloud_gate.dbtcloud_api")

T = TypeVar("T")
R = TypeVar("R")

MAX_CAUSE_LENGTH = 255
MAX_PAGE_SIZE = 100

DEFAULT_RUN_INCLUDES: tuple[str, ...] = ("run_steps", "job", "trigger")
RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})
# Failures that prove the request never left this machine: safe to resend even when it starts a run.
_NOT_SENT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
# Failures of this machine to even write the request (an illegal header value, an unknown scheme): sending it
# again fails the same way, so they are never retried.
_CANNOT_HEAL_ERRORS = (httpx.LocalProtocolError, httpx.UnsupportedProtocol)

CallKind = Literal["read", "write", "start_run"]


def _package_version() -> str:
    try:
        return metadata.version("dbt-cloud-gate")
    except metadata.PackageNotFoundError:
        return "0.0.0"


USER_AGENT = f"dbt-cloud-gate/{_package_version()} (+python-httpx)"


def _check_seconds(owner: str, name: str, value: object, *, allow_zero: bool = False) -> None:
    """Refuse what is not a finite, positive (or zero) number of seconds: NaN and infinity included."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise DbtCloudConfigError(f"{owner}.{name} must be a finite number of seconds, got {value!r}.")
    if value < 0 or (value == 0 and not allow_zero):
        raise DbtCloudConfigError(
            f"{owner}.{name} must be {'0 or more' if allow_zero else 'positive'} seconds, got {value!r}."
        )


@dataclass(frozen=True)
class Timeouts:
    """Finite timeouts, in seconds, for every request.

    ``connect``, ``read``, ``write`` and ``pool`` bound each phase (``read`` each read from the socket);
    ``total`` bounds one attempt as a whole, however the server spreads its answer (a body trickled a byte
    at a time still ends there).
    """

    connect: float = 10.0
    read: float = 30.0
    write: float = 30.0
    pool: float = 30.0
    total: float = 120.0

    def __post_init__(self) -> None:
        for item in fields(self):
            _check_seconds("Timeouts", item.name, getattr(self, item.name))

    def to_httpx(self, left: float | None = None) -> httpx.Timeout:
        """The equivalent ``httpx.Timeout``, each phase capped to ``left`` seconds when given."""
        cap = math.inf if left is None else max(left, 0.001)
        return httpx.Timeout(
            connect=min(self.connect, cap),
            read=min(self.read, cap),
            write=min(self.write, cap),
            pool=min(self.pool, cap),
        )


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry what is safe to retry.

    ``max_unreadable_attempts`` bounds the attempts of a read answered 2xx with a body that is not dbt Cloud's
    (an HTML page from a proxy, other JSON, another run): it may be transient, but not for long.
    """

    max_attempts: int = 6
    max_elapsed_seconds: float = 120.0
    backoff_initial_seconds: float = 0.5
    backoff_max_seconds: float = 30.0
    max_retry_after_seconds: float = 120.0
    not_found_grace_seconds: float = 15.0
    max_unreadable_attempts: int = 3

    def __post_init__(self) -> None:
        for name in ("max_attempts", "max_unreadable_attempts"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise DbtCloudConfigError(f"RetryPolicy.{name} must be an integer of at least 1, got {value!r}.")
        _check_seconds("RetryPolicy", "max_elapsed_seconds", self.max_elapsed_seconds)
        for name in (
            "backoff_initial_seconds",
            "backoff_max_seconds",
            "max_retry_after_seconds",
            "not_found_grace_seconds",
        ):
            _check_seconds("RetryPolicy", name, getattr(self, name), allow_zero=True)

    def backoff(self, attempt: int, rng: random.Random) -> float:
        """Delay before retry number ``attempt`` (1-based): exponential, capped, with equal jitter."""
        ceiling = min(self.backoff_max_seconds, self.backoff_initial_seconds * (2 ** min(attempt - 1, 60)))
        return ceiling / 2 + rng.uniform(0, ceiling / 2)


NO_RETRY = RetryPolicy(max_attempts=1)

# The deadline (``time.monotonic()``) of the calls made in this context, and of the attempt being sent.
_CALL_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("dbtcloud_call_deadline", default=None)
_ATTEMPT_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar(
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
    current = _CALL_DEADLINE.get()
    effective = at if current is None else current if at is None else min(current, at)
    token = _CALL_DEADLINE.set(effective)
    try:
        yield effective
    finally:
        _CALL_DEADLINE.reset(token)


def _capped(timeout: float | None, error: type[Exception]) -> float | None:
    """A socket operation's timeout, capped to what is left of the current attempt; raises past it."""
    deadline = _ATTEMPT_DEADLINE.get()
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


def _deadline_transport(limits: httpx.Limits | None = None) -> httpx.HTTPTransport:
    """httpx's transport, with every socket operation bounded by the attempt's deadline."""
    transport = httpx.HTTPTransport(limits=limits or httpx.Limits())
    pool = getattr(transport, "_pool", None)
    backend = getattr(pool, "_network_backend", None)
    if isinstance(backend, httpcore.NetworkBackend):
        # httpx takes no network backend argument; without this hook each read is still capped to the time
        # left, but an answer trickled a byte at a time would not end at the deadline.
        pool._network_backend = _DeadlineBackend(backend)  # type: ignore[union-attr]
    return transport


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
class _Call(Generic[T]):
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
        return f"{self.method} {self.path}"


class _RetryState:
    """Decides, after each attempt of a call, whether to retry (and after how long) or to raise."""

    def __init__(
        self, call: _Call[Any], policy: RetryPolicy, rng: random.Random, token: str, timeouts: Timeouts
    ) -> None:
        self.call = call
        self.policy = policy
        self.rng = rng
        self.token = token
        self.timeouts = timeouts
        self.attempt = 0
        self.unreadable = 0
        self.started = time.monotonic()
        self.deadline = _CALL_DEADLINE.get()
        self.attempt_deadline: float | None = None

    def elapsed(self) -> float:
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
    content_type = response.headers.get("content-type", "unknown content type").split(";")[0]
    snippet = " ".join(_TAGS.sub(" ", response.text[:2000]).split())[:160]
    return f"no dbt Cloud error body ({content_type}, {len(response.content)} bytes){': ' + snippet if snippet else ''}"


def _body_summary(response: httpx.Response) -> str:
    content_type = response.headers.get("content-type", "no content type").split(";")[0]
    snippet = " ".join(_TAGS.sub(" ", response.text[:2000]).split())[:120]
    return f"{content_type}, {len(response.content)} bytes{': ' + snippet if snippet else ''}"


def _envelope_data(call_label: str, response: httpx.Response) -> tuple[Any, dict[str, Any]]:
    try:
        body = response.json()
    except (ValueError, UnicodeDecodeError):
        raise DbtCloudResponseError(
            f"{call_label} answered {response.status_code} with a body that is not JSON ({_body_summary(response)}); "
            "a proxy or captive portal may stand between this machine and dbt Cloud."
        ) from None
    if not isinstance(body, dict) or "data" not in body:
        raise DbtCloudResponseError(
            f"{call_label} answered {response.status_code} with JSON that is not the dbt Cloud envelope "
            f"(no 'data' object; {_body_summary(response)})."
        )
    raw_extra = body.get("extra")
    extra: dict[str, Any] = raw_extra if isinstance(raw_extra, dict) else {}
    return body["data"], extra


def _parser(label: str, model: Callable[[Any], T]) -> Callable[[httpx.Response], T]:
    """Read the envelope's ``data`` with ``model``; anything unreadable is a ``DbtCloudResponseError``."""

    def parse(response: httpx.Response) -> T:
        data, _ = _envelope_data(label, response)
        try:
            return model(data)
        except ValueError as exc:
            raise DbtCloudResponseError(f"{label} answered with data this client cannot read: {exc}") from exc

    return parse


def _bracketed(values: Sequence[int]) -> str:
    return "[" + ",".join(str(int(v)) for v in values) + "]"


def validate_api_token(token: object) -> str:
    """The API token, stripped of surrounding whitespace, if it can go into an HTTP header; else a clear error.

    A dbt Cloud token is printable ASCII without spaces. A line break, tab or non-ASCII character inside it
    (a copy-paste accident) would make every request fail with an error that quotes the header, token and
    all; it is refused here instead, with a message that never contains the token.
    """
    if not isinstance(token, str):
        raise DbtCloudConfigError(f"The dbt Cloud API token must be a string, got {type(token).__name__}.")
    text = token.strip()
    if not text:
        raise DbtCloudConfigError("The dbt Cloud API token is empty: set DBT_CLOUD_API_TOKEN or the block's api_token.")
    for position, char in enumerate(text):
        if not "!" <= char <= "~":
            # Name the kind of character, never the token around it.
            kind = describe_character(char) if ord(char) < 128 else "a non-ASCII character"
            raise DbtCloudConfigError(
                f"The dbt Cloud API token contains {kind} at position {position} of {len(text)}: a token is "
                "printable ASCII with no spaces or line breaks. Copy it again from dbt Cloud (Account settings, "
                "Service tokens)."
            )
    return text


def clip_cause(cause: str) -> str:
    """The cause as dbt Cloud will take it: stripped, non-empty, at most 255 characters (cut with a warning)."""
    text = (cause or "").strip()
    if not text:
        raise DbtCloudConfigError("A run's cause must not be empty: say why the job is being run.")
    if len(text) > MAX_CAUSE_LENGTH:
        logger.warning(
            "The run cause is %d characters; dbt Cloud takes at most %d, so it was cut.", len(text), MAX_CAUSE_LENGTH
        )
        text = text[:MAX_CAUSE_LENGTH]
    return text


TRIGGER_OVERRIDES = (
    "git_sha",
    "git_branch",
    "azure_pull_request_id",
    "github_pull_request_id",
    "gitlab_merge_request_id",
    "non_native_pull_request_id",
    "schema_override",
    "dbt_version_override",
    "threads_override",
    "target_name_override",
    "generate_docs_override",
    "timeout_seconds_override",
    "steps_override",
)

# Fields that the job update request schema requires; an older job object may lack some of them.
_JOB_UPDATE_DEFAULTS: dict[str, Any] = {
    "errors_on_lint_failure": False,
    "run_compare_changes": False,
    "run_generate_sources": False,
    "run_lint": False,
    "generate_docs": False,
    "lifecycle_webhooks": False,
    "state": 1,
    "execution": {"timeout_seconds": 0},
    "settings": {"threads": 4, "target_name": "default"},
}


def job_update_body(job: Job | dict[str, Any]) -> dict[str, Any]:
    """The whole-job body the update endpoint takes, from a job as read (nulls dropped, required fields filled)."""
    raw = job.model_dump(mode="json") if isinstance(job, Job) else json.loads(json.dumps(job, default=str))
    body = {key: value for key, value in raw.items() if value is not None}
    for key, default in _JOB_UPDATE_DEFAULTS.items():
        body.setdefault(key, default)
    triggers = dict(body.get("triggers") or {})
    triggers = {key: value for key, value in triggers.items() if value is not None}
    triggers.setdefault("github_webhook", False)
    triggers.setdefault("schedule", False)
    body["triggers"] = triggers
    if "description" in body and not body["description"]:
        del body["description"]
    return body


class _Core:
    """Configuration and the request builders shared by the sync and async clients."""

    def __init__(
        self,
        account_id: int,
        api_token: str,
        access_url: str = DEFAULT_ACCESS_URL,
        *,
        timeouts: Timeouts | None = None,
        retry: RetryPolicy | None = None,
        rate_limiter: RateLimiter | None = None,
        seed: int | None = None,
    ) -> None:
        self.account_id = check_id("account_id", account_id)
        self._token = validate_api_token(api_token)
        self.access_url = normalize_access_url(access_url)
        if timeouts is not None and not isinstance(timeouts, Timeouts):
            raise DbtCloudConfigError(f"timeouts must be a Timeouts, got {type(timeouts).__name__}.")
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise DbtCloudConfigError(f"retry must be a RetryPolicy, got {type(retry).__name__}.")
        self.timeouts = timeouts or Timeouts()
        self.retry = retry or RetryPolicy()
        self.rate_limiter = rate_limiter
        self._rng = random.Random(seed)
        self._fresh_runs: dict[int, float] = {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(account_id={self.account_id}, access_url={self.access_url!r})"

    # -- shared plumbing -------------------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        return {
            "Authorization": f"Token {self._token}",
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
        }

    def _path(self, suffix: str) -> str:
        return f"/api/v2/accounts/{self.account_id}/{suffix}"

    def _http_kwargs(self) -> dict[str, Any]:
        return {
            "base_url": self.access_url,
            "headers": self._headers(),
            "timeout": self.timeouts.to_httpx(),
            "follow_redirects": False,
        }

    def _request(self, call: _Call[Any], attempt_deadline: float | None = None) -> dict[str, Any]:
        left = None if attempt_deadline is None else attempt_deadline - time.monotonic()
        request: dict[str, Any] = {"method": call.method, "url": call.path, "timeout": self.timeouts.to_httpx(left)}
        if call.params:
            request["params"] = call.params
        if call.json_body is not None:
            request["json"] = call.json_body
        return request

    def _remember_run(self, run: Run) -> Run:
        self._fresh_runs[run.id] = time.monotonic()
        if len(self._fresh_runs) > 1000:
            self._fresh_runs.pop(next(iter(self._fresh_runs)))
        return run

    def _grace_for(self, run_id: int, explicit: float | None) -> float:
        if explicit is not None:
            return explicit
        created = self._fresh_runs.get(run_id)
        if created is None:
            return 0.0
        return max(0.0, self.retry.not_found_grace_seconds - (time.monotonic() - created))

    def _retry_state(self, call: _Call[Any]) -> _RetryState:
        return _RetryState(call, self.retry, self._rng, self._token, self.timeouts)

    def _rate_limit_wait(self, state: _RetryState) -> float:
        """Seconds the shared rate limiter holds this attempt back; refuses a wait past the caller's deadline."""
        if self.rate_limiter is None:
            return 0.0
        wait = self.rate_limiter.reserve()
        if wait > 0 and state.deadline is not None and time.monotonic() + wait >= state.deadline:
            state.on_deadline(f"the account's rate limit holds requests back for {wait:.1f} s", not_sent=True)
        return wait

    def _after_response(self, state: _RetryState, call: _Call[R], response: httpx.Response) -> tuple[R | None, float]:
        """``(answer, 0)`` for a readable success (answers are never ``None``), else ``(None, delay to retry)``."""
        if response.is_success:
            try:
                return call.parse(response), 0.0
            except DbtCloudResponseError as exc:
                return None, state.on_unreadable(exc)
        if response.status_code == 429 and self.rate_limiter is not None:
            self.rate_limiter.penalize(parse_retry_after(response.headers.get("Retry-After")) or 1.0)
        return None, state.on_response(response)

    def _check_run(
        self,
        label: str,
        run: Run,
        *,
        run_id: int | None = None,
        job_id: int | None = None,
        new_run: bool = False,
    ) -> Run:
        """``run`` if it is the run asked for: its ID, this account, and the job when known."""
        problems: list[str] = []
        if run_id is not None and run.id != run_id:
            problems.append(f"run {run.id}, not run {run_id}")
        if run.account_id != self.account_id:
            problems.append(f"a run of account {run.account_id}, not of account {self.account_id}")
        if job_id is not None and run.job_id is not None and run.job_id != job_id:
            problems.append(f"a run of job {run.job_id}, not of job {job_id}")
        if problems:
            what = "the run it started" if new_run else "the run"
            raise DbtCloudRunMismatchError(
                f"{label} answered with {' and '.join(problems)}: dbt Cloud, or a proxy in front of it, did not "
                f"return {what} asked for, so its status and timestamps cannot be used.",
                expected_run_id=run_id,
                received_run_id=run.id,
            )
        return run

    # -- request builders --------------------------------------------------------------------------------

    def _build(self, method: str, suffix: str, model: Callable[[Any], T], **options: Any) -> _Call[T]:
        path = self._path(suffix)
        return _Call(method, path, parse=_parser(f"{method} {path}", model), **options)

    def trigger_call(self, job_id: int, cause: str, overrides: dict[str, Any]) -> _Call[Run]:
        check_id("job_id", job_id)
        body: dict[str, Any] = {"cause": clip_cause(cause)}
        unknown = set(overrides) - set(TRIGGER_OVERRIDES)
        if unknown:
            raise DbtCloudConfigError(f"Unknown trigger override(s): {', '.join(sorted(unknown))}.")
        for name in TRIGGER_OVERRIDES:
            value = overrides.get(name)
            if value is None:
                continue
            if name == "steps_override":
                steps = [str(step).strip() for step in value]
                if not steps or not all(steps):
                    raise DbtCloudConfigError("steps_override must be a non-empty list of dbt commands.")
                value = steps
            body[name] = value
        label = f"POST {self._path(f'jobs/{job_id}/run/')}"
        return self._build(
            "POST",
            f"jobs/{job_id}/run/",
            lambda data: self._remember_run(
                self._check_run(label, Run.model_validate(data), job_id=job_id, new_run=True)
            ),
            json_body=body,
            kind="start_run",
            job_id=job_id,
            cause=body["cause"],
        )

    def get_run_call(
        self,
        run_id: int,
        include_related: Sequence[str],
        not_found_grace_seconds: float | None,
        job_id: int | None = None,
    ) -> _Call[Run]:
        check_id("run_id", run_id)
        if job_id is not None:
            check_id("job_id", job_id)
        if not_found_grace_seconds is not None:
            _check_seconds("get_run", "not_found_grace_seconds", not_found_grace_seconds, allow_zero=True)
        params = [("include_related", ",".join(include_related))] if include_related else []
        label = f"GET {self._path(f'runs/{run_id}/')}"
        return self._build(
            "GET",
            f"runs/{run_id}/",
            lambda data: self._check_run(label, Run.model_validate(data), run_id=run_id, job_id=job_id),
            params=params,
            not_found_grace=self._grace_for(run_id, not_found_grace_seconds),
        )

    def list_runs_call(
        self,
        job_definition_id: int | None,
        status_in: Sequence[int] | None,
        order_by: str | None,
        limit: int,
        offset: int,
        include_related: Sequence[str],
    ) -> _Call[RunPage]:
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE_SIZE:
            raise DbtCloudConfigError(f"limit must be an integer between 1 and {MAX_PAGE_SIZE}, got {limit!r}.")
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise DbtCloudConfigError(f"offset must be an integer, 0 or more, got {offset!r}.")
        params: list[tuple[str, str]] = []
        if job_definition_id is not None:
            params.append(("job_definition_id", str(check_id("job_definition_id", job_definition_id))))
        if status_in:
            params.append(("status__in", _bracketed(status_in)))
        if order_by:
            if order_by.lstrip("-") not in ("id", "created_at", "finished_at"):
                raise DbtCloudConfigError("order_by must be id, created_at or finished_at, with an optional '-'.")
            params.append(("order_by", order_by))
        if include_related:
            params.append(("include_related", ",".join(include_related)))
        params += [("limit", str(limit)), ("offset", str(offset))]
        path = self._path("runs/")
        label = f"GET {path}"

        def parse(response: httpx.Response) -> RunPage:
            data, extra = _envelope_data(label, response)
            if not isinstance(data, list):
                raise DbtCloudResponseError(f"{label} answered with data that is not a list.")
            raw_pagination = extra.get("pagination")
            pagination: dict[str, Any] = raw_pagination if isinstance(raw_pagination, dict) else {}
            try:
                runs = [Run.model_validate(item) for item in data]
                count = int(pagination.get("count", len(runs)))
                total_count = int(pagination.get("total_count", offset + len(runs)))
            except (TypeError, ValueError) as exc:
                raise DbtCloudResponseError(f"{label} answered with runs this client cannot read: {exc}") from exc
            for run in runs:
                self._check_run(label, run, job_id=job_definition_id)
            return RunPage(runs=runs, count=count, total_count=total_count, offset=offset, limit=limit)

        return _Call("GET", path, parse=parse, params=params)

    def cancel_call(self, run_id: int) -> _Call[Run]:
        check_id("run_id", run_id)
        label = f"POST {self._path(f'runs/{run_id}/cancel/')}"
        return self._build(
            "POST",
            f"runs/{run_id}/cancel/",
            lambda data: self._check_run(label, Run.model_validate(data), run_id=run_id),
            kind="write",
        )

    def retry_call(self, run_id: int) -> _Call[Run]:
        check_id("run_id", run_id)
        label = f"POST {self._path(f'runs/{run_id}/retry/')}"
        return self._build(
            "POST",
            f"runs/{run_id}/retry/",
            lambda data: self._remember_run(self._check_run(label, Run.model_validate(data), new_run=True)),
            kind="start_run",
        )

    def list_artifacts_call(self, run_id: int) -> _Call[list[str]]:
        # The spec gives this endpoint no ``step`` parameter (only the download has one).
        check_id("run_id", run_id)

        def to_list(data: Any) -> list[str]:
            if not isinstance(data, list):
                raise ValueError("artifact list is not a list")
            return [str(item) for item in data]

        return self._build("GET", f"runs/{run_id}/artifacts/", to_list)

    def get_artifact_call(self, run_id: int, path: str, step: int | None) -> _Call[bytes]:
        check_id("run_id", run_id)
        clean = path.strip().lstrip("/")
        if not clean or any(part in ("", ".", "..") for part in clean.split("/")):
            raise DbtCloudConfigError(f"Artifact path {path!r} is not a relative file path like run_results.json.")
        params = [("step", str(step))] if step is not None else []
        return _Call(
            "GET",
            self._path(f"runs/{run_id}/artifacts/{quote(clean, safe='/')}"),
            parse=lambda response: response.content,
            params=params,
        )

    def get_job_call(self, job_id: int) -> _Call[Job]:
        check_id("job_id", job_id)
        return self._build("GET", f"jobs/{job_id}/", Job.model_validate)

    def update_job_call(self, job: Job | dict[str, Any]) -> _Call[Job]:
        body = job_update_body(job)
        job_id = check_id("job id", body.get("id"))
        return self._build("POST", f"jobs/{job_id}/", Job.model_validate, json_body=body, kind="write")

    # -- API v3: webhook subscriptions (another base path than v2's) ----------------------------------------

    def _build_v3(self, method: str, suffix: str, model: Callable[[Any], T], **options: Any) -> _Call[T]:
        path = f"/api/v3/accounts/{self.account_id}/webhooks/{suffix}"
        return _Call(method, path, parse=_parser(f"{method} {path}", model), **options)

    def list_webhook_subscriptions_call(self, limit: int, offset: int) -> _Call[list[WebhookSubscription]]:
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE_SIZE:
            raise DbtCloudConfigError(f"limit must be an integer between 1 and {MAX_PAGE_SIZE}, got {limit!r}.")
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise DbtCloudConfigError(f"offset must be an integer, 0 or more, got {offset!r}.")

        def to_list(data: Any) -> list[WebhookSubscription]:
            if not isinstance(data, list):
                raise ValueError("the subscription list is not a list")
            return [WebhookSubscription.model_validate(item) for item in data]

        params = [("limit", str(limit)), ("offset", str(offset))]
        return self._build_v3("GET", "subscriptions", to_list, params=params)

    def create_webhook_subscription_call(
        self, name: str, client_url: str, settings: SubscriptionSettings
    ) -> _Call[WebhookSubscription]:
        # A create retried after a lost answer can make a second subscription; ensure-style callers list first.
        body = subscription_body(name=name, client_url=client_url, **settings)
        return self._build_v3("POST", "subscriptions", WebhookSubscription.model_validate, json_body=body, kind="write")

    def get_webhook_subscription_call(self, subscription_id: str) -> _Call[WebhookSubscription]:
        ident = check_subscription_id(subscription_id)
        return self._build_v3("GET", f"subscription/{ident}", WebhookSubscription.model_validate)

    def update_webhook_subscription_call(
        self, subscription_id: str, name: str, client_url: str, settings: SubscriptionSettings
    ) -> _Call[WebhookSubscription]:
        ident = check_subscription_id(subscription_id)
        body = subscription_body(name=name, client_url=client_url, **settings)
        return self._build_v3(
            "PUT", f"subscription/{ident}", WebhookSubscription.model_validate, json_body=body, kind="write"
        )

    def delete_webhook_subscription_call(self, subscription_id: str) -> _Call[str]:
        ident = check_subscription_id(subscription_id)
        return self._build_v3(
            "DELETE", f"subscription/{ident}", lambda data: str((data or {}).get("id") or ident), kind="write"
        )

    def test_webhook_subscription_call(self, subscription_id: str) -> _Call[dict[str, Any]]:
        ident = check_subscription_id(subscription_id)

        def to_dict(data: Any) -> dict[str, Any]:
            if not isinstance(data, dict):
                raise ValueError("the test answer is not an object")
            return data

        return self._build_v3("GET", f"subscription/{ident}/test", to_dict)


class DbtCloudClient(_Core):
    """Blocking client. Use as a context manager, or call :meth:`close`."""

    def __init__(self, *args: Any, http_client: httpx.Client | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._owns_http = http_client is None
        self._http = http_client or httpx.Client(**self._http_kwargs(), transport=_deadline_transport())
        self._sleep: Callable[[float], None] = time.sleep

    def __enter__(self) -> DbtCloudClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool (if this client made it)."""
        if self._owns_http:
            self._http.close()

    def _execute(self, call: _Call[T]) -> T:
        state = self._retry_state(call)
        while True:
            wait = self._rate_limit_wait(state)
            if wait > 0:
                self._sleep(wait)
            attempt_deadline = state.begin_attempt()
            token = _ATTEMPT_DEADLINE.set(attempt_deadline)
            try:
                response = self._http.request(**self._request(call, attempt_deadline))
            except httpx.TransportError as exc:
                delay = state.on_transport_error(exc)
            else:
                outcome = self._after_response(state, call, response)
                if outcome[0] is not None:
                    return outcome[0]
                delay = outcome[1]
            finally:
                _ATTEMPT_DEADLINE.reset(token)
            self._sleep(delay)

    def trigger_job_run(self, job_id: int, cause: str, **overrides: Any) -> Run:
        """Start a run of ``job_id``. Overrides are the trigger body's fields (``steps_override``, ``git_branch``...).

        Raises ``DbtCloudAmbiguousTriggerError`` when the request may have started a run without an answer.
        """
        return self._execute(self.trigger_call(job_id, cause, overrides))

    def get_run(
        self,
        run_id: int,
        include_related: Sequence[str] = DEFAULT_RUN_INCLUDES,
        *,
        not_found_grace_seconds: float | None = None,
        job_id: int | None = None,
    ) -> Run:
        """Read a run, with its steps, job and trigger by default.

        The answer must be that run, of this account (and of ``job_id`` when given): anything else raises
        ``DbtCloudRunMismatchError`` after a few attempts.
        """
        return self._execute(self.get_run_call(run_id, include_related, not_found_grace_seconds, job_id))

    def list_runs(
        self,
        *,
        job_definition_id: int | None = None,
        status_in: Sequence[int | RunStatus] | None = None,
        order_by: str | None = None,
        limit: int = MAX_PAGE_SIZE,
        offset: int = 0,
        include_related: Sequence[str] = (),
    ) -> RunPage:
        """One page of runs of the account, optionally of one job and in some statuses."""
        return self._execute(
            self.list_runs_call(job_definition_id, status_in, order_by, limit, offset, include_related)
        )

    def iter_runs(
        self,
        *,
        job_definition_id: int | None = None,
        status_in: Sequence[int | RunStatus] | None = None,
        order_by: str | None = None,
        page_size: int = MAX_PAGE_SIZE,
        include_related: Sequence[str] = (),
        max_runs: int | None = None,
    ) -> Iterator[Run]:
        """Every matching run, page by page, until ``extra.pagination.total_count`` (or ``max_runs``)."""
        offset = 0
        yielded = 0
        while True:
            page = self.list_runs(
                job_definition_id=job_definition_id,
                status_in=status_in,
                order_by=order_by,
                limit=page_size,
                offset=offset,
                include_related=include_related,
            )
            for run in page.runs:
                yield run
                yielded += 1
                if max_runs is not None and yielded >= max_runs:
                    return
            offset += len(page.runs)
            if not page.runs or offset >= page.total_count:
                return

    def find_runs_by_cause(self, job_id: int, marker: str, *, max_runs: int = 200) -> list[Run]:
        """Runs of ``job_id`` whose trigger cause contains ``marker``, newest first."""
        return [
            run
            for run in self.iter_runs(
                job_definition_id=job_id, order_by="-id", include_related=("trigger",), max_runs=max_runs
            )
            if run.cause_contains(marker)
        ]

    def job_history(self, job_id: int, limit: int = 20) -> list[float]:
        """Start-to-finish seconds of the job's last ``limit`` successful runs (one request)."""
        page = self.list_runs(job_definition_id=job_id, status_in=[RunStatus.SUCCESS], order_by="-id", limit=limit)
        return durations_from_runs(page.runs)

    def cancel_run(self, run_id: int) -> Run:
        """Ask dbt Cloud to cancel a run (safe to repeat)."""
        return self._execute(self.cancel_call(run_id))

    def retry_run(self, run_id: int) -> Run:
        """Retry a failed run from its point of failure; returns the new run."""
        return self._execute(self.retry_call(run_id))

    def list_run_artifacts(self, run_id: int) -> list[str]:
        """Paths of the artifacts a run saved."""
        return self._execute(self.list_artifacts_call(run_id))

    def get_run_artifact(self, run_id: int, path: str, step: int | None = None) -> bytes:
        """The raw bytes of one artifact (``run_results.json``, ``manifest.json``...)."""
        return self._execute(self.get_artifact_call(run_id, path, step))

    def get_job(self, job_id: int) -> Job:
        """Read a job, including ``triggers.schedule``."""
        return self._execute(self.get_job_call(job_id))

    def update_job(self, job: Job | dict[str, Any]) -> Job:
        """Write a whole job back (dbt Cloud updates a job with a POST of the whole object)."""
        return self._execute(self.update_job_call(job))

    # -- API v3: webhook subscriptions ----------------------------------------------------------------------

    def list_webhook_subscriptions(self, *, page_size: int = MAX_PAGE_SIZE) -> list[WebhookSubscription]:
        """Every webhook subscription of the account, page by page."""
        found: list[WebhookSubscription] = []
        while True:
            page = self._execute(self.list_webhook_subscriptions_call(page_size, len(found)))
            found += page
            if len(page) < page_size:
                return found

    def create_webhook_subscription(
        self, name: str, client_url: str, **settings: Unpack[SubscriptionSettings]
    ) -> WebhookSubscription:
        """Subscribe ``client_url`` to run events of ``job_ids`` (none: every job). The answer's ``hmac_secret``
        is shown this once: store it."""
        return self._execute(self.create_webhook_subscription_call(name, client_url, settings))

    def get_webhook_subscription(self, subscription_id: str) -> WebhookSubscription:
        """Read one subscription (``active``, ``deactivate_reason``, the last delivery's status)."""
        return self._execute(self.get_webhook_subscription_call(subscription_id))

    def update_webhook_subscription(
        self, subscription_id: str, name: str, client_url: str, **settings: Unpack[SubscriptionSettings]
    ) -> WebhookSubscription:
        """Replace a subscription's settings (a PUT of the whole subscription); ``active=True`` re-activates it."""
        return self._execute(self.update_webhook_subscription_call(subscription_id, name, client_url, settings))

    def delete_webhook_subscription(self, subscription_id: str) -> str:
        """Delete a subscription; returns its ID."""
        return self._execute(self.delete_webhook_subscription_call(subscription_id))

    def test_webhook_subscription(self, subscription_id: str) -> dict[str, Any]:
        """Have dbt Cloud send its fixed sample delivery to the subscription's URL; returns the answer's data."""
        return self._execute(self.test_webhook_subscription_call(subscription_id))


class AsyncDbtCloudClient(_Core):
    """Asyncio client with the same methods as :class:`DbtCloudClient`. Use ``async with`` or :meth:`aclose`.

    At most ``max_concurrency`` requests are in flight at once (the connection pool's size): many waits share
    one client without queueing inside the pool, whose bookkeeping grows with the queue.
    """

    def __init__(
        self,
        *args: Any,
        http_client: httpx.AsyncClient | None = None,
        max_concurrency: int = 10,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if max_concurrency < 1:
            raise DbtCloudConfigError("max_concurrency must be at least 1.")
        self._owns_http = http_client is None
        limits = httpx.Limits(max_connections=max_concurrency, max_keepalive_connections=max_concurrency)
        self._http = http_client or httpx.AsyncClient(**self._http_kwargs(), limits=limits)
        self._slots = asyncio.Semaphore(max_concurrency)

    async def __aenter__(self) -> AsyncDbtCloudClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool (if this client made it)."""
        if self._owns_http:
            await self._http.aclose()

    async def _execute(self, call: _Call[T]) -> T:
        state = self._retry_state(call)
        while True:
            wait = self._rate_limit_wait(state)
            if wait > 0:
                await asyncio.sleep(wait)
            attempt_deadline = state.begin_attempt()
            try:
                # The whole attempt, waiting for a slot and reading the body included, ends by its deadline.
                async with asyncio.timeout(max(0.0, attempt_deadline - time.monotonic())), self._slots:
                    response = await self._http.request(**self._request(call, attempt_deadline))
            except TimeoutError:
                delay = state.on_attempt_timeout()
            except httpx.TransportError as exc:
                delay = state.on_transport_error(exc)
            else:
                outcome = self._after_response(state, call, response)
                if outcome[0] is not None:
                    return outcome[0]
                delay = outcome[1]
            await asyncio.sleep(delay)

    async def trigger_job_run(self, job_id: int, cause: str, **overrides: Any) -> Run:
        """Start a run of ``job_id``; see :meth:`DbtCloudClient.trigger_job_run`."""
        return await self._execute(self.trigger_call(job_id, cause, overrides))

    async def get_run(
        self,
        run_id: int,
        include_related: Sequence[str] = DEFAULT_RUN_INCLUDES,
        *,
        not_found_grace_seconds: float | None = None,
        job_id: int | None = None,
    ) -> Run:
        """Read a run; see :meth:`DbtCloudClient.get_run`."""
        return await self._execute(self.get_run_call(run_id, include_related, not_found_grace_seconds, job_id))

    async def list_runs(
        self,
        *,
        job_definition_id: int | None = None,
        status_in: Sequence[int | RunStatus] | None = None,
        order_by: str | None = None,
        limit: int = MAX_PAGE_SIZE,
        offset: int = 0,
        include_related: Sequence[str] = (),
    ) -> RunPage:
        """One page of runs; see :meth:`DbtCloudClient.list_runs`."""
        return await self._execute(
            self.list_runs_call(job_definition_id, status_in, order_by, limit, offset, include_related)
        )

    async def iter_runs(
        self,
        *,
        job_definition_id: int | None = None,
        status_in: Sequence[int | RunStatus] | None = None,
        order_by: str | None = None,
        page_size: int = MAX_PAGE_SIZE,
        include_related: Sequence[str] = (),
        max_runs: int | None = None,
    ) -> AsyncIterator[Run]:
        """Every matching run, page by page; see :meth:`DbtCloudClient.iter_runs`."""
        offset = 0
        yielded = 0
        while True:
            page = await self.list_runs(
                job_definition_id=job_definition_id,
                status_in=status_in,
                order_by=order_by,
                limit=page_size,
                offset=offset,
                include_related=include_related,
            )
            for run in page.runs:
                yield run
                yielded += 1
                if max_runs is not None and yielded >= max_runs:
                    return
            offset += len(page.runs)
            if not page.runs or offset >= page.total_count:
                return

    async def find_runs_by_cause(self, job_id: int, marker: str, *, max_runs: int = 200) -> list[Run]:
        """Runs of ``job_id`` whose trigger cause contains ``marker``, newest first."""
        found: list[Run] = []
        async for run in self.iter_runs(
            job_definition_id=job_id, order_by="-id", include_related=("trigger",), max_runs=max_runs
        ):
            if run.cause_contains(marker):
                found.append(run)
        return found

    async def job_history(self, job_id: int, limit: int = 20) -> list[float]:
        """Start-to-finish seconds of the job's last ``limit`` successful runs (one request)."""
        page = await self.list_runs(
            job_definition_id=job_id, status_in=[RunStatus.SUCCESS], order_by="-id", limit=limit
        )
        return durations_from_runs(page.runs)

    async def cancel_run(self, run_id: int) -> Run:
        """Ask dbt Cloud to cancel a run (safe to repeat)."""
        return await self._execute(self.cancel_call(run_id))

    async def retry_run(self, run_id: int) -> Run:
        """Retry a failed run from its point of failure; returns the new run."""
        return await self._execute(self.retry_call(run_id))

    async def list_run_artifacts(self, run_id: int) -> list[str]:
        """Paths of the artifacts a run saved."""
        return await self._execute(self.list_artifacts_call(run_id))

    async def get_run_artifact(self, run_id: int, path: str, step: int | None = None) -> bytes:
        """The raw bytes of one artifact."""
        return await self._execute(self.get_artifact_call(run_id, path, step))

    async def get_job(self, job_id: int) -> Job:
        """Read a job, including ``triggers.schedule``."""
        return await self._execute(self.get_job_call(job_id))

    async def update_job(self, job: Job | dict[str, Any]) -> Job:
        """Write a whole job back."""
        return await self._execute(self.update_job_call(job))

    # -- API v3: webhook subscriptions ----------------------------------------------------------------------

    async def list_webhook_subscriptions(self, *, page_size: int = MAX_PAGE_SIZE) -> list[WebhookSubscription]:
        """Every webhook subscription of the account; see :meth:`DbtCloudClient.list_webhook_subscriptions`."""
        found: list[WebhookSubscription] = []
        while True:
            page = await self._execute(self.list_webhook_subscriptions_call(page_size, len(found)))
            found += page
            if len(page) < page_size:
                return found

    async def create_webhook_subscription(
        self, name: str, client_url: str, **settings: Unpack[SubscriptionSettings]
    ) -> WebhookSubscription:
        """Subscribe ``client_url``; see :meth:`DbtCloudClient.create_webhook_subscription`."""
        return await self._execute(self.create_webhook_subscription_call(name, client_url, settings))

    async def get_webhook_subscription(self, subscription_id: str) -> WebhookSubscription:
        """Read one subscription."""
        return await self._execute(self.get_webhook_subscription_call(subscription_id))

    async def update_webhook_subscription(
        self, subscription_id: str, name: str, client_url: str, **settings: Unpack[SubscriptionSettings]
    ) -> WebhookSubscription:
        """Replace a subscription's settings; see :meth:`DbtCloudClient.update_webhook_subscription`."""
        return await self._execute(self.update_webhook_subscription_call(subscription_id, name, client_url, settings))

    async def delete_webhook_subscription(self, subscription_id: str) -> str:
        """Delete a subscription; returns its ID."""
        return await self._execute(self.delete_webhook_subscription_call(subscription_id))

    async def test_webhook_subscription(self, subscription_id: str) -> dict[str, Any]:
        """Have dbt Cloud send its sample delivery; returns the answer's data."""
        return await self._execute(self.test_webhook_subscription_call(subscription_id))
