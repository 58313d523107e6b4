"""The reconcile flow: bring each target in line with its source, on its own schedule.

Incremental loads see only rows inside their watermark window (plus the lookback). ``dbt_cloud_reconcile``
compares every source row up to the last audited watermark, and every row without a watermark, with the target
by key and content, writes what is missing or different and, with ``propagate_deletes``, deletes target keys
gone from the source. Each target is attempted; the flow fails after all if any failed, naming each.
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect_snowflake import SnowflakeConnector

from dbt_cloud_gate.blocks.snowflake import resolve_connector
from dbt_cloud_gate.errors import EtlFailed
from dbt_cloud_gate.loads import DEFAULT_LOCK_TIMEOUT_SECONDS, DEFAULT_STATEMENT_TIMEOUT_SECONDS, attempt_each
from dbt_cloud_gate.models import LoadReport, LoadTarget
from dbt_cloud_gate.publish import artifact_slug
from dbt_cloud_gate.settings import LoadSettings
from dbt_cloud_gate.tasks.reconcile import reconcile_snowflake_target

__all__ = ["dbt_cloud_reconcile"]


@flow(name="dbt-cloud-reconcile")
def dbt_cloud_reconcile(
    targets: list[LoadTarget],
    snowflake: SnowflakeConnector | str,
    *,
    pipeline: str = "reconcile",
    propagate_deletes: bool = False,
    audit_table: str | None = None,
    lock_timeout_seconds: float = DEFAULT_LOCK_TIMEOUT_SECONDS,
    statement_timeout_seconds: float = DEFAULT_STATEMENT_TIMEOUT_SECONDS,
) -> list[LoadReport]:
    """Reconcile every target with its source; fail after all if any failed, naming each.

    Args:
        targets: The loads to reconcile, as given to the ETL flow.
        snowflake: A prefect-snowflake SnowflakeConnector block, or the name of a saved one.
        pipeline: A label for the audit history and the artifact.
        propagate_deletes: Delete target rows whose key no longer exists in the source.
        audit_table: The audit table; default: DBT_CLOUD_GATE_AUDIT beside each target.
        lock_timeout_seconds: How long each target waits for its write lock before failing.
        statement_timeout_seconds: The longest any one statement may run.
    """
    log = get_run_logger()
    if not targets:
        raise ValueError("targets is empty: give at least one LoadTarget to reconcile.")
    # The flat parameters are the deployment's form: checked here, as one type, before any target is touched.
    settings = LoadSettings(
        lock_timeout_seconds=lock_timeout_seconds,
        statement_timeout_seconds=statement_timeout_seconds,
        audit_table=audit_table,
    )
    connector = resolve_connector(snowflake)
    reports, failures = attempt_each(
        targets,
        lambda target: reconcile_snowflake_target(
            connector, target, pipeline=pipeline, settings=settings, propagate_deletes=propagate_deletes
        ),
        log,
        "Reconcile",
    )
    table = "\n".join(
        f"| {r.target} | {r.target_table} | {r.rows_loaded} | {r.rows_updated} | {r.rows_deleted} | "
        f"{r.rows_duplicates_removed} | {r.rows_null_key} | {r.watermark_to.isoformat() if r.watermark_to else ''} |"
        for r in reports
    )
    create_markdown_artifact(
        key=f"dbt-cloud-reconcile-{artifact_slug(pipeline)}",
        markdown=(
            f"## Reconcile {pipeline}\n\n| target | table | rows written | of which changed | deleted | "
            "duplicates removed | skipped: NULL key | up to |\n|---|---|---|---|---|---|---|---|\n"
            + table
            + ("\n\n### Failed\n\n" + "\n".join(f"- {f}" for f in failures) if failures else "")
        ),
        description=f"Reconcile of {pipeline}",
    )
    if failures:
        raise EtlFailed(f"{len(failures)} of {len(targets)} reconcile(s) failed: " + "; ".join(failures))
    return reports
