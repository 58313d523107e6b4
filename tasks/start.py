"""Prefect tasks that start dbt Cloud runs: check the jobs' own schedules, trigger (with the idempotency key), the
one read and trigger of ``run_dbt_cloud_job``, and the rerun of a failed run from its point of failure.

Clients are built inside each task from the credentials block (a client is not a hashable task input). The
start and trigger tasks carry Prefect's own retries (``start_dbt_cloud_run.with_options(retries=5)``); each attempt
looks for the run carrying its key before starting one, so no retry, of the task or of any flow above it, starts
two. Each attempt ends by its own deadline (TRIGGER_TIMEOUT_SECONDS, every request and retry sleep inside it), not
by a Prefect ``timeout_seconds``, which cannot interrupt a sync task in a worker thread (an async flow's tasks) and
only warns there."""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any, Literal

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import task_run as runtime_task_run

from dbt_cloud_gate.blocks.dbt_cloud import DbtCloudCredentials
from dbt_cloud_gate.dbtcloud_api import request_deadline
from dbt_cloud_gate.dbtcloud_api.models import (
    RECENT_RUNS_LIMIT,
)
from dbt_cloud_gate.errors import DbtCloudJobAlreadyRunning
from dbt_cloud_gate.starting import (
    FAILED_STATUSES,
    TRIGGER_RETRIES,
    TRIGGER_RETRY_DELAYS,
    TRIGGER_TIMEOUT_SECONDS,
    StartedRun,
    apply_schedule_policy,
    check_schedule_policy,
    check_start_settings,
    read_jobs,
    read_recent_runs,
    retry_if_transient,
    schedule_refusal,
    trigger_with_key,
)


@task(name="check-dbt-cloud-job-schedules", cache_policy=NO_CACHE)
def check_dbt_cloud_job_schedules(
    credentials: DbtCloudCredentials, job_ids: int | Sequence[int], policy: Literal["warn", "fail", "disable"] = "warn"
) -> None:
    """Check that every job exists and apply the policy to each whose own dbt Cloud schedule is on (one task run
    for all the jobs; the jobs read in as few requests as the API allows: ``starting.read_jobs``).

    The pipeline owns the schedule: a job left scheduled in dbt Cloud runs twice. Under "fail" it refuses before
    anything is triggered, naming every such job; a job ID that is no job of the account is refused too.
    """
    check_schedule_policy(policy)
    log = get_run_logger()
    ids = [job_ids] if isinstance(job_ids, int) else sorted(set(job_ids))
    with credentials.get_client() as client:
        jobs = read_jobs(client, ids)
        refused = [
            message
            for job_id in ids
            if (message := apply_schedule_policy(client, job_id, policy, log, job=jobs[job_id]))
        ]
    if refused:
        raise schedule_refusal(refused)


# The options of both tasks that may start a run. No cached result: whether a run carrying the key can be reused
# depends on how that run ended, which only the search by key can tell (every attempt searches first anyway).
# Retries only follow a failure another attempt can heal, each attempt bounded.
_STARTS_A_RUN: dict[str, Any] = {
    "cache_policy": NO_CACHE,
    "retries": TRIGGER_RETRIES,
    "retry_delay_seconds": TRIGGER_RETRY_DELAYS,
    "retry_condition_fn": retry_if_transient,
}


def _attempt_deadline() -> AbstractContextManager[float | None]:
    """Every dbt Cloud call of this attempt ends within TRIGGER_TIMEOUT_SECONDS (a POST still unanswered then is
    ambiguous: the next attempt searches for its key before any new POST)."""
    return request_deadline(time.monotonic() + TRIGGER_TIMEOUT_SECONDS)


@task(name="trigger-dbt-cloud-job", **_STARTS_A_RUN)
def trigger_dbt_cloud_job(
    credentials: DbtCloudCredentials,
    job_id: int,
    cause: str,
    key: str,
    overrides: dict[str, Any] | None = None,
    first_attempt: bool = False,
) -> int:
    """Start a run of ``job_id`` and return its ID; never starts two runs for one ``key``.

    Every attempt (Prefect retry of this task, rerun after a retry of any flow above it) first looks for a run of
    the job whose cause carries ``key``, and reuses it; after an ambiguous failure (the request may have created a
    run) it looks again before any new attempt. Only the first attempt of a run tree's first attempt
    (``first_attempt``, proved by ``keys.run_tree_scope``), where no run can carry the key yet, triggers without
    that search. Retries (default 2, after 10 s then 30 s) only follow a failure another attempt can heal; each
    attempt ends within TRIGGER_TIMEOUT_SECONDS (600).
    """
    log = get_run_logger()
    with _attempt_deadline(), credentials.get_client() as client:
        # Count 1: this task's first attempt (a .fn call outside a task run counts 0, and always searches).
        if first_attempt and runtime_task_run.get_run_count() == 1:
            return trigger_with_key(client, job_id, cause, key, overrides, [], log)[0]
        found = client.find_runs_by_cause(job_id, key, max_runs=RECENT_RUNS_LIMIT)
        return trigger_with_key(client, job_id, cause, key, overrides, found, log)[0]


@task(name="start-dbt-cloud-run", **_STARTS_A_RUN)
def start_dbt_cloud_run(
    credentials: DbtCloudCredentials,
    job_id: int,
    cause: str,
    key: str,
    overrides: dict[str, Any] | None = None,
    if_running: Literal["trigger", "reuse", "fail"] = "trigger",
    native_schedule: Literal["warn", "fail", "disable"] = "warn",
    first_attempt: bool = False,
    needs_history: bool = True,
) -> StartedRun:
    """Everything before the wait, from ONE read of the job's newest runs (with trigger and job): the schedule
    policy (the job is read only when its own schedule is on), the run carrying ``key`` (reused unless it
    failed), the ``if_running`` policy, then the trigger; and the job's run times for the poll schedule.

    A run carrying ``key`` wins over ``if_running``: a retry of this flow waits on its own run, even under "fail".
    Retries and timeout as :func:`trigger_dbt_cloud_job`; a refusal ("fail" policies) is never retried.

    That read is skipped when it cannot find anything and nothing else needs it: the caller's run tree proved
    ``first_attempt`` (``keys.run_tree_scope``), this is the task's own first attempt, ``if_running`` is
    "trigger", ``native_schedule`` is "warn" (its warning then comes from the wait's reads, which carry the job:
    ``StartedRun.schedule_checked`` is False), and the wait needs no history from it (``needs_history`` False: the
    flows' wait reads the history with its first poll, ``waiting.first_poll_with_history``).
    """
    check_start_settings(if_running, native_schedule)
    log = get_run_logger()
    with _attempt_deadline(), credentials.get_client() as client:
        # A retry of this task may follow a POST that started a run: only its first attempt may skip the search.
        first = first_attempt and runtime_task_run.get_run_count() <= 1
        if first and not needs_history and if_running == "trigger" and native_schedule == "warn":
            log.info("First attempt of this flow run tree: no run carries key %s yet; triggering, no search.", key)
            run_id, triggered = trigger_with_key(client, job_id, cause, key, overrides, [], log)
            return StartedRun(run_id, triggered, None, schedule_checked=False)
        recent = read_recent_runs(client, job_id)
        refused = apply_schedule_policy(client, job_id, native_schedule, log, recent)
        if refused:
            raise schedule_refusal([refused])
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
