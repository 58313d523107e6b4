"""``run_dbt_cloud_job``: trigger a dbt Cloud job, wait for its run, and branch on the result.

Success returns a :class:`DbtCloudRunResult` whose ``finished_at`` is the watermark for downstream steps.
Error, Cancelled or the deadline send the alerts and then fail the flow with :class:`DbtCloudRunFailed`,
:class:`DbtCloudRunCancelled` or :class:`DbtCloudRunTimedOut`: a parent flow calling it as a subflow halts
there unless it asks for the state (``return_state=True``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from prefect import flow, get_run_logger
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.client.schemas.objects import FlowRun, State
from prefect.events import emit_event
from prefect.flows import Flow
from prefect.logging.loggers import flow_run_logger
from prefect.runtime import flow_run as runtime_flow_run
from pydantic import BaseModel, Field

from blocks.dbt_cloud import DbtCloudCredentials, resolve_credentials
from dbtcloud_api import DbtCloudError, ModelResult, Run, RunStatus, run_url
from dbtcloud_api.client import TRIGGER_OVERRIDES
from dbtcloud_api.wait import WaitTimedOut
from tasks.dbt_cloud import (
    DbtCloudJobAlreadyRunning,
    DbtCloudNativeScheduleOn,
    cause_with_key,
    check_native_schedule,
    fetch_run_results,
    find_run_in_flight,
    idempotency_key,
    retry_dbt_cloud_run,
    send_alerts,
    trigger_dbt_cloud_job,
    wait_for_dbt_cloud_run,
)

__all__ = [
    "DbtCloudJobAlreadyRunning",
    "DbtCloudNativeScheduleOn",
    "DbtCloudRunCancelled",
    "DbtCloudRunError",
    "DbtCloudRunFailed",
    "DbtCloudRunResult",
    "DbtCloudRunTimedOut",
    "run_dbt_cloud_job",
]

Outcome = Literal["succeeded", "failed", "cancelled", "timed-out"]


class DbtCloudRunError(Exception):
    """A dbt Cloud run did not succeed. ``run_id``, ``status`` and ``url`` say which run and how it ended."""

    def __init__(self, message: str, *, run_id: int, status: str, url: str, job_id: int | None = None) -> None:
        super().__init__(message)
        self.run_id = run_id
        self.status = status
        self.url = url
        self.job_id = job_id

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _rebuild_run_error,
            (type(self), self.args[0], self.run_id, self.status, self.url, self.job_id),
        )


def _rebuild_run_error(
    cls: type[DbtCloudRunError], message: str, run_id: int, status: str, url: str, job_id: int | None
) -> DbtCloudRunError:
    return cls(message, run_id=run_id, status=status, url=url, job_id=job_id)


class DbtCloudRunFailed(DbtCloudRunError):
    """The run ended in Error."""


class DbtCloudRunCancelled(DbtCloudRunError):
    """The run was cancelled (in dbt Cloud, or by this flow's cancellation). Cancelled is never a success."""


class DbtCloudRunTimedOut(DbtCloudRunError):
    """The run reached no terminal status before ``max_wait_seconds``."""


class DbtCloudRunResult(BaseModel):
    """What a successful run hands to downstream steps; ``finished_at`` is their watermark (UTC, exact)."""

    run_id: int
    job_id: int
    account_id: int
    status: str
    status_code: int
    started_at: datetime | None
    finished_at: datetime | None
    duration_seconds: float | None = Field(description="From start to finish of the run, queueing excluded.")
    queued_seconds: float | None = None
    url: str
    cause: str | None
    models: list[ModelResult] = Field(default_factory=list)


OUTCOMES: dict[RunStatus, tuple[Outcome, type[DbtCloudRunError] | None]] = {
    RunStatus.SUCCESS: ("succeeded", None),
    RunStatus.ERROR: ("failed", DbtCloudRunFailed),
    RunStatus.CANCELLED: ("cancelled", DbtCloudRunCancelled),
}


def build_result(
    run: Run, job_id: int, credentials: DbtCloudCredentials, models: list[ModelResult]
) -> DbtCloudRunResult:
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
        url=run.href
        if run.href and run.href.startswith("http")
        else run_url(credentials.access_url, credentials.account_id, run.id, run.project_id),
        cause=run.trigger.cause if run.trigger else None,
        models=models,
    )


