"""``run_dbt_cloud_job``: trigger a dbt Cloud job, wait for its run, and branch on the result.

Success returns a :class:`DbtCloudRunResult` whose ``finished_at`` is the watermark for downstream steps.
Error, Cancelled or the deadline send the alerts and then fail the flow with :class:`DbtCloudRunFailed`,
:class:`DbtCloudRunCancelled` or :class:`DbtCloudRunTimedOut`: a parent flow calling it as a subflow halts
there unless it asks for the state (``return_state=True``).
"""

from __future__ import annotations

import time
from typing import Any

from prefect import get_run_logger

from dbt_cloud_gate.alerts import check_alert_blocks
from dbt_cloud_gate.blocks.dbt_cloud import DbtCloudCredentials, resolve_credentials
from dbt_cloud_gate.blocks.job import DbtCloudJob, JobParameters
from dbt_cloud_gate.cancellation import cancel_own_runs, remember_for_cancellation
from dbt_cloud_gate.dbtcloud_api import ModelResult, Run, run_url
from dbt_cloud_gate.dbtcloud_api.errors import DbtCloudResponseError, scrub
from dbt_cloud_gate.dbtcloud_api.wait import WaitTimedOut
from dbt_cloud_gate.errors import (
    DbtCloudRunFailed,
    DbtCloudRunInvalid,
)
from dbt_cloud_gate.keys import cause_with_key, idempotency_key, run_tree_scope, runs_as_own_flow_run
from dbt_cloud_gate.models import DbtCloudRunResult, DbtCloudRunSummary
from dbt_cloud_gate.outcomes import Verdict, alert_body, build_result, judge, summarize, where_it_failed
from dbt_cloud_gate.publish import publish_run
from dbt_cloud_gate.settings import START, WAIT, DbtCloudId, StartSettings, TriggerOverrides, WaitSettings
from dbt_cloud_gate.starting import StartedRun, warn_if_scheduled
from dbt_cloud_gate.sync_flow import flow_deadline, sync_callable_flow
from dbt_cloud_gate.tasks.alerts import send_dbt_cloud_alert
from dbt_cloud_gate.tasks.start import check_dbt_cloud_job_schedules, retry_dbt_cloud_run, start_dbt_cloud_run
from dbt_cloud_gate.tasks.wait import wait_for_dbt_cloud_run_and_results
from dbt_cloud_gate.waiting import deadline_description, subscribe_before_trigger

__all__ = ["run_dbt_cloud_job"]


