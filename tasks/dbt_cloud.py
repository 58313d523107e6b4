"""Prefect tasks for dbt Cloud: trigger, wait, cancel, per-model results, alerts; and the idempotency key.

Clients are built inside each task from the credentials block (a client is not a hashable task input).
The trigger and wait tasks carry Prefect's own retries and timeouts, set as any Prefect user sets them
(``trigger_dbt_cloud_job.with_options(retries=5, timeout_seconds=900)``); a retry of the trigger looks for
the run carrying its key before starting one, so no retry, of the task or of any flow above it, starts two.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import inspect
import json
import logging
import re
import time
import uuid
from collections.abc import Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar
from uuid import UUID

from prefect import Task, get_run_logger, task
from prefect.blocks.core import Block
from prefect.blocks.notifications import NotificationBlock
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.objects import FlowRun, TaskRun
from prefect.exceptions import TerminationSignal
from prefect.runtime import deployment as runtime_deployment
from prefect.runtime import flow_run as runtime_flow_run
from prefect.states import State
from prefect.utilities.asyncutils import run_coro_as_sync

from dbt_cloud_gate.blocks.dbt_cloud import DbtCloudCredentials
from dbt_cloud_gate.dbtcloud_api import (
    DbtCloudAmbiguousTriggerError,
    DbtCloudError,
    ModelResult,
    Run,
)
from dbt_cloud_gate.dbtcloud_api.client import MAX_CAUSE_LENGTH, DbtCloudClient, request_deadline
from dbt_cloud_gate.dbtcloud_api.errors import (
    DbtCloudMissingFinishedAtError,
    DbtCloudRateLimitError,
    DbtCloudResponseError,
    DbtCloudRunMismatchError,
    DbtCloudServerError,
    DbtCloudTransportError,
    scrub,
)
from dbt_cloud_gate.dbtcloud_api.models import (
    ACTIVE_STATUSES,
    RECENT_RUNS_INCLUDES,
    RECENT_RUNS_LIMIT,
    RecentRuns,
    RunStatus,
)
from dbt_cloud_gate.dbtcloud_api.polling import FixedInterval, check_interval, make_schedule
from dbt_cloud_gate.dbtcloud_api.results import aread_model_results, has_model_results, read_model_results
from dbt_cloud_gate.dbtcloud_api.wait import (
    AFTER_WAIT_SECONDS,
    PollSchedule,
    WaitOutcome,
    WaitTimedOut,
    await_runs,
    first_poll_delay,
    wait_for_run,
)
from dbt_cloud_gate.errors import DbtCloudJobAlreadyRunning, DbtCloudNativeScheduleOn
from dbt_cloud_gate.waiter import DEFAULT_FALLBACK_POLL_SECONDS, RunEventWaiter, webhook_waiter

T = TypeVar("T")
_LOG = logging.getLogger("dbt_cloud_gate.dbtcloud_api")
IDEMPOTENCY_PREFIX = "dcg:"
# How many times an ambiguous trigger is followed by a search and a new attempt before giving up.
MAX_TRIGGER_ATTEMPTS = 3
# Prefect's own retries of the trigger task (each attempt looks for the key first) and their delays.
TRIGGER_RETRIES = 2
TRIGGER_RETRY_DELAYS = [10.0, 30.0]
# Bounds one trigger attempt: a search, up to MAX_TRIGGER_ATTEMPTS POSTs, each retried by the client.
TRIGGER_TIMEOUT_SECONDS = 600.0
# The wait task's hard backstop past ``max_wait_seconds``: the wait ends on its own deadline and then cancels,
# which may take the client's retries; this only fires should something inside hang.
WAIT_BACKSTOP_SECONDS = 120.0
# Errors after which another attempt can succeed. Auth, bad request, not found and configuration errors cannot.
# How a reusable run must not have ended: a retry after these runs dbt again.
FAILED_STATUSES = frozenset({RunStatus.ERROR, RunStatus.CANCELLED})
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    DbtCloudServerError,
    DbtCloudTransportError,
    DbtCloudRateLimitError,
    DbtCloudResponseError,
    DbtCloudAmbiguousTriggerError,
    TimeoutError,
)


def wait_timeout_seconds(max_wait_seconds: float) -> float:
    """The wait task's ``timeout_seconds`` for a wait of ``max_wait_seconds``: a hard backstop a little past it."""
    return float(max_wait_seconds) + WAIT_BACKSTOP_SECONDS


