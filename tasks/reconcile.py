"""The reconcile task: a full key and content diff of a load's source against its target.

Incremental loads only see rows inside their watermark window. A reconcile compares every source row up to the
last audited watermark (and every row without a watermark) with the target, writes what is missing or
different, and, with ``propagate_deletes``, deletes target keys that no longer exist in the source (behind the
guards of ``dbt_cloud_gate.reconcile_guard``). It takes the same lock, registers its source and writes an audit
row of kind ``reconcile`` (a dry run commits none of it); it does not move the incremental watermark. The work
itself is in ``dbt_cloud_gate.loads``; this module holds the Prefect task only.
"""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run as runtime_flow_run
from prefect_snowflake import SnowflakeConnector

from dbt_cloud_gate.loads import plan_load, run_load
from dbt_cloud_gate.models import LoadReport, LoadTarget
from dbt_cloud_gate.settings import LOAD, RECONCILE, LoadSettings, ReconcileSettings

__all__ = ["reconcile_snowflake_target"]


# Like load_snowflake_incremental in shape only (a task that plans and runs one load): the plans differ.
@task(name="reconcile-snowflake-target", cache_policy=NO_CACHE)
def reconcile_snowflake_target(
    connector: SnowflakeConnector,
    target: LoadTarget,
    *,
    pipeline: str,
    settings: LoadSettings = LOAD,
    reconcile: ReconcileSettings = RECONCILE,
) -> LoadReport:
    """Bring ``target`` in line with its source up to the last audited watermark, and audit it.

    Of ``settings``, the timeouts and the audit table apply (a reconcile has no lookback and no dbt run);
    ``reconcile`` says whether it deletes, how much at most, and whether it only counts (a dry run).
    """
    plan = plan_load(
        target,
        kind="reconcile",
        pipeline=pipeline,
        settings=settings,
        reconcile=reconcile,
        flow_run_id=str(runtime_flow_run.get_id() or ""),
    )
    return run_load(connector, plan, get_run_logger())
