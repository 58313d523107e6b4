"""The emulated dbt project behind every job: its models, tests and sources, their lineage, and ``manifest.json``.

A staging model ``stg_<name>`` selects from the source ``raw.<name>``; every other model selects from the staging
models (or, with none, from the model before it); a test tests the model its name ends with
(``not_null_orders_id`` tests ``orders``). Every source declares dbt's usual freshness thresholds
(:data:`FRESHNESS_CRITERIA`) on a ``_loaded_at`` column. Pure functions, no I/O.
"""

from __future__ import annotations

import hashlib
from typing import Any

from dbt_cloud_gate.dbtcloud_api.emulator.plan import job_commands
from dbt_cloud_gate.dbtcloud_api.emulator.specs import JobSpec, RunRecord, source_of
from dbt_cloud_gate.dbtcloud_api.emulator.times import iso

PROJECT = "analytics"
DBT_VERSION = "1.8.0"
MANIFEST_SCHEMA = "https://schemas.getdbt.com/dbt/manifest/v12.json"
# Each source's freshness config, as the manifest declares it and sources.json repeats it (``criteria``).
FRESHNESS_CRITERIA: dict[str, Any] = {
    "warn_after": {"count": 12, "period": "hour"},
    "error_after": {"count": 24, "period": "hour"},
    "filter": None,
}
LOADED_AT_FIELD = "_loaded_at"
_EMPTY_SECTIONS = ("exposures", "metrics", "groups", "macros", "docs", "disabled", "selectors", "semantic_models")


def test_unique_id(test: str) -> str:
    """A test's unique ID, as in run_results.json and manifest.json (``test.analytics.<name>.<digest>``)."""
    return f"test.{PROJECT}.{test}.{hashlib.sha256(test.encode()).hexdigest()[:10]}"


def source_id(name: str) -> str:
    """The unique ID of the source table ``raw.<name>``."""
    return f"source.{PROJECT}.raw.{name}"


def metadata(schema: str, run: RunRecord | None, invocation: str, generated: float | None = None) -> dict[str, Any]:
    """The ``metadata`` every dbt artifact opens with (``generated``: when; default the run's end)."""
    if generated is None:
        generated = run.finished if run is not None else 0.0
    return {
        "dbt_schema_version": schema,
        "dbt_version": DBT_VERSION,
        "generated_at": iso(generated),
        "invocation_id": f"emulated-{run.id if run is not None else 0}-{invocation}",
        "env": {},
    }


def nodes(spec: JobSpec, run: RunRecord | None = None) -> tuple[list[str], list[str]]:
    """The project's models and tests: the job's models and every model and test its steps touch."""
    steps = job_commands(spec, run)
    models = list(dict.fromkeys(m for step in steps for m in [*spec.models, *step.built_models(spec.models)]))
    tests = list(dict.fromkeys(t for step in steps for t in step.run_tests(spec.models)))
    return models, tests


def lineage(models: list[str], tests: list[str]) -> dict[str, list[str]]:
    """Each node's parents (unique IDs), sources and tests included."""
    parents: dict[str, list[str]] = {}
    staging = [model for model in models if source_of(model)]
    for index, model in enumerate(models):
        source = source_of(model)
        if source:
            parents[f"model.{PROJECT}.{model}"] = [source_id(source)]
        elif staging:
            parents[f"model.{PROJECT}.{model}"] = [f"model.{PROJECT}.{name}" for name in staging]
        else:
            parents[f"model.{PROJECT}.{model}"] = [f"model.{PROJECT}.{models[index - 1]}"] if index else []
    for test in tests:
        tested = [model for model in models if f"_{model}_" in f"_{test}_"]
        target = max(tested, key=len) if tested else None
        parents[test_unique_id(test)] = [f"model.{PROJECT}.{target}"] if target else []
    for model in staging:
        parents[source_id(source_of(model) or "")] = []
    return parents


def source_names(spec: JobSpec, run: RunRecord | None = None) -> list[str]:
    """The project's sources by table name, in lineage order."""
    return [name for name in map(source_of, nodes(spec, run)[0]) if name]


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
        "loaded_at_field": LOADED_AT_FIELD,
        "freshness": dict(FRESHNESS_CRITERIA),
    }


def manifest(spec: JobSpec, run: RunRecord | None = None) -> dict[str, Any]:
    """The ``manifest.json`` of the job's project: nodes, sources, and the lineage both ways."""
    parents = lineage(*nodes(spec, run))
    children: dict[str, list[str]] = {unique_id: [] for unique_id in parents}
    for unique_id, above in parents.items():
        for parent in above:
            children.setdefault(parent, []).append(unique_id)
    head = metadata(MANIFEST_SCHEMA, run, "manifest")
    head.update({"project_name": PROJECT, "adapter_type": "snowflake"})
    return {
        "metadata": head,
        "nodes": {uid: _node(uid, above) for uid, above in parents.items() if not uid.startswith("source.")},
        "sources": {uid: _source(uid) for uid in parents if uid.startswith("source.")},
        "parent_map": parents,
        "child_map": children,
        **{section: {} for section in _EMPTY_SECTIONS},
    }
