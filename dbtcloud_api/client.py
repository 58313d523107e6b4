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
  (connection refused, pool timeout, 429); any other failure raises ``DbtCloudAmbiguousTriggerError``.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import random
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from typing import Any, Generic, Literal, TypeVar
from urllib.parse import quote

import httpx

from dbtcloud_api.errors import (
    DbtCloudAmbiguousTriggerError,
    DbtCloudAPIError,
    DbtCloudAuthError,
    DbtCloudBadRequestError,
    DbtCloudConfigError,
    DbtCloudNotFoundError,
    DbtCloudRateLimitError,
    DbtCloudResponseError,
    DbtCloudServerError,
    DbtCloudTransportError,
    scrub,
)
from dbtcloud_api.models import Job, Run, RunPage, RunStatus
from dbtcloud_api.polling import durations_from_runs
from dbtcloud_api.ratelimit import RateLimiter
from dbtcloud_api.urls import DEFAULT_ACCESS_URL, normalize_access_url

logger = logging.getLogger("dbtcloud_api")

T = TypeVar("T")

MAX_CAUSE_LENGTH = 255
MAX_PAGE_SIZE = 100
DEFAULT_RUN_INCLUDES: tuple[str, ...] = ("run_steps", "job", "trigger")
RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})
# Failures that prove the request never left this machine: safe to resend even when it starts a run.
_NOT_SENT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)

CallKind = Literal["read", "write", "start_run"]


def _package_version() -> str:
    try:
        return metadata.version("dbt-cloud-gate")
    except metadata.PackageNotFoundError:
        return "0.0.0"


USER_AGENT = f"dbt-cloud-gate/{_package_version()} (+python-httpx)"


