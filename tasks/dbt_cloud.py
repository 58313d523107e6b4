"""Prefect tasks for dbt Cloud: trigger, wait, cancel, per-model results, alerts.

Clients are built inside each task from the credentials block (a client is not a hashable task input).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import json
import logging
import uuid
from collections.abc import Coroutine, Sequence
from typing import Any, Literal, TypeVar
from uuid import UUID

from prefect import get_run_logger, task
from prefect.blocks.core import Block
from prefect.blocks.notifications import NotificationBlock
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.context import TaskRunContext
from prefect.exceptions import TerminationSignal
from prefect.runtime import deployment as runtime_deployment
from prefect.runtime import flow_run as runtime_flow_run
from prefect.utilities.asyncutils import run_coro_as_sync

from blocks.dbt_cloud import DbtCloudCredentials
from dbtcloud_api import (
    DbtCloudAmbiguousTriggerError,
    DbtCloudError,
    ModelResult,
    Run,
    parse_run_results,
)
from dbtcloud_api.client import MAX_CAUSE_LENGTH, DbtCloudClient
from dbtcloud_api.errors import scrub
from dbtcloud_api.models import ACTIVE_STATUSES
from dbtcloud_api.polling import make_schedule
from dbtcloud_api.wait import PollSchedule, WaitOutcome, WaitTimedOut, await_runs, wait_for_run

T = TypeVar("T")
IDEMPOTENCY_PREFIX = "dcg:"
# How many times an ambiguous trigger is followed by a search and a new attempt before giving up.
MAX_TRIGGER_ATTEMPTS = 3


class DbtCloudJobAlreadyRunning(DbtCloudError):
    """``if_running="fail"`` and the job already has a run queued or running."""


class DbtCloudNativeScheduleOn(DbtCloudError):
    """``native_schedule="fail"`` and the job's own dbt Cloud schedule is on."""


def _apply_schedule_policy(
    client: DbtCloudClient, job_id: int, policy: str, log: logging.Logger | logging.LoggerAdapter[Any]
) -> str | None:
    """Apply the policy to one job; returns a refusal message under "fail" when its schedule is on, else None."""
    job = client.get_job(job_id)
    if not job.schedule_enabled:
        return None
    where = f"dbt Cloud job {job_id} ({job.name!r}) has its own dbt Cloud schedule on ({job.cron_humanized or 'cron'})"
    if policy == "fail":
        return where
    if policy == "warn":
        log.warning(
            "%s: it also runs outside this pipeline. Turn off 'Run on schedule' in the job's triggers in dbt "
            "Cloud, or run with native_schedule='disable'.",
            where,
        )
        return None
    owner = runtime_deployment.get_name() or runtime_flow_run.get_flow_name() or "a Prefect flow"
    job.triggers.schedule = False
    note = f"Schedule owned by Prefect deployment {owner} (dbt-cloud-gate); dbt Cloud schedule turned off."
    description = (job.description or "").strip()
    if note not in description:
        job.description = f"{description}\n{note}".strip()
    client.update_job(job)
    log.warning("%s: turned it off (native_schedule='disable'); the job now runs only from %s.", where, owner)
    return None


@task(name="check-dbt-cloud-job-schedules", cache_policy=NO_CACHE)
def check_native_schedule(
    credentials: DbtCloudCredentials, job_ids: int | Sequence[int], policy: Literal["warn", "fail", "disable"] = "warn"
) -> None:
    """Apply the policy to every job whose own dbt Cloud schedule is on (one task run for all the jobs).

    The pipeline owns the schedule: a job left scheduled in dbt Cloud runs twice. Under "fail" it refuses before
    anything is triggered, naming every such job.
    """
    if policy not in ("warn", "fail", "disable"):
        raise ValueError(f"native_schedule must be 'warn', 'fail' or 'disable', got {policy!r}.")
    log = get_run_logger()
    ids = [job_ids] if isinstance(job_ids, int) else sorted(set(job_ids))
    with credentials.get_client() as client:
        refused = [message for job_id in ids if (message := _apply_schedule_policy(client, job_id, policy, log))]
    if refused:
        raise DbtCloudNativeScheduleOn(
            f"{'; '.join(refused)}, so it also runs outside this pipeline. Turn off 'Run on schedule' in the job's "
            "triggers in dbt Cloud, or run with native_schedule='disable' to turn it off from here."
        )


