"""``run_dbt_cloud_job``: trigger a dbt Cloud job, wait for its run, and branch on the result.

Success returns a :class:`DbtCloudRunResult` whose ``finished_at`` is the watermark for downstream steps.
Error, Cancelled or the deadline send the alerts and then fail the flow with :class:`DbtCloudRunFailed`,
:class:`DbtCloudRunCancelled` or :class:`DbtCloudRunTimedOut`: a parent flow calling it as a subflow halts
there unless it asks for the state (``return_state=True``).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Literal

from prefect import get_run_logger
from prefect.artifacts import acreate_link_artifact, acreate_markdown_artifact, acreate_table_artifact
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId
from prefect.client.schemas.objects import FlowRun, State
from prefect.events import emit_event
from prefect.flows import Flow
from prefect.logging.loggers import flow_run_logger
from prefect.runtime import flow_run as runtime_flow_run

from dbt_cloud_gate.blocks.dbt_cloud import DbtCloudCredentials, resolve_credentials
from dbt_cloud_gate.dbtcloud_api import DbtCloudConfigError, DbtCloudError, ModelResult, Run, RunStatus, run_url
from dbt_cloud_gate.dbtcloud_api.client import TRIGGER_OVERRIDES
from dbt_cloud_gate.dbtcloud_api.errors import DbtCloudResponseError
from dbt_cloud_gate.dbtcloud_api.polling import check_interval
from dbt_cloud_gate.dbtcloud_api.wait import WaitTimedOut, check_wait_settings
from dbt_cloud_gate.errors import (
    DbtCloudJobAlreadyRunning,
    DbtCloudNativeScheduleOn,
    DbtCloudRunCancelled,
    DbtCloudRunError,
    DbtCloudRunFailed,
    DbtCloudRunInvalid,
    DbtCloudRunTimedOut,
)
from dbt_cloud_gate.models import DbtCloudRunResult
from dbt_cloud_gate.sync_flow import flow_deadline, sync_callable_flow
from dbt_cloud_gate.tasks.dbt_cloud import (
    StartedRun,
    cancel_dbt_cloud_run,
    carries_scope_key,
    cause_with_key,
    check_alert_blocks,
    check_native_schedule,
    check_start_settings,
    deadline_description,
    idempotency_key,
    key_marker,
    key_scope,
    retry_dbt_cloud_run,
    send_alerts,
    start_dbt_cloud_run,
    wait_for_dbt_cloud_run_and_results,
    wait_timeout_seconds,
)
from dbt_cloud_gate.waiter import webhook_waiter

__all__ = [
    "DbtCloudJobAlreadyRunning",
    "DbtCloudNativeScheduleOn",
    "DbtCloudRunCancelled",
    "DbtCloudRunError",
    "DbtCloudRunFailed",
    "DbtCloudRunInvalid",
    "DbtCloudRunResult",
    "DbtCloudRunTimedOut",
    "run_dbt_cloud_job",
]

Outcome = Literal["succeeded", "failed", "cancelled", "timed-out"]


OUTCOMES: dict[RunStatus, tuple[Outcome, type[DbtCloudRunError] | None]] = {
    RunStatus.SUCCESS: ("succeeded", None),
    RunStatus.ERROR: ("failed", DbtCloudRunFailed),
    RunStatus.CANCELLED: ("cancelled", DbtCloudRunCancelled),
}
NO_WATERMARK = "dbt Cloud reported Success without finished_at: there is no watermark, so nothing downstream may use it"


@dataclass(frozen=True)
class Verdict:
    """What a run's end means for the flow: its outcome, the error to raise (``None`` on success), and why."""

    outcome: Outcome
    error: type[DbtCloudRunError] | None
    detail: str


