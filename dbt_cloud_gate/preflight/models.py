"""The dbt Cloud half of the preflight: does the job build each target's ``source_model``?

Read from the job's latest successful run: its ``manifest.json`` (two requests per job: the run listing and the
artifact). A job with no successful run yet, or whose run kept no manifest, gets a warning, not a problem: the load
still refuses a model the run did not build (``LoadSettings.check_model_built``). Errors reaching dbt Cloud are
warnings too: the trigger that follows reports them with its own advice. Prefect-free.
"""

from __future__ import annotations

import json
from typing import Any

from dbt_cloud_gate.dbtcloud_api import DbtCloudClient, DbtCloudError, ModelResult, RunStatus
from dbt_cloud_gate.models import LoadTarget
from dbt_cloud_gate.preflight.findings import Findings, did_you_mean

__all__ = ["check_source_models", "manifest_models"]

_BUILT = ("model", "snapshot", "seed")


def manifest_models(manifest: dict[str, Any]) -> list[ModelResult]:
    """The nodes a ``manifest.json`` says the project builds (models, snapshots, seeds), as ``ModelResult``s so
    that a ``source_model`` matches them as it matches a run's results."""
    nodes = manifest.get("nodes") or {}
    return [
        ModelResult(
            unique_id=str(unique_id),
            name=str(node.get("name") or ""),
            resource_type=node.get("resource_type"),
            package=node.get("package_name"),
            version=None if node.get("version") is None else str(node.get("version")),
            status="",
        )
        for unique_id, node in nodes.items()
        if isinstance(node, dict) and node.get("resource_type") in _BUILT
    ]


def _latest_manifest(client: DbtCloudClient, job_id: int, found: Findings) -> tuple[int, list[ModelResult]] | None:
    """The latest successful run of the job and the models of its manifest; None (and a warning) when unknown."""
    try:
        found.requests += 1
        page = client.list_runs(limit=1, job_definition_id=job_id, status_in=[RunStatus.SUCCESS], order_by="-id")
        if not page.runs:
            found.warnings.append(
                f"dbt Cloud job {job_id} has no successful run yet, so whether it builds each target's source_model "
                "is checked only after this run (check_model_built)."
            )
            return None
        run_id = page.runs[0].id
        found.requests += 1
        manifest = json.loads(client.get_run_artifact(run_id, "manifest.json"))
    except (DbtCloudError, ValueError) as exc:
        found.warnings.append(
            f"Could not read the manifest of dbt Cloud job {job_id}'s latest successful run ({type(exc).__name__}: "
            f"{exc}), so whether it builds each source_model is checked only after this run."
        )
        return None
    return run_id, manifest_models(manifest if isinstance(manifest, dict) else {})


def check_source_models(
    client: DbtCloudClient, job_id: int, targets: list[LoadTarget], parameter: str, found: Findings
) -> None:
    """A problem for each target whose ``source_model`` is not in the manifest of the job's latest successful run."""
    latest = _latest_manifest(client, job_id, found)
    if latest is None:
        return
    run_id, models = latest
    for index, target in enumerate(targets):
        if any(model.matches(target.source_model) for model in models):
            continue
        hint = did_you_mean(target.source_model, sorted({model.name for model in models}))
        found.add(
            f"{parameter}[{index}].source_model",
            f"dbt Cloud job {job_id} does not build model {target.source_model!r}: the manifest.json of its latest "
            f"successful run {run_id} has no such model, snapshot or seed{hint}.",
            "correct source_model (a model name, name.vN or unique_id), or add the model to the job's steps; "
            "load.check_model_built=false loads without this guard.",
        )
