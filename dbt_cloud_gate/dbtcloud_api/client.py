"""Sync and async clients of the dbt Cloud Administrative API v2.

Both clients are drivers of one I/O-free core (``_core.Core``): it builds each request, runs the retry loop
as a generator of steps (send this, sleep that) and reads the answers; the twins only send and sleep. The
client knows HTTP and dbt Cloud, nothing of Prefect. Its parts: ``_config`` (timeouts, retry policy, token),
``_deadline`` (request deadlines), ``_retry`` (retry decisions), ``_payloads`` (bodies, the envelope),
``_exchange`` (steps and their drivers' handle), ``_core``; the public names of each are importable from here.

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
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any, TypeVar, Unpack

import httpx

from dbt_cloud_gate.dbtcloud_api._config import (
    DEFAULT_RUN_INCLUDES,
    MAX_CAUSE_LENGTH,
    MAX_PAGE_SIZE,
    NO_RETRY,
    USER_AGENT,
    RetryPolicy,
    Timeouts,
    validate_api_token,
)
from dbt_cloud_gate.dbtcloud_api._core import SEND_FAILURES, Core, Pager, RunQuery, Send
from dbt_cloud_gate.dbtcloud_api._deadline import ATTEMPT_DEADLINE, check_deadline, deadline_transport, request_deadline
from dbt_cloud_gate.dbtcloud_api._payloads import TRIGGER_OVERRIDES, clip_cause, job_update_body
from dbt_cloud_gate.dbtcloud_api._retry import RETRYABLE_STATUSES, Call, CallKind, parse_retry_after
from dbt_cloud_gate.dbtcloud_api._tls import verification_context
from dbt_cloud_gate.dbtcloud_api.errors import DbtCloudConfigError
from dbt_cloud_gate.dbtcloud_api.models import Job, JobPage, Run, RunPage
from dbt_cloud_gate.dbtcloud_api.types import check_id
from dbt_cloud_gate.dbtcloud_api.webhooks import SubscriptionSettings, WebhookSubscription

# The names this module has always offered, wherever they live now.
__all__ = [
    "DEFAULT_RUN_INCLUDES",
    "MAX_CAUSE_LENGTH",
    "MAX_PAGE_SIZE",
    "NO_RETRY",
    "RETRYABLE_STATUSES",
    "TRIGGER_OVERRIDES",
    "USER_AGENT",
    "AsyncDbtCloudClient",
    "CallKind",
    "DbtCloudClient",
    "RetryPolicy",
    "RunQuery",
    "Timeouts",
    "check_deadline",
    "check_id",
    "clip_cause",
    "job_update_body",
    "parse_retry_after",
    "request_deadline",
    "validate_api_token",
]

T = TypeVar("T")


class DbtCloudClient(Core):
    """Blocking client. Use as a context manager, or call :meth:`close`."""

    def __init__(self, *args: Any, http_client: httpx.Client | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._owns_http = http_client is None
        self._http = http_client or httpx.Client(**self._http_kwargs(), transport=deadline_transport())
        self._sleep: Callable[[float], None] = time.sleep

    def __enter__(self) -> DbtCloudClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool (if this client made it)."""
        if self._owns_http:
            self._http.close()

    def _execute(self, call: Call[T]) -> T:
        """Take the call's steps (:meth:`Core.exchange`): sleep a ``Sleep``, send a ``Send``."""
        exchange = self.exchange(call)
        for step in exchange:
            if isinstance(step, Send):
                exchange.reply(self._send(step))
            else:
                self._sleep(step.seconds)
        return exchange.answer

    def _send(self, step: Send) -> httpx.Response | Exception:
        """One attempt; each socket read and write ends by its deadline (see ``deadline_transport``)."""
        token = ATTEMPT_DEADLINE.set(step.deadline)
        try:
            return self._http.request(**step.arguments)
        except SEND_FAILURES as exc:
            return exc
        finally:
            ATTEMPT_DEADLINE.reset(token)

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

    def list_runs(self, *, limit: int = MAX_PAGE_SIZE, offset: int = 0, **query: Unpack[RunQuery]) -> RunPage:
        """One page of runs of the account, optionally of one job (``job_definition_id``), in some statuses
        (``status_in``), in an ``order_by``, with ``include_related``."""
        return self._execute(self.list_runs_call(query, limit, offset))

    def iter_runs(
        self, *, page_size: int = MAX_PAGE_SIZE, max_runs: int | None = None, **query: Unpack[RunQuery]
    ) -> Iterator[Run]:
        """Every matching run, page by page, until ``extra.pagination.total_count`` (or ``max_runs``)."""
        pager = Pager[Run](page_size, max_runs)
        while not pager.done:
            page = self._execute(self.list_runs_call(query, page_size, pager.offset))
            yield from pager.take(page.runs, page.total_count)

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
        return self._execute(self.job_history_call(job_id, limit))

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

    def list_jobs(self, *, limit: int = MAX_PAGE_SIZE, offset: int = 0) -> JobPage:
        """One page of the account's active jobs, by ID, with their triggers (``total_count`` for paging)."""
        return self._execute(self.list_jobs_call(limit, offset))

    # -- API v3: webhook subscriptions ----------------------------------------------------------------------

    def list_webhook_subscriptions(self, *, page_size: int = MAX_PAGE_SIZE) -> list[WebhookSubscription]:
        """Every webhook subscription of the account, page by page."""
        pager = Pager[WebhookSubscription](page_size)
        found: list[WebhookSubscription] = []
        while not pager.done:
            page = self._execute(self.list_webhook_subscriptions_call(page_size, pager.offset))
            found += pager.take(page)
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


