"""A freshness step as dbt runs it: ``sources.json`` (dbt's ``sources/v3`` schema) and the step's log.

Each source of the project is checked; its status comes from the job's ``stale_sources`` as the run saw them
(unlisted: ``pass``). A checked source's entry holds ``max_loaded_at``, ``snapshotted_at``,
``max_loaded_at_time_ago_in_s`` (30 minutes when it passes, 13 hours past ``warn_after``, 26 hours past
``error_after``), its ``criteria`` and ``status``; a query that failed (``runtime error``) leaves only
``unique_id``, ``error`` and ``status``, as dbt writes it. Pure functions, no I/O.
"""

from __future__ import annotations

from typing import Any

from dbt_cloud_gate.dbtcloud_api.emulator import project
from dbt_cloud_gate.dbtcloud_api.emulator.plan import FRESHNESS_LABELS, PlannedStep, step_window
from dbt_cloud_gate.dbtcloud_api.emulator.specs import JobSpec, RunRecord
from dbt_cloud_gate.dbtcloud_api.emulator.times import iso

SOURCES_SCHEMA = "https://schemas.getdbt.com/dbt/sources/v3.json"
# How long ago each status's source was last loaded (against 12 h warn_after and 24 h error_after).
AGE_SECONDS = {"pass": 1800.0, "warn": 13 * 3600.0, "error": 26 * 3600.0}


def _checks(run: RunRecord, spec: JobSpec, step: PlannedStep) -> list[tuple[str, str, float, float]]:
    """(table name, status, when checked, seconds taken) of each source, in order over the step's time."""
    begin, finish = step_window(run, spec, step.index)
    names = project.source_names(spec, run)
    each = max(finish - begin, 0.0) / max(len(names), 1)
    return [(name, run.stale_sources.get(name, "pass"), begin + each * (i + 1), each) for i, name in enumerate(names)]


def _result(name: str, status: str, checked: float, seconds: float) -> dict[str, Any]:
    unique_id = project.source_id(name)
    if status == "runtime error":
        error = f"Database Error in source raw.{name}\n  Object 'ANALYTICS.RAW.{name.upper()}' does not exist."
        return {"unique_id": unique_id, "error": error, "status": status}
    age = AGE_SECONDS[status]
    return {
        "unique_id": unique_id,
        "max_loaded_at": iso(checked - age),
        "snapshotted_at": iso(checked),
        "max_loaded_at_time_ago_in_s": age,
        "status": status,
        "criteria": dict(project.FRESHNESS_CRITERIA),
        "adapter_response": {},
        "timing": [
            {"name": "compile", "started_at": iso(checked - seconds), "completed_at": iso(checked - seconds)},
            {"name": "execute", "started_at": iso(checked - seconds), "completed_at": iso(checked)},
        ],
        "thread_id": "Thread-1",
        "execution_time": round(seconds, 3),
    }


def sources_json(run: RunRecord, spec: JobSpec, step: PlannedStep) -> dict[str, Any]:
    """The ``sources.json`` a freshness step leaves."""
    begin, finish = step_window(run, spec, step.index)
    return {
        "metadata": project.metadata(SOURCES_SCHEMA, run, str(step.index), generated=finish),
        "results": [_result(*check) for check in _checks(run, spec, step)],
        "elapsed_time": round(finish - begin, 3),
    }


def freshness_logs(run: RunRecord, spec: JobSpec, step: PlannedStep, finished: bool) -> str:
    """The freshness step's log as dbt prints it (each source's verdict once the step is over)."""
    checks = _checks(run, spec, step)
    lines = [f"Running with dbt={project.DBT_VERSION}", f"Found {len(checks)} sources"]
    if finished:
        for number, (name, status, _checked, seconds) in enumerate(checks, start=1):
            label = FRESHNESS_LABELS[status]
            lines.append(f"{number} of {len(checks)} START freshness of raw.{name} [RUN]")
            lines.append(f"{number} of {len(checks)} {label} freshness of raw.{name} [{label} in {seconds:.2f}s]")
        lines += [f"Finished running {len(checks)} sources.", "Done."]
    return "\n".join(lines) + "\n"
