"""A ``dbt docs generate`` step as dbt runs it: ``catalog.json`` (dbt's ``catalog/v1`` schema) and the step's log.

The catalog holds what the warehouse says of each model and source of the project (Snowflake's upper-case names,
``BASE TABLE``, column types, row counts); tests have no relation and are not in it. Pure functions, no I/O.
"""

from __future__ import annotations

from typing import Any

from dbt_cloud_gate.dbtcloud_api.emulator import project
from dbt_cloud_gate.dbtcloud_api.emulator.plan import PlannedStep, step_window
from dbt_cloud_gate.dbtcloud_api.emulator.specs import JobSpec, RunRecord

CATALOG_SCHEMA = "https://schemas.getdbt.com/dbt/catalog/v1.json"
ROWS = 100  # every emulated table holds this many rows (the models' "SELECT 100")


def _table(unique_id: str, schema: str, columns: list[tuple[str, str]]) -> dict[str, Any]:
    name = unique_id.rsplit(".", 1)[1].upper()
    stats = {
        "row_count": {"id": "row_count", "label": "Row Count", "value": ROWS, "include": True, "description": ""},
        "has_stats": {"id": "has_stats", "label": "Has Stats?", "value": True, "include": False, "description": ""},
    }
    return {
        "metadata": {
            "type": "BASE TABLE",
            "schema": schema,
            "name": name,
            "database": project.PROJECT.upper(),
            "comment": None,
            "owner": "TRANSFORMER",
        },
        "columns": {
            column: {"type": kind, "index": index, "name": column, "comment": None}
            for index, (column, kind) in enumerate(columns, start=1)
        },
        "stats": stats,
        "unique_id": unique_id,
    }


def catalog_json(run: RunRecord, spec: JobSpec, step: PlannedStep) -> dict[str, Any]:
    """The ``catalog.json`` a docs step leaves: every model and source of the project."""
    models, _tests = project.nodes(spec, run)
    model_columns = [("ID", "NUMBER"), ("UPDATED_AT", "TIMESTAMP_NTZ")]
    source_columns = [("ID", "NUMBER"), (project.LOADED_AT_FIELD.upper(), "TIMESTAMP_NTZ")]
    schema = project.PROJECT.upper()
    return {
        "metadata": project.metadata(
            CATALOG_SCHEMA, run, str(step.index), generated=step_window(run, spec, step.index)[1]
        ),
        "nodes": {
            f"model.{project.PROJECT}.{model}": _table(f"model.{project.PROJECT}.{model}", schema, model_columns)
            for model in models
        },
        "sources": {
            project.source_id(name): _table(project.source_id(name), "RAW", source_columns)
            for name in project.source_names(spec, run)
        },
        "errors": None,
    }


def docs_logs(run: RunRecord, spec: JobSpec, finished: bool) -> str:
    """The docs step's log as dbt prints it."""
    models, tests = project.nodes(spec, run)
    sources = project.source_names(spec, run)
    lines = [
        f"Running with dbt={project.DBT_VERSION}",
        f"Found {len(models)} models, {len(tests)} data tests, {len(sources)} sources",
    ]
    if finished:
        lines += ["Building catalog", "Catalog written to /tmp/jobs/target/catalog.json", "Done."]
    return "\n".join(lines) + "\n"