# Async, so that it returns as soon as it is done (a sync flow waits up to 1 s for Prefect's heartbeat thread);
# callable from sync code all the same (see dbt_cloud_gate.sync_flow).
@sync_callable_flow(name="dbt-cloud-job", on_cancellation=[cancel_own_runs])
async def run_dbt_cloud_job(
    job_id: DbtCloudId | None = None,
    credentials: DbtCloudCredentials | str | None = None,
    *,
    job: DbtCloudJob | str | None = None,
    cause: str | None = None,
    trigger: TriggerOverrides | None = None,
    wait: WaitSettings | None = None,
    start: StartSettings | None = None,
    alert_blocks: list[str] | None = None,
) -> DbtCloudRunResult:
    """Trigger dbt Cloud job ``job_id``, wait for the run, and return its result, or alert and fail.

    A retry of this flow run, or of any flow above it, waits on the run already started (``dbt_cloud_gate.keys``).
    In an async caller, ``await`` it; elsewhere call it plainly.

    Args:
        job_id: The dbt Cloud job to trigger (or give a saved job block as job).
        credentials: A dbt Cloud Gate Credentials block (or prefect-dbt's DbtCloudCredentials) or its name; empty:
            the job block's, else DBT_CLOUD_CREDENTIALS_BLOCK or the DBT_CLOUD_ACCOUNT_ID, DBT_CLOUD_API_TOKEN (and
            DBT_CLOUD_ACCESS_URL) environment variables.
        job: A saved dbt Cloud Gate Job block (or its name): the job, its credentials, trigger overrides and wait
            settings, each used where this call leaves it out.
        cause: Why the run was started, shown in dbt Cloud (an idempotency key is appended).
        trigger: Overrides of the job's settings for this run (steps, git branch or commit, schema, threads...);
            empty: none.
        wait: How to wait: the longest gap between polls, adaptive polling, the deadline and what happens at it,
            webhooks and their safety-net poll; empty: the defaults.
        start: How to start: when a run is in flight (trigger, reuse, fail), the job's own schedule (warn, fail,
            disable), a rerun of a failed run, or a run started elsewhere to wait on; empty: the defaults.
        alert_blocks: Notification blocks alerted when the run fails, as type-slug/name
            (slack-webhook/data-team).
    """
    log = get_run_logger()
    given = JobParameters(job, job_id, credentials, trigger, wait)  # the job block supplies what is left out
    job_id, trigger, wait, start = given.job_id, given.trigger, given.wait, start or START
    # Everything else was validated as a type where it entered; these need Prefect's API.
    check_alert_blocks(alert_blocks)
    creds = resolve_credentials(given.credentials)
    token = creds.api_token.get_secret_value()

    tree = run_tree_scope()
    scope = tree.scope
    remember_for_cancellation(creds, scope)
    wait = subscribe_before_trigger(wait, log)
    if start.run_id is not None:  # started elsewhere: the wait reads it at once (and checks it is a run of job_id)
        log.info("Waiting on dbt Cloud run %s of job %s, started elsewhere; nothing triggered.", start.run_id, job_id)
        started = StartedRun(start.run_id, False, None, owned=False)
    else:
        # The search for a run carrying the key can be skipped only on the tree's first attempt, and only when
        # this body runs as its own flow run (called through .fn, it would share its caller's run and key).
        first_attempt = tree.first_attempt and runs_as_own_flow_run(run_dbt_cloud_job.fn)
        started = _start_run(creds, job_id, cause, trigger, start, scope, first_attempt)
    run_id = started.run_id
    if not started.owned and wait.on_timeout == "cancel":
        log.info("dbt Cloud run %s was started elsewhere: at the deadline it is left running, not cancelled.", run_id)
        wait = wait.leaving_at_deadline()
    wait = _within_flow_timeout(wait, log)
    try:
        run, models, deadline = _wait(creds, job_id, started, wait)
    except DbtCloudResponseError as exc:  # a Success without finished_at, another run's data: never a success
        invalid = Verdict("failed", DbtCloudRunInvalid, str(exc))
        return await _fail(creds, job_id, run_id, None, invalid, alert_blocks, token, wait=wait)
    if not started.schedule_checked:
        warn_if_scheduled(run, job_id, log)
    verdict = judge(run, deadline=deadline, left_running=wait.on_timeout == "leave")
    if verdict.error is not None:
        return await _fail(creds, job_id, run_id, run, verdict, alert_blocks, token, models, wait=wait)
    if run is None:  # pragma: no cover - judge() never calls an unread run a success
        raise RuntimeError("a run that was never read cannot be a success")
    result = build_result(run, job_id, creds, models)
    await publish_run(result, verdict.outcome, run, models_read=wait.model_results)
    log.info(
        "dbt Cloud run %s of job %s succeeded; finished_at=%s.",
        result.run_id,
        job_id,
        result.finished_at.isoformat(),
    )
    return result


