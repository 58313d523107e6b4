"""How a run's end maps to an outcome, and the result handed downstream: one mapping for every flow.

``judge`` turns how a wait ended into a :class:`Verdict` (outcome, error to raise, why); ``summarize`` makes the
:class:`DbtCloudRunSummary` every report takes; ``build_result`` makes the :class:`DbtCloudRunResult` of a success
(a Success without ``finished_at`` is refused here, the one guard); ``alert_body`` is the text of a failure alert
(no token: the summary and run hold none).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from prefect.runtime import flow_run as runtime_flow_run

from dbt_cloud_gate.blocks.dbt_cloud import DbtCloudCredentials
from dbt_cloud_gate.dbtcloud_api import ModelResult, Run, RunStatus, run_url
from dbt_cloud_gate.errors import (
    DbtCloudRunCancelled,
    DbtCloudRunError,
    DbtCloudRunFailed,
    DbtCloudRunInvalid,
    DbtCloudRunTimedOut,
)
from dbt_cloud_gate.models import DbtCloudRunResult, DbtCloudRunSummary

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


def summarize(run: Run, job_id: int, credentials: DbtCloudCredentials, models: list[ModelResult]) -> DbtCloudRunSummary:
    """Where the run stands, for artifacts, events and alerts, whatever its outcome."""
    url = (
        run.href
        if run.href and run.href.startswith("http")
        else run_url(credentials.access_url, credentials.account_id, run.id, run.project_id)
    )
    duration = (run.finished_at - run.started_at).total_seconds() if run.finished_at and run.started_at else None
    queued = (run.started_at - run.created_at).total_seconds() if run.started_at and run.created_at else None
    return DbtCloudRunSummary(
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


def build_result(
    run: Run, job_id: int, credentials: DbtCloudCredentials, models: list[ModelResult]
) -> DbtCloudRunResult:
    """The result handed downstream: only a Success with ``finished_at`` becomes one (``DbtCloudRunInvalid`` for
    a Success without it; a run of any other status is a programming error, since ``judge`` failed it)."""
    summary = summarize(run, job_id, credentials, models)
    if run.known_status is not RunStatus.SUCCESS:
        raise ValueError(f"dbt Cloud run {run.id} has status {run.status_label}: only a Success has a result")
    if run.finished_at is None:
        raise DbtCloudRunInvalid(
            f"dbt Cloud run {run.id} of job {job_id}: {NO_WATERMARK}.",
            run_id=run.id,
            status=run.status_label,
            url=summary.url,
            job_id=job_id,
        )
    return DbtCloudRunResult.model_validate(summary.model_dump())


def alert_body(result: DbtCloudRunSummary, outcome: Outcome, run: Run | None, detail: str) -> str:
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
    failing = failing_models(result)
    if failing:
        lines.append(f"Failing models: {failing}")
    return "\n".join(lines)


def failing_models(result: DbtCloudRunSummary) -> str:
    """The models (and tests) in error in the run's results, as "orders (error), customers (fail)"; "" if none."""
    return ", ".join(f"{m.label} ({m.status})" for m in result.models if m.status in ("error", "fail", "runtime error"))


def where_it_failed(result: DbtCloudRunSummary, run: Run | None) -> str:
    """The failed step and the failing models, for a state message: "step 4 (Invoke dbt with `dbt build`), failing
    models: orders (error)"; "" when neither is known."""
    step = run.failed_step if run is not None else None
    parts = [f"step {step.index} ({step.name})"] if step is not None else []
    failing = failing_models(result)
    if failing:
        parts.append(f"failing models: {failing}")
    return ", ".join(parts)
