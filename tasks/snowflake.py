"""The incremental load task: a target's new and changed rows up to a successful dbt run's ``finished_at``.

The load itself (plan, execute on a cursor, audit; one transaction behind the target's write lock) lives in
``dbt_cloud_gate.loads``; this module holds the Prefect task only.
"""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run as runtime_flow_run
from prefect_snowflake import SnowflakeConnector

from dbt_cloud_gate.loads import DbtRunRef, ensure_model_built, plan_load, run_load
from dbt_cloud_gate.models import DbtCloudRunResult, LoadReport, LoadTarget
from dbt_cloud_gate.settings import LOAD, LoadSettings

__all__ = ["load_snowflake_incremental"]


@task(name="load-snowflake-incremental", cache_policy=NO_CACHE)
def load_snowflake_incremental(
    connector: SnowflakeConnector,
    target: LoadTarget,
    dbt: DbtCloudRunResult,
    *,
    pipeline: str,
    settings: LoadSettings = LOAD,
) -> LoadReport:
    """Load ``target`` up to the successful dbt run's ``finished_at`` and write its audit row, in one transaction.

    ``settings.lookback_seconds`` applies when the target does not set its own.
    """
    if settings.check_model_built:
        ensure_model_built(dbt.models, target.source_model)
    plan = plan_load(
        target,
        kind="incremental",
        pipeline=pipeline,
        settings=settings,
        run=DbtRunRef(run_id=dbt.run_id, job_id=dbt.job_id, account_id=dbt.account_id, finished_at=dbt.finished_at),
        flow_run_id=str(runtime_flow_run.get_id() or ""),
    )
    return run_load(connector, plan, get_run_logger())
