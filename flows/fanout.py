"""``run_dbt_cloud_jobs``: trigger many dbt Cloud jobs at once and wait for all their runs on one event loop.

Per dbt run there is one trigger task run, plus one alert task run if it fails; one task checks every job's
own schedule, and all the waits share one task and one event loop (no thread per run), so the number of Prefect task runs per dbt run does not grow with the
run's duration. Every client of the account in the process shares one rate limiter, and a 429 slows them all.
The flow fails after every run has finished if any failed, naming each failed run.
"""

from __future__ import annotations

import time
from typing import Any

from prefect import get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.client.schemas.objects import FlowRun, State
from prefect.flows import Flow
from prefect.futures import PrefectFuture

from dbt_cloud_gate.alerts import check_alert_blocks
from dbt_cloud_gate.blocks.dbt_cloud import DbtCloudCredentials, resolve_credentials
from dbt_cloud_gate.cancellation import cancel_runs_of_flow_run, remember_for_cancellation
from dbt_cloud_gate.dbtcloud_api import run_url
from dbt_cloud_gate.errors import DbtCloudRunInvalid, DbtCloudRunsFailed, DbtCloudRunTimedOut
from dbt_cloud_gate.keys import cause_with_key, idempotency_key, run_tree_scope, runs_as_own_flow_run
from dbt_cloud_gate.models import DbtCloudJobRequest, DbtCloudRunResult
from dbt_cloud_gate.outcomes import alert_body, build_result, judge, summarize
from dbt_cloud_gate.publish import emit_run_event
from dbt_cloud_gate.settings import START, WAIT, StartSettings, WaitSettings
from dbt_cloud_gate.starting import prefect_api_transient
from dbt_cloud_gate.sync_flow import gate_flow
from dbt_cloud_gate.tasks.alerts import send_dbt_cloud_alert
from dbt_cloud_gate.tasks.start import check_dbt_cloud_job_schedules, trigger_dbt_cloud_job
from dbt_cloud_gate.tasks.wait import wait_for_dbt_cloud_runs
from dbt_cloud_gate.waiting import RunWaitOutcome, subscribe_before_trigger

__all__ = ["run_dbt_cloud_jobs"]

# A trigger task that the Prefect API failed around (not dbt Cloud) is submitted again, this many times in all,
# after 1, 2, 4... s.
PREFECT_API_ATTEMPTS = 4
PREFECT_API_BACKOFF_SECONDS = 1.0


def _cancel_hook(flow: Flow[..., Any], flow_run: FlowRun, state: State[Any]) -> None:
    jobs = (flow_run.parameters or {}).get("jobs") or []
    job_ids = [item if isinstance(item, int) else int(item.get("job_id", 0)) for item in jobs]
    cancel_runs_of_flow_run(flow, flow_run, [j for j in job_ids if j > 0])