def retry_if_transient(task: Task[..., Any], task_run: TaskRun, state: State[Any]) -> bool:
    """Prefect ``retry_condition_fn``: retry a failure another attempt can heal (5xx, 429, no answer, an
    ambiguous trigger, the task's own timeout); never a refused token, a bad request or a bad setting."""
    try:
        exc = state.result(raise_on_failure=False)
    except Exception:  # the result cannot be read: a crash, retrying is the safe side for an idempotent task
        return True
    # A run of another ID/job read back, or a Success without finished_at, was already retried by the client:
    # another attempt would read the same answer.
    if isinstance(exc, DbtCloudRunMismatchError | DbtCloudMissingFinishedAtError):
        return False
    return isinstance(exc, TRANSIENT_ERRORS)


def _apply_schedule_policy(
    client: DbtCloudClient,
    job_id: int,
    policy: str,
    log: logging.Logger | logging.LoggerAdapter[Any],
    recent: RecentRuns | None = None,
) -> str | None:
    """Apply the policy to one job; returns a refusal message under "fail" when its schedule is on, else None.

    When ``recent`` (read with the job) says the schedule is off, no request is made; otherwise the job is read
    (the message names it, and "disable" writes the whole job back)."""
    if recent is not None and recent.schedule_enabled() is False:
        return None
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
    _check_schedule_policy(policy)
    log = get_run_logger()
    ids = [job_ids] if isinstance(job_ids, int) else sorted(set(job_ids))
    with credentials.get_client() as client:
        refused = [message for job_id in ids if (message := _apply_schedule_policy(client, job_id, policy, log))]
    if refused:
        raise _schedule_refusal(refused)


def _check_schedule_policy(policy: str) -> None:
    if policy not in ("warn", "fail", "disable"):
        raise ValueError(f"native_schedule must be 'warn', 'fail' or 'disable', got {policy!r}.")


def check_start_settings(if_running: str, native_schedule: str) -> None:
    """Refuse an unknown ``if_running`` or ``native_schedule`` with a ``ValueError`` naming it."""
    _check_schedule_policy(native_schedule)
    if if_running not in ("trigger", "reuse", "fail"):
        raise ValueError(f"if_running must be 'trigger', 'reuse' or 'fail', got {if_running!r}.")


def _schedule_refusal(refused: list[str]) -> DbtCloudNativeScheduleOn:
    return DbtCloudNativeScheduleOn(
        f"{'; '.join(refused)}, so it also runs outside this pipeline. Turn off 'Run on schedule' in the job's "
        "triggers in dbt Cloud, or run with native_schedule='disable' to turn it off from here."
    )


def key_scope(flow_run_id: str | UUID | None = None, client: SyncPrefectClient | None = None) -> str:
    """The part of the idempotency key that names where in a Prefect run tree a trigger happens.

    The ROOT flow run's ID (kept by a retry of the root), plus, for a subflow, a digest of the path from the
    root down to it. Each hop is the name of the task run that tracks the subflow in its parent
    (``run-dbt-cloud-job-0``, ``run-dbt-cloud-job-1`` for the second call): Prefect numbers them in call order,
    and a retry of the parent numbers them again the same way. A subflow called inside a task gets a random
    tracking key from Prefect; its hop is then the flow's name and its parameters (a pipeline's job and targets).
    So a retry of the flow, of its parent, or of any ancestor finds the runs started before, and two calls of one
    job in one parent get two scopes; two calls with equal parameters from tasks of one flow run share one.
    Outside a flow run the scope is unique to this call (``adhoc-<uuid>``).
    """
    owner = flow_run_id or runtime_flow_run.get_id()
    if not owner:
        return f"adhoc-{uuid.uuid4()}"
    if client is None:
        try:
            with get_client(sync_client=True) as own:
                return key_scope(owner, own)
        except Exception as exc:  # no Prefect API at hand: this flow run's own retries still find the run
            _LOG.warning("Could not read the Prefect run tree (%s); keying dbt Cloud runs on flow run %s.", exc, owner)
            return str(owner)
    hops: list[str] = []
    for current, tracking in flow_runs_upwards(client, owner):
        if tracking is not None:
            hops.append(_hop_name(tracking, current.parameters or {}))
    if not hops:
        return str(current.id)
    digest = hashlib.sha256("/".join(reversed(hops)).encode()).hexdigest()[:12]
    return f"{current.id}.{digest}"