def idempotency_key(job_id: int, flow_run_id: str | None = None) -> str:
    """The marker put in a run's cause: ties a dbt Cloud run to the Prefect flow run that started it."""
    owner = flow_run_id or runtime_flow_run.get_id() or f"adhoc-{uuid.uuid4()}"
    return f"[{IDEMPOTENCY_PREFIX}{owner}:{job_id}]"


def cause_with_key(cause: str | None, key: str) -> str:
    """``cause`` (default: the flow run's name) with ``key`` appended, within dbt Cloud's 255 characters."""
    text = (cause or "").strip() or f"Triggered by Prefect flow run {runtime_flow_run.get_name() or 'outside a flow'}"
    room = MAX_CAUSE_LENGTH - len(key) - 1
    if len(text) > room:
        logging.getLogger("dbtcloud_api").warning(
            "The run cause is %d characters; it was cut to %d to leave room for the %d-character idempotency key "
            "within dbt Cloud's %d.",
            len(text),
            room,
            len(key),
            MAX_CAUSE_LENGTH,
        )
        text = text[:room]
    return f"{text} {key}"


def _trigger_cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    # One trigger per (flow run, job, key): a retry of the flow run reuses the persisted run ID.
    return f"dbt-cloud-trigger-{context.task_run.flow_run_id}-{parameters['job_id']}-{parameters['key']}"


@task(
    name="trigger-dbt-cloud-job",
    cache_key_fn=_trigger_cache_key,
    persist_result=True,
    retries=0,
)
def trigger_dbt_cloud_job(
    credentials: DbtCloudCredentials,
    job_id: int,
    cause: str,
    key: str,
    overrides: dict[str, Any] | None = None,
) -> int:
    """Start a run of ``job_id`` and return its ID; never starts two runs for one ``key``.

    After an ambiguous failure (the request may have created a run), and on a retry of the flow run, it first
    looks for a run of the job whose cause carries ``key``.
    """
    log = get_run_logger()
    with credentials.get_client() as client:
        if (runtime_flow_run.get_run_count() or 1) > 1:
            found = client.find_runs_by_cause(job_id, key, max_runs=100)
            if found:
                log.info("Flow run retry: reusing dbt Cloud run %s of job %s, started earlier.", found[0].id, job_id)
                return found[0].id
        for attempt in range(1, MAX_TRIGGER_ATTEMPTS + 1):
            try:
                run = client.trigger_job_run(job_id, cause, **(overrides or {}))
            except DbtCloudAmbiguousTriggerError as exc:
                log.warning("Trigger of job %s may or may not have started a run (%s); looking for it.", job_id, exc)
                found = client.find_runs_by_cause(job_id, key, max_runs=100)
                if found:
                    log.info("Found dbt Cloud run %s carrying this flow run's key; using it.", found[0].id)
                    return found[0].id
                if attempt == MAX_TRIGGER_ATTEMPTS:
                    raise
                continue
            log.info("Triggered dbt Cloud job %s: run %s (%s).", job_id, run.id, run.href or "no link")
            return run.id
    raise AssertionError("unreachable")  # pragma: no cover


@task(name="find-dbt-cloud-run-in-flight", cache_policy=NO_CACHE)
def find_run_in_flight(credentials: DbtCloudCredentials, job_id: int) -> Run | None:
    """The newest run of ``job_id`` that is queued, starting or running, if any."""
    with credentials.get_client() as client:
        page = client.list_runs(
            job_definition_id=job_id,
            status_in=sorted(ACTIVE_STATUSES),
            order_by="-id",
            limit=1,
        )
    return page.runs[0] if page.runs else None


@task(
    name="retry-dbt-cloud-run",
    cache_key_fn=lambda ctx, p: f"dbt-cloud-retry-{ctx.task_run.flow_run_id}-{p['run_id']}",
    persist_result=True,
)
def retry_dbt_cloud_run(credentials: DbtCloudCredentials, run_id: int) -> int:
    """Retry a failed run from its point of failure; returns the new run's ID (reused on a flow retry)."""
    with credentials.get_client() as client:
        run = client.retry_run(run_id)
    get_run_logger().info("Retrying dbt Cloud run %s from its point of failure: new run %s.", run_id, run.id)
    return run.id


