"""A run's artifacts as dbt Cloud serves them: the list of files and each file, per step.

Each dbt step writes its files into the run's ``target/``: every step ``manifest.json``; a command step
``run_results.json`` (:mod:`.steps`); a freshness step ``sources.json`` (:mod:`.freshness`); a docs step
``catalog.json`` besides its compile results (:mod:`.catalog`). With ``step`` a file comes from that step, or is
a 404 when the step wrote none; without, from the last step that wrote it (the run's ``target/`` at its end: for
``run_results.json``, the last step's, as dbt Cloud documents). Pure functions, no I/O.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from dbt_cloud_gate.dbtcloud_api.emulator import plan, steps
from dbt_cloud_gate.dbtcloud_api.emulator.catalog import catalog_json
from dbt_cloud_gate.dbtcloud_api.emulator.freshness import sources_json
from dbt_cloud_gate.dbtcloud_api.emulator.plan import PlannedStep
from dbt_cloud_gate.dbtcloud_api.emulator.project import manifest
from dbt_cloud_gate.dbtcloud_api.emulator.render import JSON_HEADERS, Reply, error, ok
from dbt_cloud_gate.dbtcloud_api.emulator.specs import JobSpec, RunRecord
from dbt_cloud_gate.dbtcloud_api.models import RunStatus

# The files a step may write besides manifest.json, whether it does, and what it holds.
Writer = Callable[[RunRecord, JobSpec, PlannedStep], dict[str, Any]]
_FILES: dict[str, tuple[Callable[[PlannedStep], bool], Writer]] = {
    "sources.json": (lambda step: step.checks_freshness, sources_json),
    "catalog.json": (lambda step: step.generates_docs, catalog_json),
}


def listing(run: RunRecord, spec: JobSpec) -> list[str]:
    """The files of the run's ``target/`` at its end, sorted as dbt Cloud lists them."""
    executed = plan.planned(run, spec)
    names = {"manifest.json"}
    if any(steps.writes_run_results(step) for step in executed):
        names.add("run_results.json")
    names.update(name for name, (writes, _) in _FILES.items() if any(writes(step) for step in executed))
    return sorted(names)


def _document(run: RunRecord, spec: JobSpec, name: str, step: int | None) -> dict[str, Any] | None:
    if name == "manifest.json":
        return manifest(spec, run)
    if name == "run_results.json":
        return steps.run_results(run, spec, step)
    if name not in _FILES:
        return None
    writes, write = _FILES[name]
    if step is None:
        written = [planned for planned in plan.planned(run, spec) if writes(planned)]
        chosen = written[-1] if written else None
    else:
        chosen = plan.step_at(run, spec, step)
    return write(run, spec, chosen) if chosen is not None and writes(chosen) else None


def serve(run: RunRecord, spec: JobSpec, name: str | None, query: Mapping[str, list[str]], now: float) -> Reply:
    """``runs/{id}/artifacts/`` (``name`` None: the list) and ``runs/{id}/artifacts/{name}`` (``step``: which)."""
    if run.status_at(now) not in (RunStatus.SUCCESS, RunStatus.ERROR):
        return error(404, f"No artifacts for run {run.id}: it has not completed, or was cancelled.")
    if name is None:
        return ok(listing(run, spec))
    steps_asked = query.get("step") or []
    try:
        step = int(steps_asked[-1]) if steps_asked else None
    except ValueError:
        return error(400, "The request was invalid.", {"step": ["A valid integer is required."]})
    total_steps = plan.last_index(run, spec)
    if step is not None and not 1 <= step <= total_steps:
        return error(404, f"Run {run.id} has no step {step}.")
    document = _document(run, spec, name, step)
    if document is None:
        where = f" step {step}" if step is not None else ""
        return error(404, f"Artifact {name} not found for run {run.id}{where}.")
    return Reply(200, json.dumps(document).encode(), dict(JSON_HEADERS))
