"""The preflight: before an ETL flow triggers its dbt Cloud job, check everything its loads will need.

For each pipeline (a job and its targets): the Snowflake side (:mod:`.snowflake`: connection, tables, columns and
types, rights) and, with ``LoadSettings.check_model_built``, the dbt side (:mod:`.models`: the job builds each
``source_model``). Every problem is one line naming the parameter (``targets[1].source_table``), the full object
name and the fix; :func:`raise_for_problems` turns them into one ``PreflightFailed``. It costs a few metadata
statements per target and two dbt Cloud requests per job, no warehouse-heavy query. ``LoadSettings.preflight``
turns it off. Prefect-free; Prefect's SnowflakeConnector is only a type hint.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from dbt_cloud_gate.dbtcloud_api import DbtCloudClient
from dbt_cloud_gate.errors import PreflightFailed
from dbt_cloud_gate.models import LoadTarget
from dbt_cloud_gate.preflight.findings import Findings, Problem
from dbt_cloud_gate.preflight.models import check_source_models
from dbt_cloud_gate.preflight.snowflake import check_targets
from dbt_cloud_gate.settings import LoadSettings

if TYPE_CHECKING:
    from prefect_snowflake import SnowflakeConnector

__all__ = ["Findings", "PreflightItem", "Problem", "raise_for_problems", "run_preflight"]


@dataclass(frozen=True)
class PreflightItem:
    """One pipeline to check: its job, its targets, and how the flow's parameters name the list of targets
    (``targets``, or ``pipelines[2].targets``)."""

    parameter: str
    job_id: int
    targets: list[LoadTarget]


def run_preflight(
    connector: SnowflakeConnector,
    client: DbtCloudClient | None,
    items: list[PreflightItem],
    settings: LoadSettings,
) -> Findings:
    """Check every item; ``client`` None skips the dbt side. Raises nothing: the findings say what is wrong."""
    found = Findings()
    # One Snowflake session for every pipeline: they share the connector.
    targets = [(f"{item.parameter}[{index}]", target) for item in items for index, target in enumerate(item.targets)]
    check_targets(connector, targets, settings, found)
    if client is not None and settings.check_model_built:
        for item in items:
            check_source_models(client, item.job_id, item.targets, item.parameter, found)
    return found


def raise_for_problems(found: Findings, what: str) -> None:
    """Raise one ``PreflightFailed`` listing every problem of ``found`` (``what``: the pipeline(s) checked)."""
    if not found.problems:
        return
    lines = found.lines
    raise PreflightFailed(
        f"Preflight of {what} found {len(lines)} problem(s); nothing was triggered:\n"
        + "\n".join(f"- {line}" for line in lines),
        lines,
    )