async def _fail(
    creds: DbtCloudCredentials,
    job_id: int,
    run_id: int,
    run: Run | None,
    verdict: Verdict,
    alert_blocks: list[str] | None,
    token: str,
    models: list[ModelResult] | None = None,
    *,
    wait: WaitSettings = WAIT,
) -> DbtCloudRunResult:
    """Publish the failure (artifacts, event), send the alerts, and raise ``verdict.error``."""
    log = get_run_logger()
    if run is None:  # never read, or refused: report what is known
        summary = DbtCloudRunSummary(
            run_id=run_id,
            job_id=job_id,
            account_id=creds.account_id,
            status="Unknown",
            status_code=0,
            started_at=None,
            finished_at=None,
            duration_seconds=None,
            url=run_url(creds.access_url, creds.account_id, run_id),
            cause=None,
        )
    else:
        summary = summarize(run, job_id, creds, models or [])
    await publish_run(summary, verdict.outcome, run, models_read=wait.model_results)
    outcome = verdict.outcome.replace("-", " ")
    if verdict.outcome == "timed-out":
        message = f"dbt Cloud run {run_id} of job {job_id} {verdict.detail[0].lower()}{verdict.detail[1:]} "
        message += f"Status now {summary.status}: {summary.url}"
    elif verdict.error is DbtCloudRunInvalid:
        message = f"dbt Cloud run {run_id} of job {job_id} cannot be used: {verdict.detail} ({summary.url})"
    else:  # the state message, the exception and the log name where it failed, not only that it did
        where = where_it_failed(summary, run)
        at = f" at {where}" if where else ""
        message = f"dbt Cloud run {run_id} of job {job_id} {outcome} (status {summary.status}){at}: {summary.url}"
    message = scrub(message, token)  # step names come from dbt Cloud: a command may carry the token (in --vars)
    if alert_blocks:
        send_dbt_cloud_alert(
            alert_blocks,
            f"dbt Cloud job {job_id} {verdict.outcome}",
            alert_body(summary, verdict.outcome, run, verdict.detail),
            secret=token,
        )
    log.error(message)
    error = verdict.error or DbtCloudRunFailed
    raise error(message, run_id=summary.run_id, status=summary.status, url=summary.url, job_id=job_id)


def _wait(
    creds: DbtCloudCredentials, job_id: int, started: StartedRun, wait: WaitSettings
) -> tuple[Run | None, list[ModelResult], str | None]:
    """The wait task's run and models, or, past the deadline, where the run stood (``deadline``). The wait ends on
    its own deadline (every request of it inside ``request_deadline``): no Prefect timeout, which a task in this
    async flow's worker thread could not enforce."""
    try:
        finished = wait_for_dbt_cloud_run_and_results(
            creds,
            started.run_id,
            wait,
            job_id=job_id,
            history_seconds=started.history_seconds,
            just_triggered=started.triggered,
            with_job=not started.schedule_checked,
        )
        return finished.run, finished.models, None
    except WaitTimedOut as exc:
        return exc.run, [], deadline_description(exc)


def _within_flow_timeout(wait: WaitSettings, log: Any) -> WaitSettings:
    """``wait`` with ``max_wait_seconds`` shortened so that the wait (and the cancel at its end) is over before this
    flow's or its caller's ``timeout_seconds``: Prefect cannot interrupt the wait task inside this async flow."""
    deadline = flow_deadline()
    if deadline is None:
        return wait
    left = deadline - time.time()
    budget = max(1.0, left - min(10.0, 0.2 * max(left, 0.0)))  # room to cancel the run and report
    if budget >= wait.max_wait_seconds:
        return wait
    log.warning(
        "The wait is limited to %.0f s (max_wait_seconds %g) to end before the flow's timeout_seconds.",
        budget,
        wait.max_wait_seconds,
    )
    return wait.bounded_by(budget)


def _start_run(
    creds: DbtCloudCredentials,
    job_id: int,
    cause: str | None,
    trigger: TriggerOverrides,
    start: StartSettings,
    scope: str,
    first_attempt: bool,
) -> StartedRun:
    if start.retry_failed_run_id is not None:
        check_dbt_cloud_job_schedules(creds, job_id, start.native_schedule)
        # The wait reads the job's history itself (None), and polls at once: the retried run may be quick.
        return StartedRun(retry_dbt_cloud_run(creds, start.retry_failed_run_id, scope), False, None)
    key = idempotency_key(job_id, scope)
    return start_dbt_cloud_run(
        creds,
        job_id,
        cause_with_key(cause, key),
        key,
        trigger.body(),
        if_running=start.if_running,
        native_schedule=start.native_schedule,
        first_attempt=first_attempt,
        # The wait reads the job's history with its first poll (one request for both), not before the trigger.
        needs_history=False,
    )