def judge(run: Run | None, *, deadline: str | None = None, left_running: bool = False) -> Verdict:
    """The one mapping from how a wait ended to an outcome, for every flow: ``deadline`` (where the run stood when
    it passed) when the wait timed out; a Success without ``finished_at`` is never a success."""
    if deadline is not None:
        left = "left running" if left_running else "cancelled"
        return Verdict("timed-out", DbtCloudRunTimedOut, f"Timed out: {deadline}; the dbt Cloud run was {left}.")
    if run is None:
        return Verdict("failed", DbtCloudRunFailed, "The run was never read.")
    known = run.known_status
    if known is RunStatus.SUCCESS and run.finished_at is None:
        return Verdict("failed", DbtCloudRunInvalid, f"{NO_WATERMARK}.")
    outcome, error = OUTCOMES.get(known, ("failed", DbtCloudRunFailed)) if known else ("failed", DbtCloudRunFailed)
    return Verdict(outcome, error, run.status_message or "")


def build_result(
    run: Run,
    job_id: int,
    credentials: DbtCloudCredentials,
    models: list[ModelResult],
    *,
    require_watermark: bool = True,
) -> DbtCloudRunResult:
    """The result handed downstream. A Success without ``finished_at`` is refused (``DbtCloudRunInvalid``) unless
    ``require_watermark=False``, which only the failure report (alert, artifacts, event) asks for."""
    url = (
        run.href
        if run.href and run.href.startswith("http")
        else run_url(credentials.access_url, credentials.account_id, run.id, run.project_id)
    )
    if require_watermark and run.known_status is RunStatus.SUCCESS and run.finished_at is None:
        raise DbtCloudRunInvalid(
            f"dbt Cloud run {run.id} of job {job_id}: {NO_WATERMARK}.",
            run_id=run.id,
            status=run.status_label,
            url=url,
            job_id=job_id,
        )
    duration = (run.finished_at - run.started_at).total_seconds() if run.finished_at and run.started_at else None
    queued = (run.started_at - run.created_at).total_seconds() if run.started_at and run.created_at else None
    return DbtCloudRunResult(
        run_id=run.id,
        job_id=job_id,
        account_id=run.account_id,
        status=run.status_label,
        status_code=int(run.status),
        started_at=run.started_at,
        finished_at=run.finished_at,
        duration_seconds=duration,
        queued_seconds=queued,
        url=url,
        cause=run.trigger.cause if run.trigger else None,
        models=models,
    )


async def _publish(result: DbtCloudRunResult, outcome: Outcome, run: Run | None) -> None:
    """Artifacts (link, summary, models), created at once rather than one after the other, and the event that
    Automations route on (sent in the background)."""
    emit_run_event(result, outcome)
    key = f"dbt-cloud-job-{result.job_id}"
    link = acreate_link_artifact(
        key=f"{key}-run",
        link=result.url,
        link_text=f"dbt Cloud run {result.run_id}",
        description=f"dbt Cloud run {result.run_id} of job {result.job_id}: {result.status}",
    )
    failing = [m for m in result.models if m.status in ("error", "fail", "runtime error")]
    lines = [
        f"## dbt Cloud run [{result.run_id}]({result.url}) of job {result.job_id}: **{result.status}**",
        "",
        "| | |",
        "|---|---|",
        f"| outcome | {outcome} |",
        f"| started at | {result.started_at.isoformat() if result.started_at else '—'} |",
        f"| finished at (watermark) | {result.finished_at.isoformat() if result.finished_at else '—'} |",
        f"| run time | {f'{result.duration_seconds:.1f} s' if result.duration_seconds is not None else '—'} |",
        f"| queued | {f'{result.queued_seconds:.1f} s' if result.queued_seconds is not None else '—'} |",
        f"| models | {len(result.models)} ({len(failing)} failed) |",
        f"| cause | {result.cause or '—'} |",
    ]
    step = run.failed_step if run is not None else None
    if step is not None:
        lines += ["", f"### Failed step {step.index}: {step.name}", "", "```", *step.last_log_lines(15), "```"]
    summary = acreate_markdown_artifact(
        key=f"{key}-summary", markdown="\n".join(lines), description="dbt Cloud run summary"
    )
    models = acreate_table_artifact(
        key=f"{key}-models",
        table=[
            {
                "model": m.label,
                "type": m.resource_type or "",
                "status": m.status,
                "seconds": m.execution_time,
                "message": (m.message or "")[:200],
            }
            for m in result.models
        ]
        or [{"model": "(no run_results.json)", "type": "", "status": result.status, "seconds": None, "message": ""}],
        description=f"Models of dbt Cloud run {result.run_id}",
    )
    await asyncio.gather(link, summary, models)


