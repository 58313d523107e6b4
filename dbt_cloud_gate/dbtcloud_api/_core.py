"""The I/O-free half of both clients: configuration, request building, answer checking, retries and paging.

:class:`Core` builds each API call (:class:`~._retry.Call`: what to send, how to read the answer, how safe it
is to resend) and runs it as :meth:`Core.exchange`, a generator of steps (``Send`` a request, ``Sleep``) that is
sent each answer or thrown each transport failure (see :mod:`._exchange`); :class:`Pager` decides paging.
:mod:`.client`'s sync and async twins drive them: they only send and sleep.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypedDict, TypeVar
from urllib.parse import quote

import httpx

from dbt_cloud_gate.dbtcloud_api._config import (
    USER_AGENT,
    RetryPolicy,
    Timeouts,
    check_page,
    config_seconds,
    validate_api_token,
)
from dbt_cloud_gate.dbtcloud_api._exchange import Exchange, Send, Sleep
from dbt_cloud_gate.dbtcloud_api._payloads import (
    bracketed,
    envelope_data,
    job_update_body,
    parser,
    trigger_body,
)
from dbt_cloud_gate.dbtcloud_api._retry import Call, RetryState, parse_retry_after
from dbt_cloud_gate.dbtcloud_api.errors import DbtCloudConfigError, DbtCloudResponseError, DbtCloudRunMismatchError
from dbt_cloud_gate.dbtcloud_api.models import Job, JobPage, Run, RunPage, RunStatus, durations_from_runs
from dbt_cloud_gate.dbtcloud_api.ratelimit import RateLimiter
from dbt_cloud_gate.dbtcloud_api.types import check_id
from dbt_cloud_gate.dbtcloud_api.urls import DEFAULT_ACCESS_URL, normalize_access_url
from dbt_cloud_gate.dbtcloud_api.webhooks import (
    SubscriptionSettings,
    WebhookSubscription,
    check_subscription_id,
    subscription_body,
)

__all__ = ["SEND_FAILURES", "Core", "Pager", "Send", "Sleep", "Step"]

T = TypeVar("T")
R = TypeVar("R")

# What a send may raise that the retry rules judge: httpx's transport errors, and the asyncio twin's limit on
# a whole attempt (TimeoutError, read as a read timeout, or the caller's deadline).
SEND_FAILURES = (httpx.TransportError, TimeoutError)


Step = Send | Sleep


@dataclass(frozen=True)
class ExpectedRun:
    """What a run in an answer must be besides a run of this account: the run ``run_id`` and of job ``job_id``, when
    known; ``new_run``: the run the call started (remembered for the 404 grace of the reads that follow)."""

    run_id: int | None = None
    job_id: int | None = None
    new_run: bool = False

    def check(self, label: str, run: Run, account_id: int) -> Run:
        """``run`` if it is the run asked for; a ``DbtCloudRunMismatchError`` naming every difference otherwise."""
        problems: list[str] = []
        if self.run_id is not None and run.id != self.run_id:
            problems.append(f"run {run.id}, not run {self.run_id}")
        if run.account_id != account_id:
            problems.append(f"a run of account {run.account_id}, not of account {account_id}")
        if self.job_id is not None and run.job_id is not None and run.job_id != self.job_id:
            problems.append(f"a run of job {run.job_id}, not of job {self.job_id}")
        if problems:
            what = "the run it started" if self.new_run else "the run"
            raise DbtCloudRunMismatchError(
                f"{label} answered with {' and '.join(problems)}: dbt Cloud, or a proxy in front of it, did not "
                f"return {what} asked for, so its status and timestamps cannot be used.",
                expected_run_id=self.run_id,
                received_run_id=run.id,
            )
        return run


class RunQuery(TypedDict, total=False):
    """Which runs of the account a listing asks for (``list_runs``, ``iter_runs``); each one left out: all."""

    job_definition_id: int | None
    status_in: Sequence[int | RunStatus] | None
    order_by: str | None  # id, created_at or finished_at, with an optional "-"
    include_related: Sequence[str]


class Pager(Generic[R]):
    """Paging decisions for one listing: the next page's offset, what of each page to hand out, when to stop.

    With ``total`` known (v2's ``extra.pagination.total_count``), paging stops at it or at an empty page; without
    (v3), at a page shorter than ``page_size``. ``max_items`` stops early, after at least one item per page read.
    """

    def __init__(self, page_size: int, max_items: int | None = None) -> None:
        self.page_size = page_size
        self.max_items = max_items
        self.offset = 0
        self.taken = 0
        self.done = False

    def take(self, items: Sequence[R], total: int | None = None) -> list[R]:
        """Record a page; returns the items of it to hand out, and sets ``done`` when no page follows."""
        kept = list(items)
        if self.max_items is not None:
            kept = kept[: max(1, self.max_items - self.taken)]
        self.taken += len(kept)
        self.offset += len(items)
        last = (not items or self.offset >= total) if total is not None else len(items) < self.page_size
        self.done = last or (self.max_items is not None and self.taken >= self.max_items)
        return kept


def listed_page(
    label: str, response: httpx.Response, offset: int, model: Callable[[Any], R], what: str
) -> tuple[list[R], int, int]:
    """The items of one page of a v2 listing (``data``, each read by ``model``), its ``count`` and ``total_count``
    (``extra.pagination``; when missing, this page's)."""
    data, extra = envelope_data(label, response)
    if not isinstance(data, list):
        raise DbtCloudResponseError(f"{label} answered with data that is not a list.")
    raw_pagination = extra.get("pagination")
    pagination: dict[str, Any] = raw_pagination if isinstance(raw_pagination, dict) else {}
    try:
        items = [model(item) for item in data]
        count = int(pagination.get("count", len(items)))
        total_count = int(pagination.get("total_count", offset + len(items)))
    except (TypeError, ValueError) as exc:
        raise DbtCloudResponseError(f"{label} answered with {what} this client cannot read: {exc}") from exc
    return items, count, total_count


class Core:
    """Configuration, request builders and the retry loop (as a generator) shared by the sync and async clients."""

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

    def _request(self, call: Call[Any], attempt_deadline: float | None = None) -> dict[str, Any]:
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

    def exchange(self, call: Call[T]) -> Exchange[Step, httpx.Response, T]:
        """``call`` in progress: the steps to take (sleep, send) until its answer, or its final error."""
        return Exchange(self._steps(call))

    def _steps(self, call: Call[T]) -> Generator[Step, httpx.Response | None, T]:
        """The retry loop: yields each sleep and each attempt; is sent each response, or thrown each failure."""
        state = RetryState(call, self.retry, self._rng, self._token, self.timeouts)
        while True:
            hold = self._rate_limit_wait(state)
            if hold > 0:
                yield Sleep(hold)
            deadline = state.begin_attempt()
            try:
                response = yield Send(self._request(call, deadline), deadline)
            except TimeoutError:
                delay = state.on_attempt_timeout()
            except httpx.TransportError as exc:
                delay = state.on_transport_error(exc)
            else:
                assert response is not None  # a Send is answered with a response, or thrown its failure
                if response.is_success:
                    try:
                        return call.parse(response)
                    except DbtCloudResponseError as exc:
                        delay = state.on_unreadable(exc)
                else:
                    delay = self._on_error_answer(state, response)
            yield Sleep(delay)

    def _rate_limit_wait(self, state: RetryState) -> float:
        """Seconds the shared rate limiter holds this attempt back; refuses a wait past the caller's deadline."""
        if self.rate_limiter is None:
            return 0.0
        wait = self.rate_limiter.reserve()
        if wait > 0 and state.deadline is not None and time.monotonic() + wait >= state.deadline:
            state.on_deadline(f"the account's rate limit holds requests back for {wait:.1f} s", not_sent=True)
        return wait

    def _on_error_answer(self, state: RetryState, response: httpx.Response) -> float:
        """Delay before retrying an HTTP error answer (a 429 also slows the shared limiter), or raise."""
        if response.status_code == 429 and self.rate_limiter is not None:
            self.rate_limiter.penalize(parse_retry_after(response.headers.get("Retry-After")) or 1.0)
        return state.on_response(response)

    # -- request builders --------------------------------------------------------------------------------

    def _build(self, method: str, suffix: str, model: Callable[[Any], T], **options: Any) -> Call[T]:
        path = self._path(suffix)
        return Call(method, path, parse=parser(f"{method} {path}", model), **options)

    def _run_call(self, method: str, suffix: str, expected: ExpectedRun, **options: Any) -> Call[Run]:
        """A call answered with one run, checked to be the ``expected`` one (a new run is remembered)."""
        label = f"{method} {self._path(suffix)}"

        def read(data: Any) -> Run:
            run = expected.check(label, Run.model_validate(data), self.account_id)
            return self._remember_run(run) if expected.new_run else run

        return self._build(method, suffix, read, **options)

    def trigger_call(self, job_id: int, cause: str, overrides: dict[str, Any]) -> Call[Run]:
        """Start a run of ``job_id``: certain to be sent once only when it cannot have reached dbt Cloud."""
        check_id("job_id", job_id)
        body = trigger_body(cause, overrides)
        return self._run_call(
            "POST",
            f"jobs/{job_id}/run/",
            ExpectedRun(job_id=job_id, new_run=True),
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
    ) -> Call[Run]:
        """The call behind :meth:`DbtCloudClient.get_run` (checked here, before any request)."""
        check_id("run_id", run_id)
        if job_id is not None:
            check_id("job_id", job_id)
        if not_found_grace_seconds is not None:
            config_seconds("get_run.not_found_grace_seconds", not_found_grace_seconds, allow_zero=True)
        params = [("include_related", ",".join(include_related))] if include_related else []
        return self._run_call(
            "GET",
            f"runs/{run_id}/",
            ExpectedRun(run_id=run_id, job_id=job_id),
            params=params,
            not_found_grace=self._grace_for(run_id, not_found_grace_seconds),
        )

    def list_runs_call(self, query: RunQuery, limit: int, offset: int) -> Call[RunPage]:
        """The call behind :meth:`DbtCloudClient.list_runs` (checked here, before any request)."""
        check_page(limit, offset)
        job_definition_id, status_in = query.get("job_definition_id"), query.get("status_in")
        order_by, include_related = query.get("order_by"), query.get("include_related")
        params: list[tuple[str, str]] = []
        if job_definition_id is not None:
            params.append(("job_definition_id", str(check_id("job_definition_id", job_definition_id))))
        if status_in:
            params.append(("status__in", bracketed(status_in)))
        if order_by:
            if order_by.lstrip("-") not in ("id", "created_at", "finished_at"):
                raise DbtCloudConfigError("order_by must be id, created_at or finished_at, with an optional '-'.")
            params.append(("order_by", order_by))
        if include_related:
            params.append(("include_related", ",".join(include_related)))
        params += [("limit", str(limit)), ("offset", str(offset))]
        path = self._path("runs/")
        label = f"GET {path}"
        expected = ExpectedRun(job_id=job_definition_id)

        def parse(response: httpx.Response) -> RunPage:
            runs, count, total_count = listed_page(label, response, offset, Run.model_validate, "runs")
            for run in runs:
                expected.check(label, run, self.account_id)
            return RunPage(runs=runs, count=count, total_count=total_count, offset=offset, limit=limit)

        return Call("GET", path, parse=parse, params=params)

    def cancel_call(self, run_id: int) -> Call[Run]:
        """The call behind :meth:`DbtCloudClient.cancel_run` (checked here, before any request)."""
        check_id("run_id", run_id)
        return self._run_call("POST", f"runs/{run_id}/cancel/", ExpectedRun(run_id=run_id), kind="write")

    def retry_call(self, run_id: int) -> Call[Run]:
        """The call behind :meth:`DbtCloudClient.retry_run` (checked here, before any request)."""
        check_id("run_id", run_id)
        return self._run_call("POST", f"runs/{run_id}/retry/", ExpectedRun(new_run=True), kind="start_run")

    def list_artifacts_call(self, run_id: int) -> Call[list[str]]:
        # The spec gives this endpoint no ``step`` parameter (only the download has one).
        """The call behind :meth:`DbtCloudClient.list_run_artifacts` (checked here, before any request)."""
        check_id("run_id", run_id)

        def to_list(data: Any) -> list[str]:
            if not isinstance(data, list):
                raise ValueError("artifact list is not a list")
            return [str(item) for item in data]

        return self._build("GET", f"runs/{run_id}/artifacts/", to_list)

    def get_artifact_call(self, run_id: int, path: str, step: int | None) -> Call[bytes]:
        """The call behind :meth:`DbtCloudClient.get_run_artifact` (checked here, before any request)."""
        check_id("run_id", run_id)
        clean = path.strip().lstrip("/")
        if not clean or any(part in ("", ".", "..") for part in clean.split("/")):
            raise DbtCloudConfigError(f"Artifact path {path!r} is not a relative file path like run_results.json.")
        params = [("step", str(step))] if step is not None else []
        return Call(
            "GET",
            self._path(f"runs/{run_id}/artifacts/{quote(clean, safe='/')}"),
            parse=lambda response: response.content,
            params=params,
        )

    def get_job_call(self, job_id: int) -> Call[Job]:
        """The call behind :meth:`DbtCloudClient.get_job` (checked here, before any request)."""
        check_id("job_id", job_id)
        return self._build("GET", f"jobs/{job_id}/", Job.model_validate)

    def list_jobs_call(self, limit: int, offset: int) -> Call[JobPage]:
        """One page of the account's active jobs by ID (``GET jobs/``), with their triggers."""
        path = self._path("jobs/")
        label = f"GET {path}"

        def parse(response: httpx.Response) -> JobPage:
            jobs, _, total_count = listed_page(label, response, offset, Job.model_validate, "jobs")
            return JobPage(jobs=jobs, total_count=total_count)

        params = [("order_by", "id"), ("limit", str(limit)), ("offset", str(offset))]
        return Call("GET", path, parse=parse, params=params)

    def update_job_call(self, job: Job | dict[str, Any]) -> Call[Job]:
        """The call behind :meth:`DbtCloudClient.update_job` (checked here, before any request)."""
        body = job_update_body(job)
        job_id = check_id("job id", body.get("id"))
        return self._build("POST", f"jobs/{job_id}/", Job.model_validate, json_body=body, kind="write")

    def job_history_call(self, job_id: int, limit: int) -> Call[list[float]]:
        """Start-to-finish seconds of the job's last ``limit`` successful runs: one page of runs, newest first."""
        page = self.list_runs_call(
            {"job_definition_id": job_id, "status_in": [RunStatus.SUCCESS], "order_by": "-id"}, limit, 0
        )
        return Call(
            page.method,
            page.path,
            parse=lambda response: durations_from_runs(page.parse(response).runs),
            params=page.params,
        )

    # -- API v3: webhook subscriptions (another base path than v2's) ----------------------------------------

    def _build_v3(self, method: str, suffix: str, model: Callable[[Any], T], **options: Any) -> Call[T]:
        path = f"/api/v3/accounts/{self.account_id}/webhooks/{suffix}"
        return Call(method, path, parse=parser(f"{method} {path}", model), **options)

    def list_webhook_subscriptions_call(self, limit: int, offset: int) -> Call[list[WebhookSubscription]]:
        """The call behind :meth:`DbtCloudClient.list_webhook_subscriptions` (checked here, before any request)."""
        check_page(limit, offset)

        def to_list(data: Any) -> list[WebhookSubscription]:
            if not isinstance(data, list):
                raise ValueError("the subscription list is not a list")
            return [WebhookSubscription.model_validate(item) for item in data]

        params = [("limit", str(limit)), ("offset", str(offset))]
        return self._build_v3("GET", "subscriptions", to_list, params=params)

    def create_webhook_subscription_call(
        self, name: str, client_url: str, settings: SubscriptionSettings
    ) -> Call[WebhookSubscription]:
        # A create retried after a lost answer can make a second subscription; ensure-style callers list first.
        """The call behind :meth:`DbtCloudClient.create_webhook_subscription` (checked here, before any request)."""
        body = subscription_body(name=name, client_url=client_url, **settings)
        return self._build_v3("POST", "subscriptions", WebhookSubscription.model_validate, json_body=body, kind="write")

    def get_webhook_subscription_call(self, subscription_id: str) -> Call[WebhookSubscription]:
        """The call behind :meth:`DbtCloudClient.get_webhook_subscription` (checked here, before any request)."""
        ident = check_subscription_id(subscription_id)
        return self._build_v3("GET", f"subscription/{ident}", WebhookSubscription.model_validate)

    def update_webhook_subscription_call(
        self, subscription_id: str, name: str, client_url: str, settings: SubscriptionSettings
    ) -> Call[WebhookSubscription]:
        """The call behind :meth:`DbtCloudClient.update_webhook_subscription` (checked here, before any request)."""
        ident = check_subscription_id(subscription_id)
        body = subscription_body(name=name, client_url=client_url, **settings)
        return self._build_v3(
            "PUT", f"subscription/{ident}", WebhookSubscription.model_validate, json_body=body, kind="write"
        )

    def delete_webhook_subscription_call(self, subscription_id: str) -> Call[str]:
        """The call behind :meth:`DbtCloudClient.delete_webhook_subscription` (checked here, before any request)."""
        ident = check_subscription_id(subscription_id)
        return self._build_v3(
            "DELETE", f"subscription/{ident}", lambda data: str((data or {}).get("id") or ident), kind="write"
        )

    def test_webhook_subscription_call(self, subscription_id: str) -> Call[dict[str, Any]]:
        """The call behind :meth:`DbtCloudClient.test_webhook_subscription` (checked here, before any request)."""
        ident = check_subscription_id(subscription_id)

        def to_dict(data: Any) -> dict[str, Any]:
            if not isinstance(data, dict):
                raise ValueError("the test answer is not an object")
            return data

        return self._build_v3("GET", f"subscription/{ident}/test", to_dict)
