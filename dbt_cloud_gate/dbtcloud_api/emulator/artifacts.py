"""A run's artifacts as dbt Cloud serves them: the list, ``run_results.json`` per step, and a ``manifest.json`` with
the project's nodes (models and tests), its sources, and the ``parent_map``/``child_map`` of its lineage.

The emulated project's lineage: a staging model ``stg_<name>`` selects from the source ``raw.<name>``; every other
model selects from the staging models (or, with none, from the model before it); a test tests the model its name
ends with (``not_null_orders_id`` tests ``orders``). Pure functions, no I/O.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from dbt_cloud_gate.dbtcloud_api.emulator import render
from dbt_cloud_gate.dbtcloud_api.emulator.render import JSON_HEADERS, Reply, error, ok
from dbt_cloud_gate.dbtcloud_api.emulator.specs import SETUP_STEPS, JobSpec, RunRecord, StepSpec
from dbt_cloud_gate.dbtcloud_api.models import RunStatus

PROJECT = "analytics"
ARTIFACTS = ["manifest.json", "run_results.json"]
_SCHEMA = "https://schemas.getdbt.com/dbt/manifest/v12.json"
_EMPTY_SECTIONS = ("exposures", "metrics", "groups", "macros", "docs", "disabled", "selectors", "semantic_models")


def serve(run: RunRecord, spec: JobSpec, name: str | None, query: Mapping[str, list[str]], now: float) -> Reply:
    """``runs/{id}/artifacts/`` (``name`` None: the list) and ``runs/{id}/artifacts/{name}`` (``step``: which)."""
    if run.status_at(now) not in (RunStatus.SUCCESS, RunStatus.ERROR):
        return error(404, f"No artifacts for run {run.id}: it has not completed, or was cancelled.")
    if name is None:
        return ok(list(ARTIFACTS))
    steps_asked = query.get("step") or []
    try:
        step = int(steps_asked[-1]) if steps_asked else None
    except ValueError:
        return error(400, "The request was invalid.", {"step": ["A valid integer is required."]})
    total_steps = len(SETUP_STEPS) + len(run.steps)
    if step is not None and not 1 <= step <= total_steps:
        return error(404, f"Run {run.id} has no step {step}.")
    document: dict[str, Any] | None
    if name == "run_results.json":
        document = render.run_results(run, spec, step)
        if document is None:
            return error(404, f"Artifact {name} not found for run {run.id} step {step or total_steps}.")
    elif name == "manifest.json":
        document = manifest(spec, run)
    else:
        return error(404, f"Artifact {name} not found for run {run.id}.")
    return Reply(200, json.dumps(document).encode(), dict(JSON_HEADERS))


def _job_steps(spec: JobSpec, run: RunRecord | None) -> list[StepSpec]:
    if spec.steps is not None and (run is None or [step.command for step in spec.steps] == run.steps):
        return list(spec.steps)
    return [StepSpec(command) for command in (run.steps if run is not None else spec.execute_steps)]


def _lineage(models: list[str], tests: list[str]) -> dict[str, list[str]]:
    """Each node's parents (unique IDs), sources and tests included."""
    parents: dict[str, list[str]] = {}
    staging = [model for model in models if model.startswith("stg_")]
    for index, model in enumerate(models):
        if model.startswith("stg_"):
            parents[f"model.{PROJECT}.{model}"] = [f"source.{PROJECT}.raw.{model.removeprefix('stg_')}"]
        elif staging:
            parents[f"model.{PROJECT}.{model}"] = [f"model.{PROJECT}.{name}" for name in staging]
        else:
            parents[f"model.{PROJECT}.{model}"] = [f"model.{PROJECT}.{models[index - 1]}"] if index else []
    for test in tests:
        tested = [model for model in models if f"_{model}_" in f"_{test}_"]
        target = max(tested, key=len) if tested else None
        parents[render.test_unique_id(test)] = [f"model.{PROJECT}.{target}"] if target else []
    for model in staging:
        parents[f"source.{PROJECT}.raw.{model.removeprefix('stg_')}"] = []
    return parents


def _node(unique_id: str, parents: list[str]) -> dict[str, Any]:
    kind, _, rest = unique_id.partition(".")
    name = rest.split(".")[1]
    folder = "models" if kind == "model" else "tests"
    return {
        "unique_id": unique_id,
        "name": name,
        "resource_type": kind,
        "package_name": PROJECT,
        "database": PROJECT,
        "schema": PROJECT if kind == "model" else f"{PROJECT}_dbt_test__audit",
        "fqn": [PROJECT, name],
        "path": f"{name}.sql",
        "original_file_path": f"{folder}/{name}.sql",
        "config": {"materialized": "table" if kind == "model" else "test", "enabled": True},
        "depends_on": {"nodes": parents, "macros": []},
    }


def _source(unique_id: str) -> dict[str, Any]:
    name = unique_id.rsplit(".", 1)[1]
    return {
        "unique_id": unique_id,
        "name": name,
        "source_name": "raw",
        "resource_type": "source",
        "package_name": PROJECT,
        "database": PROJECT,
        "schema": "raw",
        "identifier": name,
        "fqn": [PROJECT, "raw", name],
        "loaded_at_field": "_loaded_at",
        "freshness": {"warn_after": {"count": 12, "period": "hour"}, "error_after": {"count": 24, "period": "hour"}},
    }


def manifest(spec: JobSpec, run: RunRecord | None = None) -> dict[str, Any]:
    """The ``manifest.json`` of the job's project: nodes, sources, and the lineage both ways."""
    steps = _job_steps(spec, run)
    models = list(dict.fromkeys(m for step in steps for m in [*spec.models, *step.built_models(spec.models)]))
    tests = list(dict.fromkeys(t for step in steps for t in step.run_tests(spec.models)))
    parents = _lineage(models, tests)
    children: dict[str, list[str]] = {unique_id: [] for unique_id in parents}
    for unique_id, above in parents.items():
        for parent in above:
            children.setdefault(parent, []).append(unique_id)
    return {
        "metadata": {
            "dbt_schema_version": _SCHEMA,
            "dbt_version": "1.8.0",
            "generated_at": render.iso(run.finished if run is not None else 0.0),
            "invocation_id": f"emulated-{run.id if run is not None else 0}-manifest",
            "project_name": PROJECT,
            "adapter_type": "snowflake",
        },
        "nodes": {uid: _node(uid, above) for uid, above in parents.items() if not uid.startswith("source.")},
        "sources": {uid: _source(uid) for uid in parents if uid.startswith("source.")},
        "parent_map": parents,
        "child_map": children,
        **{section: {} for section in _EMPTY_SECTIONS},
    }