def emit_run_event(result: DbtCloudRunResult, outcome: Outcome) -> None:
    """The event Automations route on: ``dbt-cloud.run.<outcome>`` on resource ``dbt-cloud.run.<run_id>``."""
    emit_event(
        event=f"dbt-cloud.run.{outcome}",
        resource={
            "prefect.resource.id": f"dbt-cloud.run.{result.run_id}",
            "prefect.resource.name": f"dbt Cloud run {result.run_id}",
            "dbt-cloud.run.status": result.status,
        },
        related=[
            {"prefect.resource.id": f"dbt-cloud.job.{result.job_id}", "prefect.resource.role": "job"},
            {"prefect.resource.id": f"dbt-cloud.account.{result.account_id}", "prefect.resource.role": "account"},
        ],
        payload={
            "run_id": result.run_id,
            "job_id": result.job_id,
            "status": result.status,
            "status_code": result.status_code,
            "finished_at": result.finished_at.isoformat() if result.finished_at else None,
            "url": result.url,
        },
    )


def alert_body(result: DbtCloudRunResult, outcome: Outcome, run: Run | None, detail: str) -> str:
    lines = [
        f"dbt Cloud job {result.job_id}: run {result.run_id} {outcome} (status {result.status}).",
        f"Run: {result.url}",
        detail,
    ]
    flow_run_name = runtime_flow_run.get_name()
    if flow_run_name:
        lines.append(f"Prefect flow run: {flow_run_name} ({runtime_flow_run.get_id()})")
    step = run.failed_step if run is not None else None
    if step is not None:
        lines += [f"Failed step {step.index}: {step.name}", "Last log lines:", *step.last_log_lines(10)]
    failing = [m for m in result.models if m.status in ("error", "fail", "runtime error")]
    if failing:
        lines.append("Failing models: " + ", ".join(f"{m.label} ({m.status})" for m in failing))
    return "\n".join(lines)


# What a flow run needs to cancel its dbt Cloud runs, kept in this process: the stored parameters hold a block
# instance's token masked, so the on_cancellation hook reads it here first (bounded: the newest flow runs only).
_CANCEL_CONTEXT: OrderedDict[str, tuple[DbtCloudCredentials, str]] = OrderedDict()
_CANCEL_CONTEXT_LOCK = threading.Lock()
_CANCEL_CONTEXT_SIZE = 1024


def remember_for_cancellation(credentials: DbtCloudCredentials, scope: str) -> None:
    """Keep the resolved credentials and the key scope of the current flow run for its cancellation hook."""
    flow_run_id = runtime_flow_run.get_id()
    if not flow_run_id:
        return
    with _CANCEL_CONTEXT_LOCK:
        _CANCEL_CONTEXT[str(flow_run_id)] = (credentials, scope)
        _CANCEL_CONTEXT.move_to_end(str(flow_run_id))
        while len(_CANCEL_CONTEXT) > _CANCEL_CONTEXT_SIZE:
            _CANCEL_CONTEXT.popitem(last=False)


def _is_masked(token: object) -> bool:
    return isinstance(token, str) and bool(token) and set(token) == {"*"}


