"""The fakesnow database the Snowflake load tests share: SRC.DBT.ORDERS (the dbt model) and SRC.MARTS.ORDERS (the
target), and the calls they make (a helper module, not a test)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect_snowflake import SnowflakeConnector

from dbt_cloud_gate.dbtcloud_api import ModelResult
from dbt_cloud_gate.models import DbtCloudRunResult, LoadReport, LoadTarget
from dbt_cloud_gate.settings import RECONCILE, LoadSettings, ReconcileSettings
from dbt_cloud_gate.stack.embedded import fakesnow_connector, fakesnow_server
from dbt_cloud_gate.tasks.reconcile import reconcile_snowflake_target
from dbt_cloud_gate.tasks.snowflake import load_snowflake_incremental

T0 = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
TARGET = LoadTarget(
    name="orders",
    source_model="orders",
    source_table="SRC.DBT.ORDERS",
    target_table="SRC.MARTS.ORDERS",
    key_columns=["ORDER_ID"],
    watermark_column="UPDATED_AT",
)
OK_MODELS = [ModelResult(unique_id="model.p.orders", name="orders", resource_type="model", status="success")]
AUDIT = "SRC.MARTS.DBT_CLOUD_GATE_AUDIT"


@contextmanager
def orders_database(tmp_path: Path) -> Iterator[SnowflakeConnector]:
    """A fakesnow server holding database SRC with an empty ORDERS table in schemas DBT and MARTS."""
    with fakesnow_server(db_path=str(tmp_path)) as settings:
        block = fakesnow_connector(settings, database="SRC")
        sql(block, "CREATE DATABASE IF NOT EXISTS SRC")
        for schema in ("DBT", "MARTS"):
            sql(block, f"CREATE SCHEMA IF NOT EXISTS SRC.{schema}")
            sql(
                block,
                f"CREATE TABLE SRC.{schema}.ORDERS (ORDER_ID NUMBER, AMOUNT NUMBER(10,2), UPDATED_AT TIMESTAMP_NTZ)",
            )
        yield block


def sql(block: SnowflakeConnector, statement: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
    connection = block.credentials.get_client(database=block.database, schema=block.schema_)
    try:
        cursor = connection.cursor()
        cursor.execute(statement, params)
        try:
            return list(cursor.fetchall())
        except Exception:
            return []
    finally:
        connection.close()


def naive(at: datetime) -> datetime:
    return at.astimezone(UTC).replace(tzinfo=None)


def add_source(block: SnowflakeConnector, order_id: int | None, amount: float, at: datetime | None) -> None:
    sql(
        block,
        "INSERT INTO SRC.DBT.ORDERS VALUES (%(id)s, %(amount)s, %(at)s)",
        {"id": order_id, "amount": amount, "at": naive(at) if at else None},
    )


def load(
    block: SnowflakeConnector,
    finished_at: datetime,
    run_id: int,
    *,
    target: LoadTarget = TARGET,
    models: list[ModelResult] = OK_MODELS,
    **settings: Any,
) -> Any:
    # Exact windows unless a test asks for a lookback (the task's own default is LOAD.lookback_seconds).
    return load_snowflake_incremental(
        block,
        target,
        dbt_success(run_id, finished_at, models),
        pipeline="test",
        settings=LoadSettings(**{"lookback_seconds": 0, **settings}),
    )


def dbt_success(run_id: int, finished_at: datetime, models: list[ModelResult]) -> DbtCloudRunResult:
    """A successful run of job 7 in account 1, as the flows hand it to the loads."""
    return DbtCloudRunResult(
        run_id=run_id,
        job_id=7,
        account_id=1,
        status="Success",
        status_code=10,
        started_at=None,
        finished_at=finished_at,
        duration_seconds=None,
        url=f"https://cloud.getdbt.com/deploy/1/projects/1/runs/{run_id}/",
        cause=None,
        models=models,
    )


def reconcile(
    block: SnowflakeConnector, settings: ReconcileSettings = RECONCILE, *, target: LoadTarget = TARGET, **load: Any
) -> LoadReport:
    return reconcile_snowflake_target(block, target, pipeline="test", settings=LoadSettings(**load), reconcile=settings)


def target_rows(block: SnowflakeConnector, table: str = "SRC.MARTS.ORDERS") -> list[tuple[Any, ...]]:
    return sql(block, f"SELECT ORDER_ID, AMOUNT FROM {table} ORDER BY ORDER_ID, AMOUNT")