@dataclass(frozen=True)
class Timeouts:
    """Finite timeouts, in seconds, for every request."""

    connect: float = 10.0
    read: float = 30.0
    write: float = 30.0
    pool: float = 30.0

    def to_httpx(self) -> httpx.Timeout:
        """The equivalent ``httpx.Timeout``."""
        return httpx.Timeout(connect=self.connect, read=self.read, write=self.write, pool=self.pool)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry what is safe to retry."""

    max_attempts: int = 6
    max_elapsed_seconds: float = 120.0
    backoff_initial_seconds: float = 0.5
    backoff_max_seconds: float = 30.0
    max_retry_after_seconds: float = 120.0
    not_found_grace_seconds: float = 15.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise DbtCloudConfigError("RetryPolicy.max_attempts must be at least 1.")
        if self.max_elapsed_seconds <= 0 or self.backoff_initial_seconds < 0:
            raise DbtCloudConfigError("RetryPolicy times must be positive.")

    def backoff(self, attempt: int, rng: random.Random) -> float:
        """Delay before retry number ``attempt`` (1-based): exponential, capped, with equal jitter."""
        ceiling = min(self.backoff_max_seconds, self.backoff_initial_seconds * (2 ** (attempt - 1)))
        return ceiling / 2 + rng.uniform(0, ceiling / 2)


NO_RETRY = RetryPolicy(max_attempts=1)


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

    def __init__(self, call: _Call[Any], policy: RetryPolicy, rng: random.Random, token: str) -> None:
        self.call = call
        self.policy = policy
        self.rng = rng
        self.token = token
        self.attempt = 0
        self.started = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def _error_kwargs(self, status: int | None = None, user_message: str | None = None) -> dict[str, Any]:
        return {
            "method": self.call.method,
            "path": self.call.path,
            "status_code": status,
            "user_message": user_message,
        }

    def _within_budget(self, delay: float) -> bool:
        return self.attempt < self.policy.max_attempts and self.elapsed() + delay <= self.policy.max_elapsed_seconds

    def _exhausted(self) -> str:
        return f" (gave up after {self.attempt} attempt(s) over {self.elapsed():.1f} s)" if self.attempt > 1 else ""

    def on_transport_error(self, exc: httpx.TransportError) -> float:
        """Delay before the next attempt after a transport error, or raise the final error."""
        call = self.call
        kind = type(exc).__name__
        detail = scrub(str(exc) or kind, self.token)
        not_sent = isinstance(exc, _NOT_SENT_ERRORS)
        if call.kind == "start_run" and not not_sent:
            raise DbtCloudAmbiguousTriggerError(
                f"{call.label} failed after the request may have reached dbt Cloud ({kind}: {detail}); "
                "a run may or may not have been started. Look for a run carrying the same cause before "
                "triggering again.",
                job_id=call.job_id,
                cause=call.cause,
                **self._error_kwargs(),
            ) from None
        delay = self.policy.backoff(self.attempt, self.rng)
        if self._within_budget(delay):
            logger.warning("%s: %s (%s); retrying in %.2f s", call.label, kind, detail, delay)
            return delay
        raise DbtCloudTransportError(
            f"{call.label} failed: {kind}: {detail}{self._exhausted()}. Check the access URL and the network.",
            **self._error_kwargs(),
        ) from None

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
            if within_grace and self.elapsed() + delay <= self.policy.max_elapsed_seconds:
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
                raise DbtCloudAmbiguousTriggerError(
                    f"{message}; a run may or may not have been started. Look for a run carrying the same "
                    "cause before triggering again.",
                    job_id=call.job_id,
                    cause=call.cause,
                    **kwargs,
                )
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
        return " ".join(parts)
    content_type = response.headers.get("content-type", "unknown content type").split(";")[0]
    snippet = " ".join(_TAGS.sub(" ", response.text[:2000]).split())[:160]
    return f"no dbt Cloud error body ({content_type}, {len(response.content)} bytes){': ' + snippet if snippet else ''}"


def _envelope_data(call_label: str, response: httpx.Response) -> tuple[Any, dict[str, Any]]:
    try:
        body = response.json()
    except (ValueError, UnicodeDecodeError) as exc:
        raise DbtCloudResponseError(
            f"{call_label} answered {response.status_code} with a body that is not JSON."
        ) from exc
    if not isinstance(body, dict) or "data" not in body:
        raise DbtCloudResponseError(f"{call_label} answered without the dbt Cloud envelope (no 'data').")
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


def _check_id(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise DbtCloudConfigError(f"{name} must be a positive integer, got {value!r}.")
    return value


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
        self.account_id = _check_id("account_id", account_id)
        if not api_token or not api_token.strip():
            raise DbtCloudConfigError(
                "The dbt Cloud API token is empty: set DBT_CLOUD_API_TOKEN or the block's api_token."
            )
        self._token = api_token.strip()
        self.access_url = normalize_access_url(access_url)
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

    def _request(self, call: _Call[Any]) -> dict[str, Any]:
        request: dict[str, Any] = {"method": call.method, "url": call.path}
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
        return _RetryState(call, self.retry, self._rng, self._token)

    # -- request builders --------------------------------------------------------------------------------

    def _build(self, method: str, suffix: str, model: Callable[[Any], T], **options: Any) -> _Call[T]:
        path = self._path(suffix)
        return _Call(method, path, parse=_parser(f"{method} {path}", model), **options)

    def trigger_call(self, job_id: int, cause: str, overrides: dict[str, Any]) -> _Call[Run]:
        _check_id("job_id", job_id)
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
        return self._build(
            "POST",
            f"jobs/{job_id}/run/",
            lambda data: self._remember_run(Run.model_validate(data)),
            json_body=body,
            kind="start_run",
            job_id=job_id,
            cause=body["cause"],
        )

    def get_run_call(
        self, run_id: int, include_related: Sequence[str], not_found_grace_seconds: float | None
    ) -> _Call[Run]:
        _check_id("run_id", run_id)
        params = [("include_related", ",".join(include_related))] if include_related else []
        return self._build(
            "GET",
            f"runs/{run_id}/",
            Run.model_validate,
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
        if not 1 <= limit <= MAX_PAGE_SIZE:
            raise DbtCloudConfigError(f"limit must be between 1 and {MAX_PAGE_SIZE}, got {limit}.")
        if offset < 0:
            raise DbtCloudConfigError(f"offset must be 0 or more, got {offset}.")
        params: list[tuple[str, str]] = []
        if job_definition_id is not None:
            params.append(("job_definition_id", str(_check_id("job_definition_id", job_definition_id))))
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
            pagination = extra.get("pagination") or {}
            try:
                runs = [Run.model_validate(item) for item in data]
            except ValueError as exc:
                raise DbtCloudResponseError(f"{label} answered with runs this client cannot read: {exc}") from exc
            return RunPage(
                runs=runs,
                count=int(pagination.get("count", len(runs))),
                total_count=int(pagination.get("total_count", offset + len(runs))),
                offset=offset,
                limit=limit,
            )

        return _Call("GET", path, parse=parse, params=params)

    def cancel_call(self, run_id: int) -> _Call[Run]:
        _check_id("run_id", run_id)
        return self._build("POST", f"runs/{run_id}/cancel/", Run.model_validate, kind="write")

    def retry_call(self, run_id: int) -> _Call[Run]:
        _check_id("run_id", run_id)
        return self._build(
            "POST",
            f"runs/{run_id}/retry/",
            lambda data: self._remember_run(Run.model_validate(data)),
            kind="start_run",
        )

    def list_artifacts_call(self, run_id: int) -> _Call[list[str]]:
        # The spec gives this endpoint no ``step`` parameter (only the download has one).
        _check_id("run_id", run_id)

        def to_list(data: Any) -> list[str]:
            if not isinstance(data, list):
                raise ValueError("artifact list is not a list")
            return [str(item) for item in data]

        return self._build("GET", f"runs/{run_id}/artifacts/", to_list)

    def get_artifact_call(self, run_id: int, path: str, step: int | None) -> _Call[bytes]:
        _check_id("run_id", run_id)
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
        _check_id("job_id", job_id)
        return self._build("GET", f"jobs/{job_id}/", Job.model_validate)

    def update_job_call(self, job: Job | dict[str, Any]) -> _Call[Job]:
        body = job_update_body(job)
        job_id = _check_id("job id", body.get("id"))  # type: ignore[arg-type]
        return self._build("POST", f"jobs/{job_id}/", Job.model_validate, json_body=body, kind="write")


class DbtCloudClient(_Core):
    """Blocking client. Use as a context manager, or call :meth:`close`."""

    def __init__(self, *args: Any, http_client: httpx.Client | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._owns_http = http_client is None
        self._http = http_client or httpx.Client(**self._http_kwargs())
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
            state.attempt += 1
            if self.rate_limiter is not None:
                self.rate_limiter.acquire_sync()
            try:
                response = self._http.request(**self._request(call))
            except httpx.TransportError as exc:
                delay = state.on_transport_error(exc)
            else:
                if response.is_success:
                    return call.parse(response)
                if response.status_code == 429 and self.rate_limiter is not None:
                    self.rate_limiter.penalize(parse_retry_after(response.headers.get("Retry-After")) or 1.0)
                delay = state.on_response(response)
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
    ) -> Run:
        """Read a run, with its steps, job and trigger by default."""
        return self._execute(self.get_run_call(run_id, include_related, not_found_grace_seconds))

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
            if run.trigger is not None and marker in (run.trigger.cause or "")
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
            state.attempt += 1
            if self.rate_limiter is not None:
                await self.rate_limiter.acquire()
            try:
                async with self._slots:
                    response = await self._http.request(**self._request(call))
            except httpx.TransportError as exc:
                delay = state.on_transport_error(exc)
            else:
                if response.is_success:
                    return call.parse(response)
                if response.status_code == 429 and self.rate_limiter is not None:
                    self.rate_limiter.penalize(parse_retry_after(response.headers.get("Retry-After")) or 1.0)
                delay = state.on_response(response)
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
    ) -> Run:
        """Read a run, with its steps, job and trigger by default."""
        return await self._execute(self.get_run_call(run_id, include_related, not_found_grace_seconds))

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
            if run.trigger is not None and marker in (run.trigger.cause or ""):
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
