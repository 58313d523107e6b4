"""Per-model results of a finished run: its ``run_results.json`` read from every step that can build models.

dbt Cloud serves a run's artifacts from its LAST step unless ``step`` is given: a job whose steps are ``dbt run``
then ``dbt test`` has its models' results in the run step's file. So each step that can build models is read
(one request each) and the results are merged, a later step's result for a node winning.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from dbt_cloud_gate.dbtcloud_api.client import AsyncDbtCloudClient, DbtCloudClient
from dbt_cloud_gate.dbtcloud_api.errors import DbtCloudError, DbtCloudNotFoundError
from dbt_cloud_gate.dbtcloud_api.models import ModelResult, Run, RunStatus, merge_run_results, parse_run_results

__all__ = ["aread_model_results", "has_model_results", "read_model_results"]

_LOG = logging.getLogger("dbt_cloud_gate.dbtcloud_api")


def has_model_results(run: Run | None) -> bool:
    """Whether a finished run can have run_results.json: it ran (Success or Error) and kept its artifacts."""
    return run is not None and run.status in (RunStatus.SUCCESS, RunStatus.ERROR) and run.artifacts_saved is not False


def _result_steps(run: Run | None) -> list[int | None]:
    """The ``step`` of each run_results.json to read: every finished step that can build models, in order; the
    default (last) step when the run's steps are unknown."""
    steps = run.model_steps() if run is not None else None
    return [None] if steps is None else list(steps)


def _parse_step(
    raw: bytes, run_id: int, step: int | None, log: logging.Logger | logging.LoggerAdapter[Any]
) -> list[ModelResult]:
    try:
        return parse_run_results(json.loads(raw))
    except (ValueError, TypeError, AttributeError) as exc:
        log.warning("run_results.json of dbt Cloud run %s (step %s) could not be read: %s", run_id, step, exc)
        return []


def _step_missing(
    exc: DbtCloudError, run_id: int, step: int | None, log: logging.Logger | logging.LoggerAdapter[Any]
) -> None:
    if isinstance(exc, DbtCloudNotFoundError):  # a step of a command this client does not know left none
        log.info("dbt Cloud run %s step %s has no run_results.json.", run_id, step)
    else:
        log.warning("No run_results.json for dbt Cloud run %s (step %s): %s", run_id, step, exc)


def read_model_results(
    client: DbtCloudClient,
    run_id: int,
    run: Run | None = None,
    log: logging.Logger | logging.LoggerAdapter[Any] = _LOG,
) -> list[ModelResult]:
    """The run's per-node results, merged over every step that can build models (a later step's result for a
    node wins). One artifact request per such step; one more to read the steps when ``run`` lacks them."""
    if run is None or not run.run_steps:
        try:
            run = client.get_run(run_id, ("run_steps",))
        except DbtCloudError as exc:
            log.warning("Could not read dbt Cloud run %s's steps (%s); reading its last step's results.", run_id, exc)
    per_step: list[list[ModelResult]] = []
    for step in _result_steps(run):
        try:
            raw = client.get_run_artifact(run_id, "run_results.json", step=step)
        except DbtCloudError as exc:
            _step_missing(exc, run_id, step, log)
            continue
        per_step.append(_parse_step(raw, run_id, step, log))
    return merge_run_results(per_step)


async def aread_model_results(
    client: AsyncDbtCloudClient,
    run_id: int,
    run: Run | None = None,
    log: logging.Logger | logging.LoggerAdapter[Any] = _LOG,
) -> list[ModelResult]:
    """The asyncio twin of :func:`read_model_results`."""
    if run is None or not run.run_steps:
        try:
            run = await client.get_run(run_id, ("run_steps",))
        except DbtCloudError as exc:
            log.warning("Could not read dbt Cloud run %s's steps (%s); reading its last step's results.", run_id, exc)
    per_step: list[list[ModelResult]] = []
    for step in _result_steps(run):
        try:
            raw = await client.get_run_artifact(run_id, "run_results.json", step=step)
        except DbtCloudError as exc:
            _step_missing(exc, run_id, step, log)
            continue
        per_step.append(_parse_step(raw, run_id, step, log))
    return merge_run_results(per_step)