def _publish(result: DbtCloudRunResult, outcome: Outcome, run: Run | None) -> None:
    """Artifacts (link, summary, models) and the event that Automations route on."""
    key = f"dbt-cloud-job-{result.job_id}"
    create_link_artifact(
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
    create_markdown_artifact(key=f"{key}-summary", markdown="\n".join(lines), description="dbt Cloud run summary")
    create_table_artifact(
        key=f"{key}-models",
        table=[
            {
                "model": m.name,
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
    emit_run_event(result, outcome)


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
        lines.append("Failing models: " + ", ".join(f"{m.name} ({m.status})" for m in failing))
    return "\n".join(lines)


def cancel_runs_of_flow_run(flow: Flow[..., Any], flow_run: FlowRun, job_ids: list[int]) -> None:
    """Cancel the unfinished dbt Cloud runs a Prefect flow run started (found by the key in their cause)."""
    log = flow_run_logger(flow_run, flow)
    parameters = flow_run.parameters or {}
    try:
        reference = parameters.get("credentials")
        if isinstance(reference, dict):
            creds = DbtCloudCredentials.model_validate(reference)
        else:
            creds = resolve_credentials(reference)
        with creds.get_client() as client:
            for job_id in sorted(set(job_ids)):
                # The key without its closing bracket also matches the keys of a job started several times.
                marker = idempotency_key(job_id, str(flow_run.id)).rstrip("]")
                for run in client.find_runs_by_cause(job_id, marker, max_runs=100):
                    if not run.is_terminal:
                        client.cancel_run(run.id)
                        log.warning("Prefect flow run cancelled: cancelled dbt Cloud run %s of job %s.", run.id, job_id)
    except (DbtCloudError, ValueError) as exc:
        log.error("Prefect flow run cancelled, but the dbt Cloud runs could not be cancelled: %s", exc)


def _cancel_on_prefect_cancellation(flow: Flow[..., Any], flow_run: FlowRun, state: State[Any]) -> None:
    """Cancelling the Prefect flow run cancels the dbt Cloud run it started."""
    job_id = (flow_run.parameters or {}).get("job_id")
    if isinstance(job_id, int):
        cancel_runs_of_flow_run(flow, flow_run, [job_id])


@flow(name="run-dbt-cloud-job", on_cancellation=[_cancel_on_prefect_cancellation])
def run_dbt_cloud_job(
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
) -> DbtCloudRunResult:
    """Trigger dbt Cloud job ``job_id``, wait for the run, and return its result, or alert and fail.

    Credentials: a ``DbtCloudCredentials`` block, the name of a saved one, or (None) the environment
    (``DBT_CLOUD_CREDENTIALS_BLOCK``, or ``DBT_CLOUD_ACCOUNT_ID`` + ``DBT_CLOUD_API_TOKEN``).
    ``if_running``: "trigger" (dbt Cloud queues it), "reuse" (wait on the run already in flight), "fail".
    ``retry_failed_run_id`` reruns that failed run from its point of failure instead of starting a new run.
    ``adaptive_polling`` (default on): poll around the durations of the job's recent successful runs, aiming at
    the median detection lag of fixed polling every ``poll_interval_seconds`` with fewer calls; without history
    it polls every ``poll_interval_seconds``.
    ``native_schedule``: what to do when the job's own dbt Cloud schedule is on (it would run the job a second
    time, outside this pipeline): "warn" (log how to turn it off), "fail" (refuse), "disable" (turn it off through
    the API and note in the job's description which Prefect deployment owns it).
    ``alert_blocks``: saved notification blocks as ``type-slug/name`` (``slack-webhook/data-team``).
    """
    log = get_run_logger()
    if job_id <= 0:
        raise ValueError(f"job_id must be a positive dbt Cloud job ID, got {job_id}.")
    if poll_interval_seconds <= 0 or max_wait_seconds <= 0:
        raise ValueError("poll_interval_seconds and max_wait_seconds must be positive.")
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
    assert set(overrides) <= set(TRIGGER_OVERRIDES)

    check_native_schedule(creds, job_id, native_schedule)
    run_id = _start_run(creds, job_id, cause, overrides, if_running, retry_failed_run_id)
    run: Run | None
    try:
        run = wait_for_dbt_cloud_run(
            creds,
            run_id,
            poll_interval_seconds=poll_interval_seconds,
            max_wait_seconds=max_wait_seconds,
            on_timeout=on_timeout,
            job_id=job_id,
            adaptive_polling=adaptive_polling,
        )
        timed_out = False
    except WaitTimedOut as exc:
        run, timed_out = exc.run, True

    models: list[ModelResult] = []
    if run is not None and run.status in (RunStatus.SUCCESS, RunStatus.ERROR) and run.artifacts_saved is not False:
        models = fetch_run_results(creds, run_id)
    if run is None:  # never read before the deadline: report what is known
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
        result = build_result(run, job_id, creds, models)

    if timed_out:
        outcome: Outcome = "timed-out"
        error_cls: type[DbtCloudRunError] | None = DbtCloudRunTimedOut
        left = "left running" if on_timeout == "leave" else "cancelled"
        detail = f"No terminal status within {max_wait_seconds:g} s; the dbt Cloud run was {left}."
    else:
        assert run is not None
        known = run.known_status
        outcome, error_cls = (
            OUTCOMES.get(known, ("failed", DbtCloudRunFailed)) if known else ("failed", DbtCloudRunFailed)
        )
        detail = run.status_message or ""
    _publish(result, outcome, run)

    if error_cls is None:
        log.info(
            "dbt Cloud run %s of job %s succeeded; finished_at=%s.",
            result.run_id,
            job_id,
            result.finished_at.isoformat() if result.finished_at else None,
        )
        return result

    message = f"dbt Cloud run {result.run_id} of job {job_id} {outcome} (status {result.status}): {result.url}"
    if alert_blocks:
        send_alerts(
            alert_blocks, f"dbt Cloud job {job_id} {outcome}", alert_body(result, outcome, run, detail), secret=token
        )
    log.error(message)
    raise error_cls(message, run_id=result.run_id, status=result.status, url=result.url, job_id=job_id)


def _start_run(
    creds: DbtCloudCredentials,
    job_id: int,
    cause: str | None,
    overrides: dict[str, Any],
    if_running: str,
    retry_failed_run_id: int | None,
) -> int:
    log = get_run_logger()
    if retry_failed_run_id is not None:
        return retry_dbt_cloud_run(creds, retry_failed_run_id)
    if if_running in ("reuse", "fail"):
        in_flight = find_run_in_flight(creds, job_id)
        if in_flight is not None:
            if if_running == "fail":
                raise DbtCloudJobAlreadyRunning(
                    f"dbt Cloud job {job_id} already has run {in_flight.id} {in_flight.status_label.lower()}; "
                    "if_running='fail' refuses to start another (use 'reuse' to wait on it, 'trigger' to queue one)."
                )
            log.info("Job %s already has run %s in flight; waiting on it (if_running='reuse').", job_id, in_flight.id)
            return in_flight.id
    elif if_running != "trigger":
        raise ValueError(f"if_running must be 'trigger', 'reuse' or 'fail', got {if_running!r}.")
    key = idempotency_key(job_id)
    return trigger_dbt_cloud_job(creds, job_id, cause_with_key(cause, key), key, overrides)