# A run tree deeper than this is not a real one: the walk up stops there.
MAX_RUN_TREE_DEPTH = 32


def flow_runs_upwards(client: SyncPrefectClient, flow_run_id: str | UUID) -> Iterator[tuple[FlowRun, TaskRun | None]]:
    """The flow run, then each flow run above it up to the root, each with the task run that tracks it in its
    parent (None for the top one)."""
    current = client.read_flow_run(UUID(str(flow_run_id)))
    for _ in range(MAX_RUN_TREE_DEPTH):
        tracking = client.read_task_run(current.parent_task_run_id) if current.parent_task_run_id else None
        yield current, tracking
        if tracking is None or tracking.flow_run_id is None:
            return
        current = client.read_flow_run(tracking.flow_run_id)


def _hop_name(tracking: TaskRun, parameters: dict[str, Any]) -> str:
    """A name for one subflow call that a retry of its parent reproduces."""
    if str(tracking.dynamic_key).isdigit():  # call order in the parent flow run
        return tracking.name
    flow_name = tracking.name.removesuffix(f"-{tracking.dynamic_key}")
    arguments = json.dumps(parameters, sort_keys=True, default=str)
    return f"{flow_name}({hashlib.sha256(arguments.encode()).hexdigest()[:16]})"


def idempotency_key(job_id: int, scope: str | None = None, occurrence: int = 1) -> str:
    """The marker put in a run's cause: ties a dbt Cloud run to the place in a Prefect run tree that started it.

    ``[dcg:<scope>:<job_id>]``, or ``[dcg:<scope>:<job_id>:<n>]`` for the n-th trigger of one job by one flow run
    (a fan-out that lists a job twice). ``scope`` defaults to :func:`key_scope` of the current flow run.
    """
    suffix = f":{occurrence}" if occurrence > 1 else ""
    return f"{key_marker(job_id, scope or key_scope())}{suffix}]"


def key_marker(job_id: int, scope: str) -> str:
    """The text every key of ``job_id`` in ``scope`` starts with (a search string for ``find_runs_by_cause``)."""
    return f"[{IDEMPOTENCY_PREFIX}{scope}:{job_id}"


def carries_scope_key(cause: str | None, job_id: int, scope: str) -> bool:
    """Whether ``cause`` carries a key :func:`idempotency_key` makes for ``job_id`` in ``scope`` (any occurrence;
    not job 110's when asked for job 11)."""
    return re.search(re.escape(key_marker(job_id, scope)) + r"(?::\d+)?\]", cause or "") is not None


def cause_with_attempt(cause: str, key: str, attempt: int) -> str:
    """``cause`` with ``key`` marked as its ``attempt``-th run (``[dcg:...]+2``), cut to dbt Cloud's 255 chars."""
    marked = f"{key}+{attempt}"
    text = cause.replace(key, "").rstrip()
    room = MAX_CAUSE_LENGTH - len(marked) - 1
    return f"{text[:room].rstrip()} {marked}".lstrip()


def cause_with_key(cause: str | None, key: str) -> str:
    """``cause`` (default: the flow run's name) with ``key`` appended, within dbt Cloud's 255 characters."""
    text = (cause or "").strip() or f"Triggered by Prefect flow run {runtime_flow_run.get_name() or 'outside a flow'}"
    room = MAX_CAUSE_LENGTH - len(key) - 1
    if len(text) > room:
        logging.getLogger("dbt_cloud_gate.dbtcloud_api").warning(
            "The run cause is %d characters; it was cut to %d to leave room for the %d-character idempotency key "
            "within dbt Cloud's %d.",
            len(text),
            room,
            len(key),
            MAX_CAUSE_LENGTH,
        )
        text = text[:room]
    return f"{text} {key}"