@task(name="wait-for-dbt-cloud-run", cache_policy=NO_CACHE)
def wait_for_dbt_cloud_run(
    credentials: DbtCloudCredentials,
    run_id: int,
    poll_interval_seconds: float = 30,
    max_wait_seconds: float = 7200,
    on_timeout: Literal["cancel", "leave"] = "cancel",
    schedule: PollSchedule | None = None,
    job_id: int | None = None,
    adaptive_polling: bool = True,
) -> Run:
    """Poll a run until it finishes: one task run for the whole wait, logging status changes and step progress.

    With ``adaptive_polling`` and a ``job_id``, it reads the job's recent successful runs once and polls around
    their durations (see ``dbtcloud_api.polling``); otherwise every ``poll_interval_seconds``.
    Past ``max_wait_seconds`` it cancels the run (unless ``on_timeout="leave"``) and raises ``WaitTimedOut``.
    """
    log = get_run_logger()
    with credentials.get_client() as client:
        if schedule is None:
            history: list[float] = []
            if adaptive_polling and job_id is not None:
                try:
                    history = client.job_history(job_id)
                except DbtCloudError as exc:
                    log.warning("Could not read job %s's history (%s); polling at a fixed interval.", job_id, exc)
            schedule = make_schedule(history, poll_interval_seconds, adaptive=adaptive_polling)
            log.info("Polling dbt Cloud run %s: %r.", run_id, schedule)
        try:
            return wait_for_run(
                client,
                run_id,
                max_wait_seconds=max_wait_seconds,
                schedule=schedule,
                not_found_grace_seconds=client.retry.not_found_grace_seconds,
                log=log,
            )
        except TerminationSignal:
            # The Prefect flow run is being cancelled (or its process stopped). The runner's on_cancellation hook
            # may be skipped when the process exits quickly, so cancel the dbt Cloud run here too; a stop that is
            # not a cancellation leaves it running, for a retry to resume.
            if _prefect_cancellation_requested():
                _cancel_quietly(client, [run_id], log)
            raise
        except WaitTimedOut as exc:
            if on_timeout == "cancel":
                try:
                    exc.run = client.cancel_run(run_id)
                    log.warning("Deadline of %g s passed: cancelled dbt Cloud run %s.", max_wait_seconds, run_id)
                except DbtCloudError as cancel_error:
                    log.error("Deadline passed, and cancelling dbt Cloud run %s failed: %s", run_id, cancel_error)
            else:
                log.warning("Deadline of %g s passed: dbt Cloud run %s left running.", max_wait_seconds, run_id)
            raise


@task(name="wait-for-dbt-cloud-runs", cache_policy=NO_CACHE)
def wait_for_dbt_cloud_runs(
    credentials: DbtCloudCredentials,
    runs: dict[int, int],
    poll_interval_seconds: float = 30,
    max_wait_seconds: float = 7200,
    on_timeout: Literal["cancel", "leave"] = "cancel",
    adaptive_polling: bool = True,
) -> list[WaitOutcome]:
    """Wait for many runs (run ID → job ID) in one task, on one event loop: no thread and no task run per run.

    Each job's history is read once. Returns one outcome per run, in order; never raises for a run's outcome.
    """
    log = get_run_logger()

    async def main() -> list[WaitOutcome]:
        async with credentials.get_async_client() as client:
            histories: dict[int, list[float]] = {}
            for job_id in sorted(set(runs.values())):
                histories[job_id] = []
                if adaptive_polling:
                    try:
                        histories[job_id] = await client.job_history(job_id)
                    except DbtCloudError as exc:
                        log.warning("Could not read job %s's history (%s); fixed polling.", job_id, exc)
            schedules = {
                job_id: make_schedule(history, poll_interval_seconds, adaptive=adaptive_polling)
                for job_id, history in histories.items()
            }
            return await await_runs(
                client,
                list(runs),
                schedules=lambda run_id: schedules[runs[run_id]],
                max_wait_seconds=max_wait_seconds,
                on_timeout=on_timeout,
                not_found_grace_seconds=client.retry.not_found_grace_seconds,
                log=log,
            )

    try:
        return run_async(main())
    except TerminationSignal:
        if _prefect_cancellation_requested():
            with credentials.get_client() as client:
                _cancel_quietly(client, list(runs), log)
        raise