@gate_flow(name="dbt-cloud-jobs", on_cancellation=[_cancel_hook])
def run_dbt_cloud_jobs(
    jobs: list[int | DbtCloudJobRequest],
    credentials: DbtCloudCredentials | str | None = None,
    *,
    wait: WaitSettings | None = None,
    start: StartSettings | None = None,
    alert_blocks: list[str] | None = None,
) -> list[DbtCloudRunResult]:
    """Trigger every job concurrently, wait for all runs, and return their results in the order given.

    Fails with ``DbtCloudRunsFailed`` after all runs finished if any did not succeed (each alerted).

    Args:
        jobs: The jobs to run: job IDs, or requests with a cause and trigger overrides each.
        credentials: A dbt Cloud Gate Credentials block (or prefect-dbt's DbtCloudCredentials) or its name; empty:
            DBT_CLOUD_CREDENTIALS_BLOCK or the DBT_CLOUD_* environment variables.
        wait: How to wait for each run (polling, deadline, webhooks: one event subscription for all runs); empty:
            the defaults.
        start: The jobs' own schedules (warn, fail, disable); every run is triggered (if_running='trigger'), and
            a rerun or run_id, which name one run, are refused here; empty: the defaults.
        alert_blocks: Notification blocks alerted when a run fails, as type-slug/name.
    """
    log = get_run_logger()
    if not jobs:
        raise ValueError("jobs is empty: give at least one dbt Cloud job ID.")
    wait, start = wait or WAIT, start or START
    if start.if_running != "trigger" or start.run_id is not None or start.retry_failed_run_id is not None:
        raise ValueError(
            "run_dbt_cloud_jobs triggers every job: start.if_running must be 'trigger', and start.run_id and "
            "start.retry_failed_run_id (one run each) belong to run_dbt_cloud_job."
        )
    check_alert_blocks(alert_blocks)
    requests = [item if isinstance(item, DbtCloudJobRequest) else DbtCloudJobRequest(job_id=item) for item in jobs]
    creds = resolve_credentials(credentials)
    tree = run_tree_scope()
    scope = tree.scope
    remember_for_cancellation(creds, scope)
    # Every job exists and its own schedule is dealt with before anything is triggered (a few requests for all).
    check_dbt_cloud_job_schedules(creds, [r.job_id for r in requests], start.native_schedule)
    wait = subscribe_before_trigger(wait, log)
    # On the run tree's first attempt no run can carry a key yet: the triggers skip their search for one.
    first_attempt = tree.first_attempt and runs_as_own_flow_run(run_dbt_cloud_jobs.fn)
    started, failures = _trigger_all(creds, requests, scope, first_attempt)
    log.info("Started %d dbt Cloud run(s); waiting for all on one event loop.", len(started))
    outcomes = wait_for_dbt_cloud_runs(creds, started, wait)
    results = _judge_all(creds, started, outcomes, wait, alert_blocks, failures)
    create_table_artifact(
        key="dbt-cloud-fan-out",
        table=[
            {"job": r.job_id, "run": r.run_id, "status": r.status, "finished_at": str(r.finished_at), "url": r.url}
            for r in results
        ]
        + [
            {"job": f["job_id"], "run": f["run_id"], "status": f["status"], "finished_at": "", "url": f["url"] or ""}
            for f in failures
        ],
        description=f"{len(results)} succeeded, {len(failures)} failed",
    )
    order = {run_id: index for index, run_id in enumerate(started)}
    results.sort(key=lambda r: order[r.run_id])
    if failures:
        named = "; ".join(
            f"job {f['job_id']}: run {f['run_id']} {f['status']}"
            + (f" ({f['url']})" if f["url"] else "")
            + (f" - {f['error']}" if f["error"] not in ("failed", "cancelled") else "")
            for f in failures
        )
        raise DbtCloudRunsFailed(
            f"{len(failures)} of {len(requests)} dbt Cloud run(s) did not succeed: {named}", failures, results
        )
    return results


def _trigger_all(
    creds: DbtCloudCredentials, requests: list[DbtCloudJobRequest], scope: str, first_attempt: bool
) -> tuple[dict[int, int], list[dict[str, Any]]]:
    """Trigger every request at once (one task run each); the runs started (run ID to job ID) and the failures.
    ``first_attempt``: the run tree's first, whose triggers need not search for their keys."""
    counts: dict[int, int] = {}
    futures, keys = [], []
    for request in requests:
        counts[request.job_id] = counts.get(request.job_id, 0) + 1
        # A job asked for several times gets one key per occurrence: each is its own run, none is doubled.
        key = idempotency_key(request.job_id, scope, counts[request.job_id])
        keys.append(key)
        futures.append(_submit(creds, request, key, first_attempt))
    failures: list[dict[str, Any]] = []
    started: dict[int, int] = {}
    for request, future, key in zip(requests, futures, keys, strict=True):
        try:
            started[_run_id(future, creds, request, key)] = request.job_id
        except Exception as exc:
            failures.append(
                {
                    "job_id": request.job_id,
                    "run_id": None,
                    "status": "not started",
                    "url": None,
                    "error": f"{type(exc).__name__}: {exc}",
                }
            )
    return started, failures