@task(
    name="trigger-dbt-cloud-job",
    # No cached result: whether a run carrying the key can be reused depends on how that run ended (see below),
    # which only the search by key can tell. Every attempt searches first anyway.
    cache_policy=NO_CACHE,
    retries=TRIGGER_RETRIES,
    retry_delay_seconds=TRIGGER_RETRY_DELAYS,
    retry_condition_fn=retry_if_transient,
    timeout_seconds=TRIGGER_TIMEOUT_SECONDS,
)
def trigger_dbt_cloud_job(
    credentials: DbtCloudCredentials,
    job_id: int,
    cause: str,
    key: str,
    overrides: dict[str, Any] | None = None,
) -> int:
    """Start a run of ``job_id`` and return its ID; never starts two runs for one ``key``.

    Every attempt (first, Prefect retry of this task, rerun after a retry of any flow above it) first looks for a
    run of the job whose cause carries ``key``, and reuses it; after an ambiguous failure (the request may have
    created a run) it looks again before any new attempt. Retries (default 2, after 10 s then 30 s) only follow a
    failure another attempt can heal; ``timeout_seconds`` (default 600) bounds one attempt.
    """
    log = get_run_logger()
    with credentials.get_client() as client:
        found = client.find_runs_by_cause(job_id, key, max_runs=RECENT_RUNS_LIMIT)
        return trigger_with_key(client, job_id, cause, key, overrides, found, log)[0]


def trigger_with_key(
    client: DbtCloudClient,
    job_id: int,
    cause: str,
    key: str,
    overrides: dict[str, Any] | None,
    found: list[Run],
    log: logging.Logger | logging.LoggerAdapter[Any],
) -> tuple[int, bool]:
    """The run for ``key`` given ``found`` (the job's runs carrying it, newest first): reuse the newest unless it
    failed, else POST, searching again after an ambiguous failure. Returns the run ID and whether it is new."""
    if found and found[0].status not in FAILED_STATUSES:
        log.info(
            "dbt Cloud run %s of job %s carries this trigger's key %s (%s): reusing it.",
            found[0].id,
            job_id,
            key,
            found[0].status_label,
        )
        return found[0].id, False
    if found:
        # A retry after the run failed or was cancelled (at the deadline, say): run dbt again, as a new attempt
        # of the same key, so that a search still finds it and a retry of this attempt reuses it.
        attempt_no = len(found) + 1
        log.info(
            "dbt Cloud run %s carrying key %s ended %s: triggering attempt %d.",
            found[0].id,
            key,
            found[0].status_label,
            attempt_no,
        )
        cause = cause_with_attempt(cause, key, attempt_no)
    for attempt in range(1, MAX_TRIGGER_ATTEMPTS + 1):
        try:
            run = client.trigger_job_run(job_id, cause, **(overrides or {}))
        except DbtCloudAmbiguousTriggerError as exc:
            log.warning("Trigger of job %s may or may not have started a run (%s); looking for it.", job_id, exc)
            again = client.find_runs_by_cause(job_id, key, max_runs=RECENT_RUNS_LIMIT)
            if len(again) > len(found):  # a run this attempt started
                log.info("Found dbt Cloud run %s carrying this trigger's key; using it.", again[0].id)
                return again[0].id, True
            if attempt == MAX_TRIGGER_ATTEMPTS:
                raise
            continue
        log.info("Triggered dbt Cloud job %s: run %s (%s).", job_id, run.id, run.href or "no link")
        return run.id, True
    raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises


@dataclass(frozen=True)
class StartedRun:
    """The run a flow waits on, and what the one read before it learnt: the job's recent run times."""

    run_id: int
    triggered: bool  # started now (False: a run carrying the key, or one in flight, was reused)
    history_seconds: list[float] | None  # None: not read (the wait reads it)
    # Started by this place in the run tree (it carries the key, or was retried from here). A run started by
    # someone else is never cancelled at this flow's deadline: that would fail the other pipeline.
    owned: bool = True


def read_recent_runs(client: DbtCloudClient, job_id: int) -> RecentRuns:
    """The job's newest runs, with trigger and job: one request (see ``RecentRuns``)."""
    page = client.list_runs(
        job_definition_id=job_id, order_by="-id", limit=RECENT_RUNS_LIMIT, include_related=RECENT_RUNS_INCLUDES
    )
    return RecentRuns.from_page(job_id, page)