def _prefect_cancellation_requested() -> bool:
    """Whether this task's flow run is being cancelled in Prefect (its state is Cancelling or Cancelled)."""
    flow_run_id = runtime_flow_run.get_id()
    if not flow_run_id:
        return False
    try:
        with get_client(sync_client=True) as prefect:
            state = prefect.read_flow_run(UUID(flow_run_id)).state
    except Exception:  # no API at hand: do not guess
        return False
    return state is not None and (state.is_cancelling() or state.is_cancelled())


def _cancel_quietly(
    client: DbtCloudClient, run_ids: list[int], log: logging.Logger | logging.LoggerAdapter[Any]
) -> None:
    for run_id in run_ids:
        try:
            run = client.get_run(run_id, ())
            if not run.is_terminal:
                client.cancel_run(run_id)
                log.warning("Prefect flow run cancelled: cancelled dbt Cloud run %s.", run_id)
        except DbtCloudError as exc:
            log.error("Prefect flow run cancelled, but dbt Cloud run %s could not be cancelled: %s", run_id, exc)


def run_async(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from sync code, in a fresh thread when this one already runs a loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


@task(name="cancel-dbt-cloud-run", cache_policy=NO_CACHE)
def cancel_dbt_cloud_run(credentials: DbtCloudCredentials, run_id: int) -> Run:
    """Cancel a dbt Cloud run (safe to repeat)."""
    with credentials.get_client() as client:
        return client.cancel_run(run_id)


@task(name="fetch-dbt-cloud-run-results", cache_policy=NO_CACHE)
def fetch_run_results(credentials: DbtCloudCredentials, run_id: int, step: int | None = None) -> list[ModelResult]:
    """Per-model results (name, status, time, message) from the run's ``run_results.json``; [] if it has none."""
    log = get_run_logger()
    with credentials.get_client() as client:
        try:
            raw = client.get_run_artifact(run_id, "run_results.json", step=step)
        except DbtCloudError as exc:
            log.warning("No run_results.json for dbt Cloud run %s: %s", run_id, exc)
            return []
    try:
        return parse_run_results(json.loads(raw))
    except (ValueError, TypeError) as exc:
        log.warning("run_results.json of dbt Cloud run %s could not be read: %s", run_id, exc)
        return []


def load_notification_block(reference: str | NotificationBlock) -> NotificationBlock:
    """A notification block given as an instance or as ``block-type-slug/name`` (``slack-webhook/data-alerts``)."""
    if isinstance(reference, NotificationBlock):
        return reference
    if "/" not in reference:
        raise ValueError(
            f"Alert block {reference!r} must be named with its type, like 'slack-webhook/{reference}' or "
            f"'custom-webhook/{reference}'."
        )
    block = Block.load(reference)
    if not isinstance(block, NotificationBlock):
        raise ValueError(f"Block {reference!r} is not a notification block (it cannot send alerts).")
    return block


@task(name="send-dbt-cloud-alert", cache_policy=NO_CACHE)
def send_alerts(
    alert_blocks: Sequence[str | NotificationBlock], subject: str, body: str, secret: str | None = None
) -> dict[str, str]:
    """Send one alert through each block; returns block → "sent" or the error. A failure never raises."""
    log = get_run_logger()
    outcome: dict[str, str] = {}
    for reference in alert_blocks:
        name = reference if isinstance(reference, str) else type(reference).__name__
        try:
            block = load_notification_block(reference)
            sent = block.notify(scrub(body, secret), scrub(subject, secret))
            if inspect.isawaitable(sent):  # a custom block with only an async notify
                run_coro_as_sync(sent)
        except Exception as exc:  # an alert that fails must not hide the run's failure
            outcome[name] = f"failed: {scrub(str(exc), secret)}"
            log.error("Could not send the dbt Cloud alert through %s: %s", name, scrub(str(exc), secret))
        else:
            outcome[name] = "sent"
            log.info("Sent the dbt Cloud alert through %s.", name)
    return outcome