def credentials_of_flow_run(flow_run: FlowRun) -> DbtCloudCredentials:
    """The credentials a flow run used, however they were passed: kept in this process, a saved block (by its
    document ID or name, also when given as an instance whose stored token is masked), or the environment."""
    with _CANCEL_CONTEXT_LOCK:
        kept = _CANCEL_CONTEXT.get(str(flow_run.id))
    if kept is not None:
        return kept[0]
    reference = (flow_run.parameters or {}).get("credentials")
    if not isinstance(reference, dict):
        return resolve_credentials(reference)
    if not _is_masked(reference.get("api_token")):
        return DbtCloudCredentials.model_validate(reference)
    document_id = reference.get("_block_document_id")
    name = reference.get("_block_document_name")
    if document_id:
        loaded = DbtCloudCredentials.load_from_ref(str(document_id), _sync=True)  # type: ignore[call-arg]
        if isinstance(loaded, DbtCloudCredentials):
            return loaded
    if name:
        return resolve_credentials(str(name))
    raise DbtCloudConfigError(
        "The flow run was given an unsaved DbtCloudCredentials block and runs in another process: its stored "
        "parameters hold the token masked. Save the block and pass it, or its name, so a cancellation can reach "
        "the dbt Cloud run."
    )


def cancel_runs_of_flow_run(flow: Flow[..., Any], flow_run: FlowRun, job_ids: list[int]) -> None:
    """Cancel the unfinished dbt Cloud runs a Prefect flow run started (found by the key in their cause)."""
    log = flow_run_logger(flow_run, flow)
    try:
        with _CANCEL_CONTEXT_LOCK:
            kept = _CANCEL_CONTEXT.get(str(flow_run.id))
        scope = kept[1] if kept is not None else key_scope(flow_run.id)
        creds = credentials_of_flow_run(flow_run)
        with creds.get_client() as client:
            for job_id in sorted(set(job_ids)):
                for run in client.find_runs_by_cause(job_id, key_marker(job_id, scope), max_runs=100):
                    cause = run.trigger.cause if run.trigger else None
                    if carries_scope_key(cause, job_id, scope) and not run.is_terminal:
                        client.cancel_run(run.id)
                        log.warning("Prefect flow run cancelled: cancelled dbt Cloud run %s of job %s.", run.id, job_id)
    except Exception as exc:  # a hook must not raise; say why the dbt Cloud run may still be running
        log.error("Prefect flow run cancelled, but the dbt Cloud runs could not be cancelled: %s", exc)


def cancel_runs_below(flow: Flow[..., Any], flow_run: FlowRun, state: State[Any]) -> None:
    """An ``on_cancellation`` hook for flows that call ``run_dbt_cloud_job`` as a subflow (the ETL flows):
    cancelling the Prefect flow run cancels the dbt Cloud runs its subflows started. The process running an
    in-process subflow is stopped with its parent, so the subflow's own hook may never run."""
    log = flow_run_logger(flow_run, flow)
    try:
        with get_client(sync_client=True) as prefect:
            pending, seen = [flow_run.id], 0
            while pending and seen < 1000:  # bounded: a run tree, not a graph
                parent = pending.pop()
                children = prefect.read_flow_runs(
                    flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent]))
                )
                seen += len(children)
                for child in children:
                    job_id = (child.parameters or {}).get("job_id")
                    if isinstance(job_id, int) and child.state is not None and not child.state.is_final():
                        cancel_runs_of_flow_run(flow, child, [job_id])
                    pending.append(child.id)
    except Exception as exc:  # a hook must not raise; say why dbt Cloud runs may still be running
        log.error("Prefect flow run cancelled, but its dbt Cloud runs could not be looked up: %s", exc)


def _cancel_on_prefect_cancellation(flow: Flow[..., Any], flow_run: FlowRun, state: State[Any]) -> None:
    """Cancelling the Prefect flow run cancels the dbt Cloud run it started."""
    job_id = (flow_run.parameters or {}).get("job_id")
    if isinstance(job_id, int):
        cancel_runs_of_flow_run(flow, flow_run, [job_id])