@task(
    name="start-dbt-cloud-run",
    cache_policy=NO_CACHE,
    retries=TRIGGER_RETRIES,
    retry_delay_seconds=TRIGGER_RETRY_DELAYS,
    retry_condition_fn=retry_if_transient,
    timeout_seconds=TRIGGER_TIMEOUT_SECONDS,
)
def start_dbt_cloud_run(
    credentials: DbtCloudCredentials,
    job_id: int,
    cause: str,
    key: str,
    overrides: dict[str, Any] | None = None,
    if_running: Literal["trigger", "reuse", "fail"] = "trigger",
    native_schedule: Literal["warn", "fail", "disable"] = "warn",
) -> StartedRun:
    """Everything before the wait, from ONE read of the job's newest runs (with trigger and job): the schedule
    policy (the job is read only when its own schedule is on), the run carrying ``key`` (reused unless it
    failed), the ``if_running`` policy, then the trigger; and the job's run times for the poll schedule.

    A run carrying ``key`` wins over ``if_running``: a retry of this flow waits on its own run, even under "fail".
    Retries and timeout as :func:`trigger_dbt_cloud_job`; a refusal ("fail" policies) is never retried.
    """
    check_start_settings(if_running, native_schedule)
    log = get_run_logger()
    with credentials.get_client() as client:
        recent = read_recent_runs(client, job_id)
        refused = _apply_schedule_policy(client, job_id, native_schedule, log, recent)
        if refused:
            raise _schedule_refusal([refused])
        history = recent.history_seconds()
        found = recent.carrying(key)
        reusable = bool(found) and found[0].status not in FAILED_STATUSES
        in_flight = recent.in_flight() if if_running != "trigger" and not reusable else None
        if in_flight is not None:
            if if_running == "fail":
                raise DbtCloudJobAlreadyRunning(
                    f"dbt Cloud job {job_id} already has run {in_flight.id} {in_flight.status_label.lower()}; "
                    "if_running='fail' refuses to start another (use 'reuse' to wait on it, 'trigger' to queue one)."
                )
            log.info("Job %s already has run %s in flight; waiting on it (if_running='reuse').", job_id, in_flight.id)
            return StartedRun(in_flight.id, False, history, owned=False)
        run_id, triggered = trigger_with_key(client, job_id, cause, key, overrides, found, log)
        return StartedRun(run_id, triggered, history)


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
    cache_key_fn=lambda ctx, p: f"dbt-cloud-retry-{p.get('scope') or ctx.task_run.flow_run_id}-{p['run_id']}",
    persist_result=True,
)
def retry_dbt_cloud_run(credentials: DbtCloudCredentials, run_id: int, scope: str | None = None) -> int:
    """Retry a failed run from its point of failure; returns the new run's ID.

    The ID is kept per ``scope`` (see :func:`key_scope`): a retry of the flow or of an ancestor reuses it in
    this process (the retry endpoint takes no cause, so no key can be searched for).
    """
    with credentials.get_client() as client:
        run = client.retry_run(run_id)
    get_run_logger().info("Retrying dbt Cloud run %s from its point of failure: new run %s.", run_id, run.id)
    return run.id


def deadline_description(exc: WaitTimedOut) -> str:
    """Where the run stood when the wait's deadline passed ("still queued after 600 s, never started", "running
    for 540 s"), as the wait recorded it, whatever was done to the run after (a cancel)."""
    return exc.description or describe_run_at(exc.run, exc.waited_seconds)


def describe_run_at(run: Run | None, waited_seconds: float, now: datetime | None = None) -> str:
    """Where ``run`` (as last read) stood after a wait of ``waited_seconds``: queued, never started, or running."""
    now = now or datetime.now(UTC)
    if run is None:
        return f"never read in {waited_seconds:.0f} s of waiting"
    if run.started_at is None:
        since = (now - run.created_at).total_seconds() if run.created_at else waited_seconds
        return f"still {run.status_label.lower()} after {since:.0f} s, never started"
    return f"running for {(now - run.started_at).total_seconds():.0f} s (started at {run.started_at.isoformat()})"


