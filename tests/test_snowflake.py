"""Snowflake loads against a fakesnow server: the window, the upsert, the guards, the audit, the transaction."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prefect_snowflake import SnowflakeConnector

from dbtcloud_api import ModelResult
from flows.embedded import fakesnow_connector, fakesnow_server
from tasks.snowflake import (
    LoadTarget,
    StaleDataError,
    check_model_built,
    load_incremental,
    quote_identifier,
    quote_table,
)

pytestmark = pytest.mark.usefixtures("prefect_harness")

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


@pytest.fixture
def connector(tmp_path: Path) -> Iterator[SnowflakeConnector]:
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
    with block.get_connection() as connection:
        cursor = connection.cursor()
        cursor.execute(statement, params)
        try:
            return list(cursor.fetchall())
        except Exception:
            return []


def add_source(block: SnowflakeConnector, order_id: int, amount: float, at: datetime) -> None:
    sql(
        block,
        "INSERT INTO SRC.DBT.ORDERS VALUES (%(id)s, %(amount)s, %(at)s)",
        {"id": order_id, "amount": amount, "at": at.astimezone(UTC).replace(tzinfo=None)},
    )


def load(block: SnowflakeConnector, finished_at: datetime, run_id: int, **options: Any) -> Any:
    arguments: dict[str, Any] = {"models": OK_MODELS, **options}
    return load_incremental(
        block,
        options.pop("target", TARGET),
        dbt_run_id=run_id,
        dbt_job_id=7,
        dbt_account_id=1,
        dbt_finished_at=finished_at,
        pipeline="test",
        **{k: v for k, v in arguments.items() if k != "target"},
    )


def target_rows(block: SnowflakeConnector) -> list[tuple[Any, ...]]:
    return sql(block, "SELECT ORDER_ID, AMOUNT FROM SRC.MARTS.ORDERS ORDER BY ORDER_ID")


def audit_rows(block: SnowflakeConnector) -> list[tuple[Any, ...]]:
    # WATERMARK_FROM IS NULL, not the value: fakesnow's server mode returns a NULL timestamp as the epoch.
    return sql(
        block,
        "SELECT DBT_RUN_ID, DBT_JOB_ID, DBT_FINISHED_AT, WATERMARK_FROM IS NULL, WATERMARK_TO, ROWS_LOADED, "
        "PIPELINE, TARGET FROM SRC.MARTS.DBT_CLOUD_GATE_AUDIT ORDER BY DBT_RUN_ID",
    )


@pytest.mark.parametrize(
    ("given", "quoted"),
    [("orders", '"ORDERS"'), ("Orders_2$", '"ORDERS_2$"'), ('"Mixed Case"', '"Mixed Case"'), ("_x", '"_X"')],
)
def test_identifiers_are_quoted(given: str, quoted: str) -> None:
    assert quote_identifier(given) == quoted


@pytest.mark.parametrize("bad", ["orders; DROP TABLE x", 'a"b', "1abc", "", "a b", '"a"b"', "x--"])
def test_bad_identifiers_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="not a valid Snowflake identifier"):
        quote_identifier(bad)


def test_table_names() -> None:
    assert quote_table("db.sch.tbl") == '"DB"."SCH"."TBL"'
    assert quote_table('db."My Schema".tbl') == '"DB"."My Schema"."TBL"'
    for bad in ("a.b.c.d", "a..b", "db.sch.tbl; select 1"):
        with pytest.raises(ValueError):
            quote_table(bad)
    with pytest.raises(ValueError, match="identifier"):
        LoadTarget(
            name="x",
            source_model="x",
            source_table="a.b",
            target_table="a.b;drop",
            key_columns=["k"],
            watermark_column="w",
        )


def test_load_window_audit_and_idempotence(connector: SnowflakeConnector) -> None:
    add_source(connector, 1, 10, T0 - timedelta(minutes=5))
    add_source(connector, 2, 20, T0)  # exactly at finished_at: included
    add_source(connector, 3, 30, T0 + timedelta(microseconds=1))  # after finished_at: not yet
    report = load(connector, T0, run_id=501)
    assert report.rows_loaded == 2 and report.watermark_from is None and report.watermark_to == T0
    assert target_rows(connector) == [(1, 10), (2, 20)]
    audit = audit_rows(connector)
    assert len(audit) == 1
    run_id, job_id, finished, no_lower_bound, wm_to, rows, pipeline, target = audit[0]
    assert (run_id, job_id, rows, pipeline, target) == (501, 7, 2, "test", '"SRC"."MARTS"."ORDERS"')
    assert finished == T0.replace(tzinfo=None) and wm_to == T0.replace(tzinfo=None) and no_lower_bound
    # The same cycle again: refused by the guard, nothing loaded, no audit row.
    with pytest.raises(StaleDataError, match="not after the last load"):
        load(connector, T0, run_id=501)
    # With the guard off, the window is empty: nothing is loaded twice.
    assert load(connector, T0, run_id=501, check_newer_run=False).rows_loaded == 0
    assert target_rows(connector) == [(1, 10), (2, 20)]
    # The next run takes what changed after the last watermark, upserting on the key.
    add_source(connector, 2, 25, T0 + timedelta(minutes=1))
    add_source(connector, 2, 26, T0 + timedelta(minutes=2))  # two versions of one key: the latest wins
    report = load(connector, T0 + timedelta(minutes=10), run_id=502)
    assert report.rows_loaded == 2 and report.watermark_from == T0
    assert target_rows(connector) == [(1, 10), (2, 26), (3, 30)]
    assert [row[0] for row in audit_rows(connector)] == [501, 501, 502]


def test_model_guard(connector: SnowflakeConnector) -> None:
    add_source(connector, 1, 10, T0 - timedelta(minutes=5))
    failed = [ModelResult(unique_id="model.p.orders", name="orders", resource_type="model", status="error")]
    with pytest.raises(StaleDataError, match="ended 'error'"):
        load(connector, T0, run_id=1, models=failed)
    other = [ModelResult(unique_id="model.p.customers", name="customers", resource_type="model", status="success")]
    with pytest.raises(StaleDataError, match="not built in this run"):
        load(connector, T0, run_id=1, models=other)
    with pytest.raises(StaleDataError, match="no per-model results"):
        check_model_built([], "orders")
    assert target_rows(connector) == []
    assert load(connector, T0, run_id=1, models=failed, check_model_built_ok=False).rows_loaded == 1


def test_failure_mid_transaction_leaves_nothing(connector: SnowflakeConnector) -> None:
    add_source(connector, 1, 10, T0 - timedelta(minutes=5))
    load(connector, T0, run_id=1)
    add_source(connector, 1, 11, T0 + timedelta(minutes=1))
    # A target without AMOUNT: the DELETE runs, then the INSERT fails; the DELETE must be rolled back.
    sql(connector, "CREATE TABLE SRC.MARTS.BROKEN (ORDER_ID NUMBER, UPDATED_AT TIMESTAMP_NTZ)")
    sql(connector, "INSERT INTO SRC.MARTS.BROKEN VALUES (1, %(at)s)", {"at": T0.replace(tzinfo=None)})
    broken = TARGET.model_copy(update={"target_table": "SRC.MARTS.BROKEN", "name": "broken"})
    with pytest.raises(Exception):  # noqa: B017 - the driver's error type varies
        load(connector, T0 + timedelta(minutes=5), run_id=2, target=broken)
    assert sql(connector, "SELECT COUNT(*) FROM SRC.MARTS.BROKEN") == [(1,)]
    assert [row[0] for row in audit_rows(connector)] == [1]


def test_missing_key_column_is_a_clear_error(connector: SnowflakeConnector) -> None:
    wrong = TARGET.model_copy(update={"key_columns": ["ID"]})
    with pytest.raises(ValueError, match="not among the copied columns"):
        load(connector, T0, run_id=1, target=wrong)
    assert audit_rows(connector) == []
