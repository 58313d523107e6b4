"""The emulator's job operations: list (the spec's filters, ``order_by``, paging), read with ``include_related``,
create, update (a POST of the whole job object, as read) and delete.

dbt Cloud deletes softly: the job's ``state`` becomes 2, the DELETE answers the job (a 200 with its body, as the
captured responses show, where the spec says 204), and the job then shows only in a list asked for
``state=deleted`` or ``all``; by ID it is gone (404), as is triggering it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dbt_cloud_gate.dbtcloud_api.emulator.listing import Filter, QueryError, last, ordered, paged, select
from dbt_cloud_gate.dbtcloud_api.emulator.render import Reply, error, ok
from dbt_cloud_gate.dbtcloud_api.emulator.runs_api import RenderRun
from dbt_cloud_gate.dbtcloud_api.emulator.specs import JobSpec
from dbt_cloud_gate.dbtcloud_api.emulator.state import AccountState
from dbt_cloud_gate.dbtcloud_api.emulator.times import iso

_INVALID = "The request was invalid."
_NOT_FOUND = "Requested resource not found."
DELETED = 2
# Fields the server sets: a POSTed job object carries them as read, and they are kept as they are.
READ_ONLY = frozenset(
    {"id", "account_id", "created_at", "updated_at", "cron_humanized", "next_run", "next_run_humanized", "state"}
)
# The related objects a job read can include, beside the job's own fields.
_RELATED = ("environment", "custom_environment_variables", "most_recent_run", "most_recent_completed_run")
JOB_FILTERS: dict[str, Filter] = {
    "environment_id": Filter("environment_id", "int"),
    "project_id": Filter("project_id", "int"),
    "project_id__in": Filter("project_id", "ints"),
    "pk": Filter("id", "int"),
    "name__icontains": Filter("name", "icontains"),
    "state": Filter("state", "state"),
    "triggers_schedule": Filter("triggers_schedule", "bool"),
    "dbt_version__in": Filter("dbt_version", "strs"),
    "is_system": Filter("is_system", "bool"),
}
JOB_ORDERS = {"id", "name", "created_at", "updated_at", "project_id", "environment_id", "state", "job_type"}


def live_job(state: AccountState, job_id: int) -> JobSpec | None:
    """The job with this ID, unless it does not exist or was deleted."""
    spec = state.jobs.get(job_id)
    if spec is None or state.job_objects[job_id].get("state") == DELETED:
        return None
    return spec


def job_view(state: AccountState, job_id: int, includes: set[str], now: float, render_run: RenderRun) -> dict[str, Any]:
    """The job object, with the related objects named in ``includes``."""
    job = dict(state.job_objects[job_id])
    if "environment" in includes:
        job["environment"] = {
            "id": job["environment_id"],
            "account_id": state.account_id,
            "project_id": job["project_id"],
            "name": "Production",
            "type": "deployment",
            "deployment_type": "production",
            "dbt_version": "1.8.0-latest",
            "state": 1,
        }
    if "custom_environment_variables" in includes:
        job["custom_environment_variables"] = []
    runs = state.runs_of(job_id)
    if "most_recent_run" in includes:
        job["most_recent_run"] = render_run(runs[-1], now, set()) if runs else None
    if "most_recent_completed_run" in includes:
        done = [run for run in runs if run.status_at(now).is_terminal]
        job["most_recent_completed_run"] = render_run(max(done, key=lambda r: r.end()), now, set()) if done else None
    return job


def list_jobs(
    state: AccountState, query: Mapping[str, list[str]], includes: set[str], now: float, render_run: RenderRun
) -> Reply:
    """``GET jobs/``: active jobs by default (``state``), the spec's filters applied, ordered and paged."""
    order = last(query, "order_by") or "id"
    rows = [
        ({**job, "triggers_schedule": bool(job["triggers"].get("schedule")), "is_system": False}, job_id)
        for job_id, job in state.job_objects.items()
    ]
    try:
        rows = ordered(select(rows, query, JOB_FILTERS, {"state": "active"}), order, JOB_ORDERS)
        page, extra = paged(rows, query, {"filters": {"account_id": state.account_id}, "order_by": order})
    except QueryError as exc:
        return error(400, _INVALID, {exc.name: [exc.message]})
    return ok([job_view(state, job_id, includes, now, render_run) for job_id in page], extra)


def create_job(state: AccountState, body: Any, now: float) -> Reply:
    """``POST jobs/``: a new job from the posted object (an exported job, read back, makes a copy)."""
    if not isinstance(body, dict):
        return error(400, _INVALID)
    if body.get("account_id") not in (None, state.account_id):
        return error(403, "You do not have permission to access this account.")
    with state.lock:
        job_id = max(state.jobs, default=0) + 1
        spec = JobSpec(
            id=job_id,
            name=str(body.get("name") or f"Job {job_id}"),
            project_id=int(body.get("project_id") or 1),
            environment_id=int(body.get("environment_id") or 1),
            execute_steps=[str(step) for step in body.get("execute_steps") or ["dbt build"]],
        )
        state.add_job(spec)
        return update_job(state, job_id, {key: value for key, value in body.items() if key != "id"}, now)


def update_job(state: AccountState, job_id: int, body: Any, now: float) -> Reply:
    """``POST jobs/{id}/``: the posted fields replace the job's (the server's own fields stay as they are)."""
    if not isinstance(body, dict):
        return error(400, _INVALID)
    if body.get("id") not in (None, job_id):
        return error(400, "The job id in the body does not match the path.")
    with state.lock:
        job = state.job_objects[job_id]
        for key, value in body.items():
            if key not in READ_ONLY and key not in _RELATED:
                job[key] = value
        job["updated_at"] = iso(now)
        spec = state.jobs[job_id]
        spec.name, spec.description = job["name"], job.get("description") or ""
        spec.project_id, spec.environment_id = int(job["project_id"]), int(job["environment_id"])
        spec.schedule_enabled = bool(job["triggers"].get("schedule"))
        spec.cron = str(job.get("schedule", {}).get("cron") or spec.cron)
        spec.generate_docs, spec.run_generate_sources = bool(job["generate_docs"]), bool(job["run_generate_sources"])
        return ok(job)


def delete_job(state: AccountState, job_id: int, now: float) -> Reply:
    """``DELETE jobs/{id}/``: the job soft-deleted (``state`` 2) and answered, as dbt Cloud does."""
    with state.lock:
        job = state.job_objects[job_id]
        job["state"] = DELETED
        job["updated_at"] = iso(now)
        return ok(dict(job))


def not_found() -> Reply:
    """The 404 of a job that does not exist (or was deleted)."""
    return error(404, _NOT_FOUND)