# Async, so that it returns as soon as it is done (a sync flow waits up to 1 s for Prefect's heartbeat thread);
# callable from sync code all the same (see dbt_cloud_gate.sync_flow).
@sync_callable_flow(name="run-dbt-cloud-job", on_cancellation=[_cancel_on_prefect_cancellation])
async def run_dbt_cloud_job(
    job_id: int,
    credentials: DbtCloudCredentials | str | None = None,
    *,
    cause: str | None = None,
    steps_override: list[str] | None = None,
    git_sha: str | None = None,
    git_branch: str | None = None,
    schema_override: str | None = None,
    dbt_version_override: str | None = None,
    threads_override: int | None = None,
    target_name_override: str | None = None,
    generate_docs_override: bool | None = None,
    timeout_seconds_override: int | None = None,
    azure_pull_request_id: int | None = None,
    github_pull_request_id: int | None = None,
    gitlab_merge_request_id: int | None = None,
    non_native_pull_request_id: int | None = None,
    poll_interval_seconds: float = 30,
    adaptive_polling: bool = True,
    max_wait_seconds: float = 7200,
    on_timeout: Literal["cancel", "leave"] = "cancel",
    if_running: Literal["trigger", "reuse", "fail"] = "trigger",
    retry_failed_run_id: int | None = None,
    native_schedule: Literal["warn", "fail", "disable"] = "warn",
    alert_blocks: list[str] | None = None,
    webhooks: bool = False,
    fallback_poll_seconds: float = 120,
    run_id: int | None = None,
) -> DbtCloudRunResult:
    """Trigger dbt Cloud job ``job_id``, wait for the run, and return its result, or alert and fail.

    The run is tied to this place in the Prefect run tree (see ``tasks.dbt_cloud.key_scope``): a retry of this flow
    run, or of any flow above it, waits on the run already started instead of starting another. The wait task's
    Prefect timeout is a backstop ``max_wait_seconds`` + 120 s; the trigger task retries transient failures.

    Args:
        job_id: The dbt Cloud job to trigger.
        credentials: A dbt Cloud Gate Credentials block or its name; empty: DBT_CLOUD_CREDENTIALS_BLOCK or the
            DBT_CLOUD_ACCOUNT_ID, DBT_CLOUD_API_TOKEN (and DBT_CLOUD_ACCESS_URL) environment variables.
        cause: Why the run was started, shown in dbt Cloud (an idempotency key is appended).
        steps_override: dbt commands to run instead of the job's steps, e.g. ["dbt build --select orders+"].
        git_sha: Run the project at this commit.
        git_branch: Run the project from this branch.
        schema_override: Build into this schema instead of the job's.
        dbt_version_override: Run with this dbt version.
        threads_override: Run with this many threads.
        target_name_override: The dbt target name for this run.
        generate_docs_override: Generate docs in this run (true) or not (false).
        timeout_seconds_override: dbt Cloud's own time limit for this run, in seconds.
        azure_pull_request_id: The Azure DevOps pull request this run is for (CI jobs).
        github_pull_request_id: The GitHub pull request this run is for (CI jobs).
        gitlab_merge_request_id: The GitLab merge request this run is for (CI jobs).
        non_native_pull_request_id: The pull request of another git provider this run is for (CI jobs).
        poll_interval_seconds: The longest gap between two polls of the run, in seconds (so an early Error or a cancel
            is seen at most this late); with adaptive polling, polls come every 8.5 s only where the run is likely to
            end.
        adaptive_polling: Poll around the durations of the job's recent successful runs (fewer calls at the
            same median lag); without history, every poll_interval_seconds.
        max_wait_seconds: Give up after this long: alert, fail, and cancel the run unless on_timeout is leave.
        on_timeout: At the deadline, cancel the dbt Cloud run, or leave it running.
        if_running: When the job already has a run in flight: trigger (dbt Cloud queues a new one), reuse (wait on
            that run), or fail.
        retry_failed_run_id: Rerun this failed run from its point of failure instead of starting a new run.
        native_schedule: When the job's own dbt Cloud schedule is on (it would run the job a second time): warn,
            fail, or disable it through the API.
        alert_blocks: Notification blocks alerted when the run fails, as type-slug/name
            (slack-webhook/data-team).
        webhooks: End the wait on the run's dbt Cloud webhook event (seen within about a second) instead of
            polling for it; needs a Prefect server and the webhook receiver (see the README). Without a
            server it polls as usual, and says so in the log.
        fallback_poll_seconds: With webhooks, also poll the run this often: the safety net for a cancelled run
            (dbt Cloud sends no webhook for it, so a cancel is seen at most this late), a lost delivery or a
            receiver that is down.
        run_id: Wait on this run of job_id, started elsewhere (dbt Cloud's scheduler, CI, an event trigger),
            instead of starting one; nothing is triggered.
    """
    log = get_run_logger()
    if isinstance(job_id, bool) or not 0 < job_id < 2**63:
        raise ValueError(f"job_id must be a positive dbt Cloud job ID, got {job_id!r}.")
    # Before anything is triggered: NaN, infinite, zero or negative settings, or an unknown on_timeout.
    check_wait_settings(max_wait_seconds, poll_interval_seconds, on_timeout)
    check_interval("fallback_poll_seconds", fallback_poll_seconds)
    check_alert_blocks(alert_blocks)
    creds = resolve_credentials(credentials)
    token = creds.api_token.get_secret_value()
    overrides = {
        name: value
        for name, value in {
            "steps_override": steps_override,
            "git_sha": git_sha,
            "git_branch": git_branch,
            "schema_override": schema_override,
            "dbt_version_override": dbt_version_override,
            "threads_override": threads_override,
            "target_name_override": target_name_override,
            "generate_docs_override": generate_docs_override,
            "timeout_seconds_override": timeout_seconds_override,
            "azure_pull_request_id": azure_pull_request_id,
            "github_pull_request_id": github_pull_request_id,
            "gitlab_merge_request_id": gitlab_merge_request_id,
            "non_native_pull_request_id": non_native_pull_request_id,
        }.items()
        if value is not None
    }
    unknown = set(overrides) - set(TRIGGER_OVERRIDES)
    if unknown:  # pragma: no cover - the flow's parameters and the client's list must agree
        raise RuntimeError(f"trigger overrides {sorted(unknown)} are not known to the client")

    check_start_settings(if_running, native_schedule)
    if run_id is not None and (isinstance(run_id, bool) or not 0 < run_id < 2**63 or retry_failed_run_id):
        raise ValueError(f"run_id must be a positive dbt Cloud run ID, without retry_failed_run_id; got {run_id!r}.")

    scope = key_scope()
    remember_for_cancellation(creds, scope)
    # Subscribed before the trigger, so that the run's event cannot pass unseen; the wait task reuses it.
    webhooks = webhooks and webhook_waiter(log) is not None
    if run_id is not None:  # started elsewhere: the wait reads it at once (and checks it is a run of job_id)
        log.info("Waiting on dbt Cloud run %s of job %s, started elsewhere; nothing triggered.", run_id, job_id)
        started = StartedRun(run_id, False, None, owned=False)
    else:
        started = _start_run(creds, job_id, cause, overrides, if_running, native_schedule, retry_failed_run_id, scope)
    run_id = started.run_id
    if not started.owned and on_timeout == "cancel":
        log.info("dbt Cloud run %s was started elsewhere: at the deadline it is left running, not cancelled.", run_id)
        on_timeout = "leave"
    max_wait_seconds = _within_flow_timeout(max_wait_seconds, log)
    run: Run | None
    deadline: str | None = None
    models: list[ModelResult] = []
    try:
        finished = wait_for_dbt_cloud_run_and_results.with_options(
            timeout_seconds=wait_timeout_seconds(max_wait_seconds)
        )(
            creds,
            run_id,
            poll_interval_seconds=poll_interval_seconds,
            max_wait_seconds=max_wait_seconds,
            on_timeout=on_timeout,
            job_id=job_id,
            adaptive_polling=adaptive_polling,
            history_seconds=started.history_seconds,
            just_triggered=started.triggered,
            webhooks=webhooks,
            fallback_poll_seconds=fallback_poll_seconds,
        )
        run, models = finished.run, finished.models
    except WaitTimedOut as exc:
        run, deadline = exc.run, deadline_description(exc)
    except TimeoutError:  # the task's own backstop: the wait hung past its deadline
        run, deadline = None, f"the wait did not end within its {wait_timeout_seconds(max_wait_seconds):g} s backstop"
        if on_timeout == "cancel":
            try:
                run = cancel_dbt_cloud_run(creds, run_id)
            except DbtCloudError as cancel_error:
                log.error("Cancelling dbt Cloud run %s after the backstop failed: %s", run_id, cancel_error)
    except DbtCloudResponseError as exc:  # a Success without finished_at, another run's data: never a success
        invalid = Verdict("failed", DbtCloudRunInvalid, str(exc))
        return await _fail(creds, job_id, run_id, None, invalid, alert_blocks, token)

    verdict = judge(run, deadline=deadline, left_running=on_timeout == "leave")
    if verdict.error is not None:
        return await _fail(creds, job_id, run_id, run, verdict, alert_blocks, token, models)
    if run is None:  # pragma: no cover - judge() never calls an unread run a success
        raise RuntimeError("a run that was never read cannot be a success")
    result = build_result(run, job_id, creds, models)
    await _publish(result, verdict.outcome, run)
    log.info(
        "dbt Cloud run %s of job %s succeeded; finished_at=%s.",
        result.run_id,
        job_id,
        result.finished_at.isoformat() if result.finished_at else None,
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
) -> DbtCloudRunResult:
    """Publish the failure (artifacts, event), send the alerts, and raise ``verdict.error``."""
    log = get_run_logger()
    if run is None:  # never read, or refused: report what is known
        result = DbtCloudRunResult(
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
        result = build_result(run, job_id, creds, models or [], require_watermark=False)
    await _publish(result, verdict.outcome, run)
    outcome = verdict.outcome.replace("-", " ")
    if verdict.outcome == "timed-out":
        message = f"dbt Cloud run {run_id} of job {job_id} {verdict.detail[0].lower()}{verdict.detail[1:]} "
        message += f"Status now {result.status}: {result.url}"
    elif verdict.error is DbtCloudRunInvalid:
        message = f"dbt Cloud run {run_id} of job {job_id} cannot be used: {verdict.detail} ({result.url})"
    else:
        message = f"dbt Cloud run {run_id} of job {job_id} {outcome} (status {result.status}): {result.url}"
    if alert_blocks:
        send_alerts(
            alert_blocks,
            f"dbt Cloud job {job_id} {verdict.outcome}",
            alert_body(result, verdict.outcome, run, verdict.detail),
            secret=token,
        )
    log.error(message)
    error = verdict.error or DbtCloudRunFailed
    raise error(message, run_id=result.run_id, status=result.status, url=result.url, job_id=job_id)


def _within_flow_timeout(max_wait_seconds: float, log: Any) -> float:
    """``max_wait_seconds``, shortened so that the wait (and the cancel at its end) is over before this flow's or
    its caller's ``timeout_seconds``: Prefect cannot interrupt the wait task inside this async flow."""
    deadline = flow_deadline()
    if deadline is None:
        return max_wait_seconds
    left = deadline - time.time()
    budget = max(1.0, left - min(10.0, 0.2 * max(left, 0.0)))  # room to cancel the run and report
    if budget >= max_wait_seconds:
        return max_wait_seconds
    log.warning(
        "The wait is limited to %.0f s (max_wait_seconds %g) to end before the flow's timeout_seconds.",
        budget,
        max_wait_seconds,
    )
    return budget


def _start_run(
    creds: DbtCloudCredentials,
    job_id: int,
    cause: str | None,
    overrides: dict[str, Any],
    if_running: Literal["trigger", "reuse", "fail"],
    native_schedule: Literal["warn", "fail", "disable"],
    retry_failed_run_id: int | None,
    scope: str,
) -> StartedRun:
    if retry_failed_run_id is not None:
        check_native_schedule(creds, job_id, native_schedule)
        # The wait reads the job's history itself (None), and polls at once: the retried run may be quick.
        return StartedRun(retry_dbt_cloud_run(creds, retry_failed_run_id, scope), False, None)
    key = idempotency_key(job_id, scope)
    return start_dbt_cloud_run(
        creds,
        job_id,
        cause_with_key(cause, key),
        key,
        overrides,
        if_running=if_running,
        native_schedule=native_schedule,
    )