def _run_id(future: PrefectFuture[int], creds: DbtCloudCredentials, request: DbtCloudJobRequest, key: str) -> int:
    """The run ID of a trigger task; after a passing failure of the Prefect API around it (a task run not created,
    a concurrency slot not granted: 503s of a busy server), submitted again, up to PREFECT_API_ATTEMPTS times. An
    attempt again is no first attempt: it searches for its key first, so a run the failed one may have started is
    reused, never doubled."""
    log = get_run_logger()
    for attempt in range(1, PREFECT_API_ATTEMPTS + 1):
        try:
            return future.result()
        except Exception as exc:
            if attempt == PREFECT_API_ATTEMPTS or not prefect_api_transient(exc):
                raise
            delay = PREFECT_API_BACKOFF_SECONDS * 2 ** (attempt - 1)
            log.warning(
                "The trigger of job %s failed in the Prefect API (%s: %s); submitting it again in %g s.",
                request.job_id,
                type(exc).__name__,
                str(exc)[:200],
                delay,
            )
            time.sleep(delay)
            future = _submit(creds, request, key, first_attempt=False)
    raise AssertionError("unreachable")  # the loop returns or raises


def _submit(
    creds: DbtCloudCredentials, request: DbtCloudJobRequest, key: str, first_attempt: bool
) -> PrefectFuture[int]:
    """Submit the trigger task of ``request`` under ``key``."""
    cause = cause_with_key(request.cause, key)
    return trigger_dbt_cloud_job.submit(creds, request.job_id, cause, key, request.overrides, first_attempt)


def _judge_all(
    creds: DbtCloudCredentials,
    started: dict[int, int],
    outcomes: list[RunWaitOutcome],
    wait: WaitSettings,
    alert_blocks: list[str] | None,
    failures: list[dict[str, Any]],
) -> list[DbtCloudRunResult]:
    """Each run's verdict: the successes returned, every failure appended to ``failures``, published and alerted."""
    results: list[DbtCloudRunResult] = []
    token = creds.api_token.get_secret_value()
    for outcome in outcomes:
        job_id = started[outcome.run_id]
        run = outcome.run
        if run is None:  # never read, or an answer that cannot be trusted (a Success without finished_at...)
            reason = str(outcome.error) if outcome.error else "never read"
            url = run_url(creds.access_url, creds.account_id, outcome.run_id)
            failures.append(
                {"job_id": job_id, "run_id": outcome.run_id, "status": "Unknown", "url": url, "error": reason}
            )
            if alert_blocks:
                send_dbt_cloud_alert(
                    alert_blocks,
                    f"dbt Cloud job {job_id} failed",
                    f"dbt Cloud job {job_id}: run {outcome.run_id} cannot be used.\nRun: {url}\n{reason}",
                    secret=token,
                )
            continue
        verdict = judge(
            run,
            deadline=(outcome.deadline or "no terminal status before the deadline") if outcome.timed_out else None,
            left_running=wait.on_timeout == "leave",
        )
        kind = verdict.outcome
        if verdict.error is None:
            results.append(build_result(run, job_id, creds, outcome.models))
            emit_run_event(results[-1], kind)
            continue
        summary = summarize(run, job_id, creds, outcome.models)
        emit_run_event(summary, kind)
        error = verdict.detail if verdict.error in (DbtCloudRunTimedOut, DbtCloudRunInvalid) else kind
        failures.append(
            {"job_id": job_id, "run_id": run.id, "status": summary.status, "url": summary.url, "error": error}
        )
        if alert_blocks:
            send_dbt_cloud_alert(
                alert_blocks,
                f"dbt Cloud job {job_id} {kind}",
                alert_body(summary, kind, run, verdict.detail),
                secret=token,
            )
    return results
