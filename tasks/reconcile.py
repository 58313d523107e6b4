"""The reconcile task: a full key and content diff of a load's source against its target.

Incremental loads only see rows inside their watermark window. A reconcile compares every source row up to the
last audited watermark (and every row without a watermark) with the target, writes what is missing or
different, and, with ``propagate_deletes``, deletes target keys that no longer exist in the source. It takes the
same lock and writes an audit row of kind ``reconcile``; it does not move the incremental watermark.
"""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect_snowflake import SnowflakeConnector

from dbt_cloud_gate.models import LoadReport, LoadTarget
from dbt_cloud_gate.tasks.snowflake import DEFAULT_LOCK_TIMEOUT_SECONDS, DEFAULT_STATEMENT_TIMEOUT_SECONDS, run_load


@task(name="reconcile-snowflake-target", cache_policy=NO_CACHE)
def reconcile_target(
    connector: SnowflakeConnector,
    target: LoadTarget,
    *,
    pipeline: str,
    audit_table: str | None = None,
    propagate_deletes: bool = False,
    lock_timeout_seconds: float = DEFAULT_LOCK_TIMEOUT_SECONDS,
    statement_timeout_seconds: float = DEFAULT_STATEMENT_TIMEOUT_SECONDS,
) -> LoadReport:
    """Bring ``target`` in line with its source up to the last audited watermark, and audit it."""
    return run_load(
        connector,
        target,
        kind="reconcile",
        pipeline=pipeline,
        audit_table=audit_table,
        propagate_deletes=propagate_deletes,
        lock_timeout_seconds=lock_timeout_seconds,
        statement_timeout_seconds=statement_timeout_seconds,
        log=get_run_logger(),
    )
