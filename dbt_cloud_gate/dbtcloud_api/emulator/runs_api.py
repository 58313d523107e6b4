"""The emulator's run operations beyond a single run's read: the runs list with every filter of the spec, and a
failed run's retry (``POST runs/{id}/retry/``) and failure details (``GET runs/{id}/retry/``).

Functions of the account (:class:`~.state.AccountState`) and a renderer of runs; each answers a :class:`~.render.Reply`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from dbt_cloud_gate.dbtcloud_api.emulator import plan
from dbt_cloud_gate.dbtcloud_api.emulator.listing import Filter, QueryError, last, ordered, paged, select
from dbt_cloud_gate.dbtcloud_api.emulator.render import Reply, error, ok
from dbt_cloud_gate.dbtcloud_api.emulator.specs import RunRecord
from dbt_cloud_gate.dbtcloud_api.emulator.state import AccountState
from dbt_cloud_gate.dbtcloud_api.models import RunStatus

# Renders a run at a moment with the related objects asked for (the emulator's ``run_json``).
RenderRun = Callable[[RunRecord, float, set[str]], dict[str, Any]]

_INVALID = "The request was invalid."
# The query filters of ``GET runs/`` in the spec, each on a field of :func:`run_fields`.
RUN_FILTERS: dict[str, Filter] = {
    "job_definition_id": Filter("job_definition_id", "int"),
    "status": Filter("status", "int"),
    "status__in": Filter("status", "ints"),
    "project_id": Filter("project_id", "int"),
    "project_id__in": Filter("project_id", "ints"),
    "environment_id": Filter("environment_id", "int"),
    "deferring_run_id": Filter("deferring_run_id", "int"),
    "id__gt": Filter("id", "gt"),
    "pk": Filter("id", "int"),
    "pk__in": Filter("id", "ints"),
    "created_at__range": Filter("created_at", "range"),
    "finished_at__range": Filter("finished_at", "range"),
    "dbt_version": Filter("dbt_version", "str"),
    "dbt_version__in": Filter("dbt_version", "strs"),
    "has_docs_generated": Filter("has_docs_generated", "bool"),
    "has_sources_generated": Filter("has_sources_generated", "bool"),
    "state": Filter("state", "state"),
}
RUN_ORDERS = {"id", "created_at", "finished_at"}


def run_fields(state: AccountState, run: RunRecord, now: float) -> dict[str, Any]:
    """What the runs list filters and orders on, as the run object shows it at ``now``."""
    spec = state.jobs[run.job_id]
    status = run.status_at(now)
    docs, sources = plan.generated(run, spec, status)
    return {
        "id": run.id,
        "job_definition_id": run.job_id,
        "project_id": spec.project_id,
        "environment_id": spec.environment_id,
        "status": int(status),
        "created_at": run.created,
        "finished_at": run.end() if status.is_terminal else None,
        "deferring_run_id": None,
        "dbt_version": "1.8.0",
        "has_docs_generated": docs,
        "has_sources_generated": sources,
        "state": 1,
    }


def list_runs(
    state: AccountState, query: Mapping[str, list[str]], includes: set[str], now: float, render_run: RenderRun
) -> Reply:
    """``GET runs/``: the spec's filters applied, ordered (default ``id``) and paged."""
    order = last(query, "order_by") or "id"
    try:
        rows = [(run_fields(state, run, now), run) for run in state.runs_for(None)]
        rows = ordered(select(rows, query, RUN_FILTERS), order, RUN_ORDERS)
        page, extra = paged(rows, query, {"filters": {"account_id": state.account_id}, "order_by": order})
    except QueryError as exc:
        return error(400, _INVALID, {exc.name: [exc.message]})
    return ok([render_run(run, now, includes) for run in page], extra)


def _not_failed(run: RunRecord) -> Reply:
    return error(400, f"Run {run.id} did not fail, so it cannot be retried from its point of failure.")


def retry_run(state: AccountState, run: RunRecord, now: float, includes: set[str], render_run: RenderRun) -> Reply:
    """``POST runs/{id}/retry/``: a new run from the failed run's point of failure."""
    if run.status_at(now) != RunStatus.ERROR:
        return _not_failed(run)
    return ok(render_run(state.retry(run, now), now, includes))


def failure_details(state: AccountState, run: RunRecord, now: float) -> Reply:
    """``GET runs/{id}/retry/``: the failed step of a failed run and the steps after it, which never ran."""
    if run.status_at(now) != RunStatus.ERROR:
        return _not_failed(run)
    spec = state.jobs[run.job_id]
    failing = plan.failing_step(run, spec)
    return ok(
        {
            "failed_step": failing.name if failing is not None else None,
            "skipped_steps": [step.name for step in plan.skipped(run, spec)],
        }
    )


def rerun_job(state: AccountState, job_id: int, now: float, render_run: RenderRun) -> Reply:
    """``POST jobs/{id}/rerun/``: the job's last run retried from its point of failure when it failed, else a new run
    (as dbt Cloud documents it)."""
    runs = state.runs_of(job_id)
    if runs and runs[-1].status_at(now) == RunStatus.ERROR:
        return ok(render_run(state.retry(runs[-1], now), now, set()))
    run = state.trigger(state.jobs[job_id], "Rerun via the API", {}, now)
    return ok(render_run(run, now, set()))