@task(name="wait-for-dbt-cloud-run", cache_policy=NO_CACHE, timeout_seconds=wait_timeout_seconds(7200))
def wait_for_dbt_cloud_run(
    credentials: DbtCloudCredentials,
    run_id: int,
    poll_interval_seconds: float = 30,
    max_wait_seconds: float = 7200,
    on_timeout: Literal["cancel", "leave"] = "cancel",
    schedule: PollSchedule | None = None,
    job_id: int | None = None,
    adaptive_polling: bool = True,
    history_seconds: list[float] | None = None,
    just_triggered: bool = False,
    webhooks: bool = False,
    fallback_poll_seconds: float = DEFAULT_FALLBACK_POLL_SECONDS,
) -> Run:
    """Poll a run until it finishes: one task run for the whole wait, logging status changes and step progress.

    With ``adaptive_polling`` and a ``job_id``, it polls around the durations of the job's recent successful runs
    (``history_seconds``, read here when not given; see ``dbtcloud_api.polling``); otherwise every
    ``poll_interval_seconds``. ``just_triggered`` skips the poll right after a trigger (the run is queued).
    Past ``max_wait_seconds`` it cancels the run (unless ``on_timeout="leave"``) and raises ``WaitTimedOut``,
    whose ``description`` says where the run stood at the deadline. Its ``timeout_seconds`` is a hard backstop
    (``wait_timeout_seconds(max_wait_seconds)``, set per call by the flows).

    With ``webhooks``, the wait sleeps on the process-wide webhook waiter (``dbt_cloud_gate.waiter``; start it
    before the trigger) and polls at once when the run's terminal event arrives; between events it polls every
    ``fallback_poll_seconds`` (cancellations send no webhook). Without a Prefect server it polls as without.
    """
    log = get_run_logger()
    with credentials.get_client() as client:
        return _wait_in_task(
            client,
            run_id,
            log,
            poll_interval_seconds=poll_interval_seconds,
            max_wait_seconds=max_wait_seconds,
            on_timeout=on_timeout,
            schedule=schedule,
            job_id=job_id,
            adaptive_polling=adaptive_polling,
            history_seconds=history_seconds,
            just_triggered=just_triggered,
            webhooks=webhooks,
            fallback_poll_seconds=fallback_poll_seconds,
        )


@dataclass(frozen=True)
class FinishedRun:
    """A finished run, as the poll that saw its end read it (steps and trigger included), and its per-model
    results merged over every step that can build models."""

    run: Run
    models: list[ModelResult]


@task(
    name="wait-for-dbt-cloud-run-and-results",
    cache_policy=NO_CACHE,
    timeout_seconds=wait_timeout_seconds(7200),
)
def wait_for_dbt_cloud_run_and_results(
    credentials: DbtCloudCredentials,
    run_id: int,
    poll_interval_seconds: float = 30,
    max_wait_seconds: float = 7200,
    on_timeout: Literal["cancel", "leave"] = "cancel",
    job_id: int | None = None,
    adaptive_polling: bool = True,
    history_seconds: list[float] | None = None,
    just_triggered: bool = False,
    webhooks: bool = False,
    fallback_poll_seconds: float = DEFAULT_FALLBACK_POLL_SECONDS,
) -> FinishedRun:
    """:func:`wait_for_dbt_cloud_run`, then the run's ``run_results.json`` read right after the poll that saw the
    end, on the same connection and in the same task run: nothing serial is left between that poll and the
    flow's result but the artifacts. Raises as :func:`wait_for_dbt_cloud_run` does."""
    log = get_run_logger()
    with credentials.get_client() as client:
        run = _wait_in_task(
            client,
            run_id,
            log,
            poll_interval_seconds=poll_interval_seconds,
            max_wait_seconds=max_wait_seconds,
            on_timeout=on_timeout,
            schedule=None,
            job_id=job_id,
            adaptive_polling=adaptive_polling,
            history_seconds=history_seconds,
            just_triggered=just_triggered,
            webhooks=webhooks,
            fallback_poll_seconds=fallback_poll_seconds,
        )
        if not has_model_results(run):
            return FinishedRun(run, [])
        with request_deadline(time.monotonic() + AFTER_WAIT_SECONDS):
            return FinishedRun(run, read_model_results(client, run_id, run, log))


