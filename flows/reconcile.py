"""The reconcile flow: bring each target in line with its source, on its own schedule.

Incremental loads see only rows inside their watermark window (plus the lookback). ``dbt_cloud_reconcile``
compares every source row up to the last audited watermark, and every row without a watermark, with the target
by key and content, writes what is missing or different and, with ``reconcile.propagate_deletes``, deletes target
keys gone from the source, behind three guards (another registered source, an empty source, a ceiling). A dry run
reports what each target would get and commits nothing. Each target is attempted; the flow fails after all if any
failed, naming each.
"""

from __future__ import annotations

from prefect import get_run_logger
from prefect_snowflake import SnowflakeConnector

from dbt_cloud_gate.blocks.snowflake import resolve_connector
from dbt_cloud_gate.errors import EtlFailed
from dbt_cloud_gate.loads import attempt_each
from dbt_cloud_gate.models import LoadReport, LoadTarget
from dbt_cloud_gate.publish import publish_reconcile_report
from dbt_cloud_gate.settings import LOAD, RECONCILE, LoadSettings, ReconcileSettings
from dbt_cloud_gate.sync_flow import gate_flow
from dbt_cloud_gate.tasks.reconcile import reconcile_snowflake_target
from dbt_cloud_gate.variables import from_variable

__all__ = ["dbt_cloud_reconcile"]


@gate_flow(name="dbt-cloud-reconcile")
def dbt_cloud_reconcile(
    targets: list[LoadTarget] | str,
    snowflake: SnowflakeConnector | str,
    *,
    pipeline: str = "reconcile",
    reconcile: ReconcileSettings | None = None,
    load: LoadSettings | None = None,
) -> list[LoadReport]:
    """Reconcile every target with its source; fail after all if any failed, naming each.

    Args:
        targets: The loads to reconcile, as given to the ETL flow (a list, or the name of a Prefect variable
            holding it as JSON).
        snowflake: A prefect-snowflake SnowflakeConnector block, or the name of a saved one.
        pipeline: A label for the audit history and the artifact.
        reconcile: What the reconcile may change: propagate_deletes (refused when another source feeds the target
            or the source is empty), its ceiling (max_delete_fraction, max_deletes), and dry_run; empty: defaults.
        load: Of the load settings, the lock and statement timeouts and the audit table apply; empty: defaults.
    """
    log = get_run_logger()
    targets = from_variable(targets, LoadTarget, "targets")
    if not targets:
        raise ValueError("targets is empty: give at least one LoadTarget to reconcile.")
    reconcile, load = reconcile or RECONCILE, load or LOAD
    connector = resolve_connector(snowflake)
    reports, failures = attempt_each(
        targets,
        lambda target: reconcile_snowflake_target(
            connector, target, pipeline=pipeline, settings=load, reconcile=reconcile
        ),
        log,
        "Reconcile",
    )
    publish_reconcile_report(pipeline, reports, failures, dry_run=reconcile.dry_run)
    if failures:
        raise EtlFailed(f"{len(failures)} of {len(targets)} reconcile(s) failed: " + "; ".join(failures))
    return reports