class AsyncDbtCloudClient(Core):
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
        self._http = http_client or httpx.AsyncClient(
            **self._http_kwargs(), limits=limits, verify=verification_context()
        )
        self._slots = asyncio.Semaphore(max_concurrency)

    async def __aenter__(self) -> AsyncDbtCloudClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool (if this client made it)."""
        if self._owns_http:
            await self._http.aclose()

    async def _execute(self, call: Call[T]) -> T:
        """The asyncio twin of :meth:`DbtCloudClient._execute`."""
        exchange = self.exchange(call)
        for step in exchange:
            if isinstance(step, Send):
                exchange.reply(await self._send(step))
            else:
                await asyncio.sleep(step.seconds)
        return exchange.answer

    async def _send(self, step: Send) -> httpx.Response | Exception:
        """One attempt; a ``TimeoutError`` past its deadline."""
        try:
            # The whole attempt, waiting for a slot and reading the body included, ends by its deadline.
            async with asyncio.timeout(max(0.0, step.deadline - time.monotonic())), self._slots:
                return await self._http.request(**step.arguments)
        except SEND_FAILURES as exc:
            return exc

    async def trigger_job_run(self, job_id: int, cause: str, **overrides: Any) -> Run:
        """Start a run of ``job_id``; see :meth:`DbtCloudClient.trigger_job_run`."""
        return await self._execute(self.trigger_call(job_id, cause, overrides))

    # The twins repeat a signature on purpose (httpx's pattern): each client's surface; the call is built once, in Core.
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

    async def list_runs(self, *, limit: int = MAX_PAGE_SIZE, offset: int = 0, **query: Unpack[RunQuery]) -> RunPage:
        """One page of runs; see :meth:`DbtCloudClient.list_runs`."""
        return await self._execute(self.list_runs_call(query, limit, offset))

    async def iter_runs(
        self, *, page_size: int = MAX_PAGE_SIZE, max_runs: int | None = None, **query: Unpack[RunQuery]
    ) -> AsyncIterator[Run]:
        """Every matching run, page by page; see :meth:`DbtCloudClient.iter_runs`."""
        pager = Pager[Run](page_size, max_runs)
        while not pager.done:
            page = await self._execute(self.list_runs_call(query, page_size, pager.offset))
            for run in pager.take(page.runs, page.total_count):
                yield run

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
        return await self._execute(self.job_history_call(job_id, limit))

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
        pager = Pager[WebhookSubscription](page_size)
        found: list[WebhookSubscription] = []
        while not pager.done:
            page = await self._execute(self.list_webhook_subscriptions_call(page_size, pager.offset))
            found += pager.take(page)
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