def _wait_in_task(
    client: DbtCloudClient,
    run_id: int,
    log: logging.Logger | logging.LoggerAdapter[Any],
    *,
    poll_interval_seconds: float,
    max_wait_seconds: float,
    on_timeout: str,
    schedule: PollSchedule | None,
    job_id: int | None,
    adaptive_polling: bool,
    history_seconds: list[float] | None,
    just_triggered: bool,
    webhooks: bool = False,
    fallback_poll_seconds: float = DEFAULT_FALLBACK_POLL_SECONDS,
) -> Run:
    """The body of the wait tasks: build the schedule, wait, and on the way out cancel as the settings say."""
    waker = _webhook_waker(webhooks, fallback_poll_seconds, log)
    if schedule is None and waker is not None:
        # The run's event ends the wait; polling is the safety net (cancellations, lost deliveries).
        schedule = FixedInterval(fallback_poll_seconds)
        log.info(
            "Waiting for dbt Cloud run %s on webhook events; polling every %g s as a safety net.",
            run_id,
            fallback_poll_seconds,
        )
    if schedule is None:
        history = list(history_seconds or [])
        if history_seconds is None and adaptive_polling and job_id is not None:
            try:
                with request_deadline(time.monotonic() + AFTER_WAIT_SECONDS):
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
            job_id=job_id,
            first_poll_delay_seconds=first_poll_delay(schedule) if just_triggered else 0.0,
            waker=waker,
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
                # Bounded: a server that misbehaved until the deadline must not hold the cancel for minutes.
                with request_deadline(time.monotonic() + AFTER_WAIT_SECONDS):
                    exc.run = client.cancel_run(run_id)
                log.warning(
                    "Deadline of %g s passed (%s): cancelled dbt Cloud run %s.",
                    max_wait_seconds,
                    deadline_description(exc),
                    run_id,
                )
            except DbtCloudError as cancel_error:
                log.error("Deadline passed, and cancelling dbt Cloud run %s failed: %s", run_id, cancel_error)
        else:
            log.warning("Deadline of %g s passed: dbt Cloud run %s left running.", max_wait_seconds, run_id)
        raise


def _webhook_waker(
    webhooks: bool, fallback_poll_seconds: float, log: logging.Logger | logging.LoggerAdapter[Any]
) -> RunEventWaiter | None:
    """The process-wide webhook waiter when ``webhooks`` is on and a Prefect server makes it work, else ``None``
    (the reason logged: the wait then polls as without webhooks)."""
    if not webhooks:
        return None
    check_interval("fallback_poll_seconds", fallback_poll_seconds)
    return webhook_waiter(log)


@dataclass
class RunWaitOutcome:
    """How the wait for one run of a fan-out ended.

    ``run`` is the run as last read (after the cancel, for one cancelled at the deadline); ``deadline`` says where
    it stood when the deadline passed; ``error`` is what stopped the wait otherwise; ``models`` its merged results.
    """

    run_id: int
    run: Run | None
    timed_out: bool = False
    deadline: str | None = None
    error: DbtCloudError | None = None
    models: list[ModelResult] = field(default_factory=list)


@task(name="wait-for-dbt-cloud-runs", cache_policy=NO_CACHE, timeout_seconds=wait_timeout_seconds(7200))
def wait_for_dbt_cloud_runs(
    credentials: DbtCloudCredentials,
    runs: dict[int, int],
    poll_interval_seconds: float = 30,
    max_wait_seconds: float = 7200,
    on_timeout: Literal["cancel", "leave"] = "cancel",
    adaptive_polling: bool = True,
    webhooks: bool = False,
    fallback_poll_seconds: float = DEFAULT_FALLBACK_POLL_SECONDS,
) -> list[RunWaitOutcome]:
    """Wait for many runs (run ID → job ID) in one task, on one event loop: no thread and no task run per run.

    Each job's history is read once; each finished run's results are read from every step that can build models.
    With ``webhooks``, every run sleeps on the one process-wide webhook waiter (one subscription for all) and
    polls every ``fallback_poll_seconds`` between events. Returns one outcome per run, in order; never raises for
    a run's outcome.
    """
    log = get_run_logger()
    waker = _webhook_waker(webhooks, fallback_poll_seconds, log)
    if waker is not None:
        log.info(
            "Waiting for %s run(s) on webhook events; polling every %g s as a safety net.",
            len(runs),
            fallback_poll_seconds,
        )

    async def main() -> list[RunWaitOutcome]:
        async with credentials.get_async_client() as client:
            histories: dict[int, list[float]] = {}
            for job_id in sorted(set(runs.values())):
                histories[job_id] = []
                if adaptive_polling and waker is None:
                    try:
                        with request_deadline(time.monotonic() + AFTER_WAIT_SECONDS):
                            histories[job_id] = await client.job_history(job_id)
                    except DbtCloudError as exc:
                        log.warning("Could not read job %s's history (%s); fixed polling.", job_id, exc)
            schedules: dict[int, PollSchedule] = {
                job_id: FixedInterval(fallback_poll_seconds)
                if waker is not None
                else make_schedule(history, poll_interval_seconds, adaptive=adaptive_polling)
                for job_id, history in histories.items()
            }
            waited = await await_runs(
                client,
                list(runs),
                schedules=lambda run_id: schedules[runs[run_id]],
                max_wait_seconds=max_wait_seconds,
                on_timeout=on_timeout,
                fetch_results=False,
                not_found_grace_seconds=client.retry.not_found_grace_seconds,
                log=log,
                job_ids=runs,
                waker=waker,
            )

            async def finish(outcome: WaitOutcome) -> RunWaitOutcome:
                timeout = outcome.timeout
                result = RunWaitOutcome(
                    outcome.run_id,
                    outcome.run,
                    timed_out=outcome.timed_out,
                    error=outcome.error,
                    deadline=(
                        (deadline_description(timeout) if timeout is not None else describe_run_at(outcome.run, 0))
                        if outcome.timed_out
                        else None
                    ),
                )
                if not outcome.timed_out and has_model_results(outcome.run):
                    result.models = await aread_model_results(client, outcome.run_id, outcome.run, log)
                return result

            return list(await asyncio.gather(*(finish(outcome) for outcome in waited)))

    try:
        return run_async(main())
    except TerminationSignal:
        if _prefect_cancellation_requested():
            with credentials.get_client() as client:
                _cancel_quietly(client, list(runs), log)
        raise


