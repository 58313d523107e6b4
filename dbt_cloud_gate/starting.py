"""How a run is started, apart from the tasks that start it: the trigger with its idempotency key (search
first, then POST, never a blind repeat of a POST that may have started a run), the schedule policy, and which
failures another attempt can heal."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from prefect import Task
from prefect.client.schemas.objects import TaskRun
from prefect.exceptions import PrefectHTTPStatusError
from prefect.runtime import deployment as runtime_deployment
from prefect.runtime import flow_run as runtime_flow_run
from prefect.states import State

from dbt_cloud_gate.dbtcloud_api import (
    DbtCloudAmbiguousTriggerError,
    Run,
)
from dbt_cloud_gate.dbtcloud_api._config import MAX_PAGE_SIZE
from dbt_cloud_gate.dbtcloud_api.client import DbtCloudClient
from dbt_cloud_gate.dbtcloud_api.errors import (
    DbtCloudMissingFinishedAtError,
    DbtCloudNotFoundError,
    DbtCloudRateLimitError,
    DbtCloudResponseError,
    DbtCloudRunMismatchError,
    DbtCloudServerError,
    DbtCloudTransportError,
)
from dbt_cloud_gate.dbtcloud_api.models import (
    RECENT_RUNS_INCLUDES,
    RECENT_RUNS_LIMIT,
    Job,
    RecentRuns,
    RunJob,
    RunStatus,
)
from dbt_cloud_gate.errors import DbtCloudNativeScheduleOn
from dbt_cloud_gate.keys import cause_with_attempt

_LOG = logging.getLogger(__name__)


# Up to this many jobs are read one by one before a fan-out's triggers; more, through the account's job listing.
JOBS_READ_ONE_BY_ONE = 3


# How many times an ambiguous trigger is followed by a search and a new attempt before giving up.
MAX_TRIGGER_ATTEMPTS = 3


# Prefect's own retries of the trigger task (each attempt looks for the key first) and their delays.
TRIGGER_RETRIES = 2


TRIGGER_RETRY_DELAYS = [10.0, 30.0]


# Bounds one trigger attempt (a request deadline around it): a search, up to MAX_TRIGGER_ATTEMPTS POSTs, each
# retried by the client.
TRIGGER_TIMEOUT_SECONDS = 600.0


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


def _exception_of(state: State[Any]) -> Any:
    """What a failed task's state holds: the exception, when the engine put it there itself.

    Compat, Prefect 3.1 (the floor): there ``State.result`` is ``sync_compatible`` and, called while an event loop
    runs in the thread (a task of an async flow), returns a coroutine instead of the exception: read ``data``.
    """
    if isinstance(state.data, BaseException):
        return state.data
    return state.result(raise_on_failure=False)


def retry_if_transient(task: Task[..., Any], task_run: TaskRun, state: State[Any]) -> bool:
    """Prefect ``retry_condition_fn``: retry a failure another attempt can heal (5xx, 429, no answer, an
    ambiguous trigger, the attempt's own deadline); never a refused token, a bad request or a bad setting."""
    try:
        exc = _exception_of(state)
    except Exception:  # the result cannot be read: a crash, retrying is the safe side for an idempotent task
        return True
    # A run of another ID/job read back, or a Success without finished_at, was already retried by the client:
    # another attempt would read the same answer.
    if isinstance(exc, DbtCloudRunMismatchError | DbtCloudMissingFinishedAtError):
        return False
    return isinstance(exc, TRANSIENT_ERRORS)


# HTTP statuses of the Prefect API worth another try: its database busy (503), a proxy's 502/504, a rate limit.
PREFECT_API_TRANSIENT_STATUSES = frozenset({429, 502, 503, 504})


def prefect_api_transient(exc: BaseException) -> bool:
    """Whether ``exc`` is a passing failure of the Prefect API around a task (its run not created, a concurrency
    slot not granted), not of the task's own work: dbt Cloud's errors are our own types, never these."""
    if type(exc).__name__ == "ConcurrencySlotAcquisitionError":  # prefect.concurrency's, v1 and v2 alike
        return True
    if isinstance(exc, PrefectHTTPStatusError):
        return exc.response.status_code in PREFECT_API_TRANSIENT_STATUSES
    return isinstance(exc, httpx.TransportError)


def read_jobs(client: DbtCloudClient, job_ids: Sequence[int]) -> dict[int, Job]:
    """Each of ``job_ids`` read, in as few requests as the API allows: one by one when they are few, else pages of
    the account's active jobs (100 a page, by ID) until all are found, the last few read one by one when that is
    cheaper. Raises ``DbtCloudNotFoundError`` naming every ID that is no active job of the account, so that a
    fan-out with a mistyped ID triggers nothing."""
    wanted = sorted(set(job_ids))
    found: dict[int, Job] = {}
    if len(wanted) > JOBS_READ_ONE_BY_ONE:
        offset, sought = 0, set(wanted)
        while True:
            page = client.list_jobs(limit=MAX_PAGE_SIZE, offset=offset)
            offset += len(page.jobs)
            found.update((job.id, job) for job in page.jobs if job.id in sought)
            missing = [job_id for job_id in wanted if job_id not in found]
            pages_left = -(-(page.total_count - offset) // MAX_PAGE_SIZE)
            if not missing or not page.jobs or pages_left <= 0 or pages_left > len(missing):
                break
    missing = [job_id for job_id in wanted if job_id not in found]
    absent = []
    for job_id in missing:
        try:
            found[job_id] = client.get_job(job_id)
        except DbtCloudNotFoundError:
            absent.append(job_id)
    if absent:
        raise DbtCloudNotFoundError(
            f"dbt Cloud job(s) {', '.join(map(str, absent))} not found in account {client.account_id} (deleted, "
            "or not visible to this token): check the job IDs; nothing was triggered.",
            status_code=404,
        )
    return found


def apply_schedule_policy(
    client: DbtCloudClient,
    job_id: int,
    policy: str,
    log: logging.Logger | logging.LoggerAdapter[Any],
    recent: RecentRuns | None = None,
    job: Job | None = None,
) -> str | None:
    """Apply the policy to one job; returns a refusal message under "fail" when its schedule is on, else None.

    When ``recent`` (read with the job) says the schedule is off, no request is made; otherwise the job is read,
    unless given as ``job`` (the message names it, and "disable" writes the whole job back)."""
    if recent is not None and recent.schedule_enabled() is False:
        return None
    job = job or client.get_job(job_id)
    where = _schedule_on(job_id, job)
    if where is None:
        return None
    if policy == "fail":
        return where
    if policy == "warn":
        _warn_scheduled(where, log)
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


def warn_if_scheduled(run: Run | None, job_id: int, log: logging.Logger | logging.LoggerAdapter[Any]) -> None:
    """native_schedule="warn" applied after the wait, to the job its reads carried (the read before the trigger
    was skipped); a run never read, or read without its job, cannot say, and is logged as unchecked."""
    job = run.job if run is not None else None
    if job is None or job.schedule_enabled is None:
        log.info("dbt Cloud job %s's own schedule could not be checked: its run was not read with the job.", job_id)
        return
    where = _schedule_on(job_id, job)
    if where is not None:
        _warn_scheduled(where, log)


def _schedule_on(job_id: int, job: Job | RunJob) -> str | None:
    """What to say about ``job``'s own dbt Cloud schedule when it is on, else None."""
    if not job.schedule_enabled:
        return None
    return f"dbt Cloud job {job_id} ({job.name!r}) has its own dbt Cloud schedule on ({job.cron_humanized or 'cron'})"


def _warn_scheduled(where: str, log: logging.Logger | logging.LoggerAdapter[Any]) -> None:
    log.warning(
        "%s: it also runs outside this pipeline. Turn off 'Run on schedule' in the job's triggers in dbt "
        "Cloud, or run with native_schedule='disable'.",
        where,
    )


def check_schedule_policy(policy: str) -> None:
    if policy not in ("warn", "fail", "disable"):
        raise ValueError(f"native_schedule must be 'warn', 'fail' or 'disable', got {policy!r}.")


def check_start_settings(if_running: str, native_schedule: str) -> None:
    """Refuse an unknown ``if_running`` or ``native_schedule`` with a ``ValueError`` naming it."""
    check_schedule_policy(native_schedule)
    if if_running not in ("trigger", "reuse", "fail"):
        raise ValueError(f"if_running must be 'trigger', 'reuse' or 'fail', got {if_running!r}.")


def schedule_refusal(refused: list[str]) -> DbtCloudNativeScheduleOn:
    return DbtCloudNativeScheduleOn(
        f"{'; '.join(refused)}, so it also runs outside this pipeline. Turn off 'Run on schedule' in the job's "
        "triggers in dbt Cloud, or run with native_schedule='disable' to turn it off from here."
    )


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
    # Whether the schedule policy was applied before the trigger; False: the read of the job's runs was skipped
    # (see ``start_dbt_cloud_run``), and "warn" is applied to the job the wait's reads carry (``warn_if_scheduled``).
    schedule_checked: bool = True


def read_recent_runs(client: DbtCloudClient, job_id: int) -> RecentRuns:
    """The job's newest runs, with trigger and job: one request (see ``RecentRuns``)."""
    page = client.list_runs(
        job_definition_id=job_id, order_by="-id", limit=RECENT_RUNS_LIMIT, include_related=RECENT_RUNS_INCLUDES
    )
    return RecentRuns.from_page(job_id, page)