def _prefect_cancellation_requested() -> bool:
    """Whether this task's flow run, or a flow run above it, is being cancelled in Prefect (Cancelling or
    Cancelled): cancelling a deployed ETL flow run stops the process that runs its in-process subflows, whose own
    state is still Running."""
    flow_run_id = runtime_flow_run.get_id()
    if not flow_run_id:
        return False
    try:
        with get_client(sync_client=True) as prefect:
            return any(
                run.state is not None and (run.state.is_cancelling() or run.state.is_cancelled())
                for run, _ in flow_runs_upwards(prefect, flow_run_id)
            )
    except Exception:  # no API at hand: do not guess
        return False


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
def fetch_run_results(credentials: DbtCloudCredentials, run_id: int, run: Run | None = None) -> list[ModelResult]:
    """Per-node results (name, version, status, time, message) of every step of the run that can build models
    (``dbt run``, ``build``, ``seed``, ``snapshot``...; not ``deps``, ``test``, ``source freshness``, ``docs``,
    ``compile``), merged, a later step winning; [] if there are none. ``run`` (read with its steps) saves a read.
    """
    log = get_run_logger()
    with credentials.get_client() as client:
        return read_model_results(client, run_id, run, log)


def load_notification_block(reference: str | NotificationBlock) -> NotificationBlock:
    """A notification block given as an instance or as ``block-type-slug/name`` (``slack-webhook/data-alerts``)."""
    if isinstance(reference, NotificationBlock):
        return reference
    if "/" not in reference:
        raise ValueError(
            f"Alert block {reference!r} must be named with its type, like 'slack-webhook/{reference}' or "
            f"'custom-webhook/{reference}'."
        )
    block = Block.load(reference, _sync=True)  # type: ignore[call-arg]  # sync, also inside an async flow
    if not isinstance(block, NotificationBlock):
        raise ValueError(f"Block {reference!r} is not a notification block (it cannot send alerts).")
    return block


def check_alert_blocks(references: list[str] | None) -> None:
    """Load every alert block before anything is triggered: a misspelt name found only when a run fails would
    lose that alert. Raises ``ValueError`` naming each block that cannot be loaded and how to create it."""
    problems: list[str] = []
    for reference in references or []:
        try:
            load_notification_block(reference)
        except Exception as exc:
            problems.append(f"{reference!r}: {str(exc).rstrip('. ')}")
    if problems:
        raise ValueError(
            "Alert blocks that cannot be loaded: "
            + "; ".join(problems)
            + ". Nothing was triggered: save the block first (Prefect UI > Blocks, or "
            "SlackWebhook(url=...).save('name')), or fix the name."
        )


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
