"""Snowflake loads against a fakesnow server: window and lookback, compare-before-write, invalid rows, two
sources, identifiers, the lock and the guard in one transaction, timeouts, reconcile, the audit."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prefect_snowflake import SnowflakeConnector

from dbt_cloud_gate.dbtcloud_api import ModelResult
from dbt_cloud_gate.errors import InvalidRowsError, LoadLockTimeout, StaleDataError
from dbt_cloud_gate.loads import ensure_model_built, quote_identifier, quote_table
from dbt_cloud_gate.models import LoadTarget
from dbt_cloud_gate.settings import LoadSettings, ReconcileSettings
from tests.snowflake_orders import (
    AUDIT,
    T0,
    TARGET,
    add_source,
    load,
    naive,
    orders_database,
    reconcile,
    sql,
    target_rows,
)

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.fixture
def connector(tmp_path: Path) -> Iterator[SnowflakeConnector]:
    with orders_database(tmp_path) as block:
        yield block


def audit_rows(block: SnowflakeConnector, kind: str = "incremental") -> list[tuple[Any, ...]]:
    # WATERMARK_FROM IS NULL, not the value: fakesnow's server mode returns a NULL timestamp as the epoch.
    return sql(
        block,
        "SELECT DBT_RUN_ID, DBT_JOB_ID, DBT_FINISHED_AT, WATERMARK_FROM IS NULL, WATERMARK_TO, ROWS_LOADED, "
        f"PIPELINE, TARGET, SOURCE_TABLE FROM {AUDIT} WHERE LOAD_KIND = %(kind)s ORDER BY LOADED_AT",
        {"kind": kind},
    )


@pytest.mark.parametrize(
    ("given", "quoted"),
    [
        ("orders", '"ORDERS"'),
        ("Orders_2$", '"ORDERS_2$"'),
        ('"Mixed Case"', '"Mixed Case"'),
        ("_x", '"_X"'),
        ('"a""b"', '"a""b"'),
        ('"pct%"', '"pct%"'),
        ('"order id"', '"order id"'),
    ],
)
def test_identifiers_are_quoted(given: str, quoted: str) -> None:
    assert quote_identifier(given) == quoted


@pytest.mark.parametrize("bad", ["orders; DROP TABLE x", 'a"b', "1abc", "", "a b", '"a"b"', "x--", '""', '"a\nb"'])
def test_bad_identifiers_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match=r"identifier|control character|1 to 255"):
        quote_identifier(bad)


def test_a_name_with_a_space_gets_a_remedy() -> None:
    with pytest.raises(ValueError, match='in double quotes, like "Mixed Case" or "order id"'):
        quote_identifier("order id")


def test_table_names() -> None:
    assert quote_table("db.sch.tbl") == '"DB"."SCH"."TBL"'
    assert quote_table('db."My Schema".tbl') == '"DB"."My Schema"."TBL"'
    assert quote_table('db."my.schema"."t%"') == '"DB"."my.schema"."t%"'
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


def test_load_targets_refuse_nan_and_negative_lookback() -> None:
    for bad in (float("nan"), float("inf"), -1):
        with pytest.raises(ValueError):
            TARGET.model_validate({**TARGET.model_dump(), "lookback_seconds": bad})


def test_load_window_audit_and_idempotence(connector: SnowflakeConnector) -> None:
    add_source(connector, 1, 10, T0 - timedelta(minutes=5))
    add_source(connector, 2, 20, T0)  # exactly at finished_at: included
    add_source(connector, 3, 30, T0 + timedelta(microseconds=1))  # after finished_at: not yet
    report = load(connector, T0, run_id=501)
    assert report.rows_loaded == 2 and report.watermark_from is None and report.watermark_to == T0
    assert report.rows_future_watermark == 1  # counted and reported, loaded by a later run
    assert target_rows(connector) == [(1, 10), (2, 20)]
    audit = audit_rows(connector)
    assert len(audit) == 1
    run_id, job_id, finished, no_lower_bound, wm_to, rows, pipeline, target, source = audit[0]
    assert (run_id, job_id, rows, pipeline, target) == (501, 7, 2, "test", '"SRC"."MARTS"."ORDERS"')
    assert source == '"SRC"."DBT"."ORDERS"'
    assert finished == naive(T0) and wm_to == naive(T0) and no_lower_bound
    # The same run again (a retry of the flow after another target failed): already loaded, nothing to do.
    repeat = load(connector, T0, run_id=501)
    assert repeat.already_loaded and repeat.rows_loaded == 0
    # Another run no newer than the last one loaded: refused by the guard, nothing loaded, no audit row.
    with pytest.raises(StaleDataError, match="not after the last load"):
        load(connector, T0, run_id=500)
    # With the guard off and a lookback, the rows are read again but nothing changed: nothing written.
    again = load(connector, T0, run_id=500, check_newer_run=False, lookback_seconds=3600)
    assert again.rows_loaded == 0 and again.watermark_from == T0 - timedelta(hours=1)
    assert target_rows(connector) == [(1, 10), (2, 20)]
    # The next run takes what changed after the last watermark, upserting on the key.
    add_source(connector, 2, 25, T0 + timedelta(minutes=1))
    add_source(connector, 2, 26, T0 + timedelta(minutes=2))  # two versions of one key: the latest wins
    report = load(connector, T0 + timedelta(minutes=10), run_id=502)
    assert report.rows_loaded == 2 and report.rows_updated == 1 and report.watermark_from == T0
    assert target_rows(connector) == [(1, 10), (2, 26), (3, 30)]
    assert [row[0] for row in audit_rows(connector)] == [501, 500, 502]


def test_late_rows_are_taken_by_the_lookback(connector: SnowflakeConnector) -> None:
    add_source(connector, 1, 10, T0 - timedelta(minutes=5))
    load(connector, T0, run_id=1)
    # A row changed in the source while the last dbt run ran: its timestamp is before that run's finished_at,
    # but it first appears in the model in the next run.
    add_source(connector, 2, 20, T0 - timedelta(minutes=1))
    exact = load(connector, T0 + timedelta(minutes=30), run_id=2, check_newer_run=False)
    assert exact.rows_loaded == 0 and target_rows(connector) == [(1, 10)]  # without lookback: never loaded
    late = load(connector, T0 + timedelta(minutes=31), run_id=3, lookback_seconds=3600)
    assert late.rows_loaded == 1 and late.rows_updated == 0
    assert target_rows(connector) == [(1, 10), (2, 20)]
    # The target's own lookback wins over the flow's default.
    add_source(connector, 3, 30, T0 - timedelta(minutes=2))
    own = TARGET.model_copy(update={"lookback_seconds": 0})
    assert load(connector, T0 + timedelta(minutes=32), run_id=4, target=own, lookback_seconds=3600).rows_loaded == 0


def test_null_and_future_watermarks_are_counted_and_policed(
    connector: SnowflakeConnector, caplog: pytest.LogCaptureFixture
) -> None:
    add_source(connector, 1, 10, T0 - timedelta(minutes=5))
    add_source(connector, 2, 20, None)
    add_source(connector, 3, 30, datetime(9999, 1, 1, tzinfo=UTC))
    strict = TARGET.model_copy(update={"on_invalid_rows": "fail"})
    with pytest.raises(InvalidRowsError, match=r"1 row.s. with a NULL watermark, 1 row.s. with a watermark after"):
        load(connector, T0, run_id=1, target=strict)
    assert target_rows(connector) == [] and audit_rows(connector) == []
    report = load(connector, T0, run_id=1)
    assert (report.rows_loaded, report.rows_null_watermark, report.rows_future_watermark) == (1, 1, 1)
    assert "skipped 1 row(s) with a NULL watermark" in caplog.text
    counts = sql(connector, f"SELECT ROWS_NULL_WATERMARK, ROWS_FUTURE_WATERMARK, ROWS_NULL_KEY FROM {AUDIT}")
    assert counts == [(1, 1, 0)]


def test_null_keys_are_refused_and_never_duplicated(connector: SnowflakeConnector) -> None:
    add_source(connector, None, 10, T0 - timedelta(minutes=5))
    add_source(connector, 1, 10, T0 - timedelta(minutes=5))
    first = load(connector, T0, run_id=1)
    assert (first.rows_loaded, first.rows_null_key) == (1, 1)
    sql(connector, "UPDATE SRC.DBT.ORDERS SET AMOUNT = 11, UPDATED_AT = %(at)s", {"at": naive(T0 + timedelta(1))})
    second = load(connector, T0 + timedelta(days=2), run_id=2)
    assert (second.rows_loaded, second.rows_updated, second.rows_null_key) == (1, 1, 1)
    assert target_rows(connector) == [(1, 11)]


def test_tied_watermarks_pick_the_same_winner_whatever_the_row_order(connector: SnowflakeConnector) -> None:
    sql(connector, "CREATE TABLE SRC.DBT.ORDERS2 (ORDER_ID NUMBER, AMOUNT NUMBER(10,2), UPDATED_AT TIMESTAMP_NTZ)")
    sql(connector, "CREATE TABLE SRC.MARTS.ORDERS2 (ORDER_ID NUMBER, AMOUNT NUMBER(10,2), UPDATED_AT TIMESTAMP_NTZ)")
    at = naive(T0 - timedelta(minutes=1))
    for amount in (7, 5):
        sql(connector, "INSERT INTO SRC.DBT.ORDERS VALUES (1, %(a)s, %(at)s)", {"a": amount, "at": at})
    for amount in (5, 7):
        sql(connector, "INSERT INTO SRC.DBT.ORDERS2 VALUES (1, %(a)s, %(at)s)", {"a": amount, "at": at})
    other = TARGET.model_copy(update={"source_table": "SRC.DBT.ORDERS2", "target_table": "SRC.MARTS.ORDERS2"})
    load(connector, T0, run_id=1)
    load(connector, T0, run_id=1, target=other)
    assert target_rows(connector) == target_rows(connector, "SRC.MARTS.ORDERS2") == [(1, 5)]


def test_two_sources_into_one_target_keep_a_watermark_each(connector: SnowflakeConnector) -> None:
    sql(connector, "CREATE TABLE SRC.DBT.ORDERS_EU (ORDER_ID NUMBER, AMOUNT NUMBER(10,2), UPDATED_AT TIMESTAMP_NTZ)")
    eu = TARGET.model_copy(update={"name": "orders-eu", "source_table": "SRC.DBT.ORDERS_EU"})
    add_source(connector, 1, 10, T0 - timedelta(minutes=5))
    load(connector, T0, run_id=1)
    sql(connector, "INSERT INTO SRC.DBT.ORDERS_EU VALUES (2, 20, %(at)s)", {"at": naive(T0 - timedelta(minutes=3))})
    # The EU job's run finished earlier than the first job's; its rows must still load.
    report = load(connector, T0 - timedelta(minutes=1), run_id=7, target=eu)
    assert report.rows_loaded == 1 and report.watermark_from is None
    assert target_rows(connector) == [(1, 10), (2, 20)]


def test_every_name_snowflake_accepts_in_quotes_works(connector: SnowflakeConnector) -> None:
    columns = '"order id" NUMBER, "amount" NUMBER, "pct%" NUMBER, "Mixed" VARCHAR, "updated_at" TIMESTAMP_NTZ'
    sql(connector, f'CREATE TABLE SRC.DBT."odd %table" ({columns})')
    sql(connector, f'CREATE TABLE SRC.MARTS."odd %table" ({columns})')
    sql(
        connector,
        'INSERT INTO SRC.DBT."odd %%table" VALUES (1, 2, 3, %(m)s, %(at)s)',
        {"m": "x", "at": naive(T0 - timedelta(minutes=1))},
    )
    odd = LoadTarget(
        name="odd",
        source_model="orders",
        source_table='SRC.DBT."odd %table"',
        target_table='SRC.MARTS."odd %table"',
        key_columns=['"order id"'],
        watermark_column='"updated_at"',
    )
    assert load(connector, T0, run_id=1, target=odd).rows_loaded == 1
    assert sql(connector, 'SELECT "order id", "pct%%", "Mixed" FROM SRC.MARTS."odd %%table"', {"x": 1}) == [(1, 3, "x")]
    # A plain name resolves upper-cased, as in Snowflake: the error says how to name the quoted column.
    plain = odd.model_copy(update={"key_columns": ["order_id"], "watermark_column": "updated_at"})
    with pytest.raises(
        ValueError, match=r"'UPDATED_AT' \(the source has 'updated_at': write it in double quotes, '\"updated_at\"'"
    ):
        load(connector, T0, run_id=2, target=plain, check_newer_run=False)


def test_model_guard(connector: SnowflakeConnector) -> None:
    add_source(connector, 1, 10, T0 - timedelta(minutes=5))
    failed = [ModelResult(unique_id="model.p.orders", name="orders", resource_type="model", status="error")]
    with pytest.raises(StaleDataError, match="ended 'error'"):
        load(connector, T0, run_id=1, models=failed)
    other = [ModelResult(unique_id="model.p.customers", name="customers", resource_type="model", status="success")]
    with pytest.raises(StaleDataError, match="not built in this run"):
        load(connector, T0, run_id=1, models=other)
    with pytest.raises(StaleDataError, match="no per-model results"):
        ensure_model_built([], "orders")
    assert target_rows(connector) == []
    assert load(connector, T0, run_id=1, models=failed, check_model_built=False).rows_loaded == 1


def test_failure_mid_transaction_leaves_nothing(connector: SnowflakeConnector) -> None:
    add_source(connector, 1, 10, T0 - timedelta(minutes=5))
    load(connector, T0, run_id=1)
    add_source(connector, 1, 11, T0 + timedelta(minutes=1))
    # A target without AMOUNT: the DELETE runs, then the INSERT fails; the DELETE must be rolled back.
    sql(connector, "CREATE TABLE SRC.MARTS.BROKEN (ORDER_ID NUMBER, UPDATED_AT TIMESTAMP_NTZ)")
    sql(connector, "INSERT INTO SRC.MARTS.BROKEN VALUES (1, %(at)s)", {"at": naive(T0)})
    broken = TARGET.model_copy(update={"target_table": "SRC.MARTS.BROKEN", "name": "broken", "columns": None})
    with pytest.raises(Exception):  # noqa: B017 - the driver's error type varies
        load(connector, T0 + timedelta(minutes=5), run_id=2, target=broken)
    assert sql(connector, "SELECT COUNT(*) FROM SRC.MARTS.BROKEN") == [(1,)]
    assert [row[0] for row in audit_rows(connector)] == [1]


def test_missing_key_column_is_a_clear_error(connector: SnowflakeConnector) -> None:
    wrong = TARGET.model_copy(update={"key_columns": ["ID"]})
    with pytest.raises(ValueError, match="not among the copied columns"):
        load(connector, T0, run_id=1, target=wrong)
    assert audit_rows(connector) == []


def test_two_loads_of_one_run_at_once_load_once(connector: SnowflakeConnector) -> None:
    for order_id in range(1, 21):
        add_source(connector, order_id, order_id, T0 - timedelta(seconds=order_id))
    outcomes: list[Any] = []

    def one() -> None:
        try:
            outcomes.append(load(connector, T0, run_id=9))
        except Exception as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=one) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not [o for o in outcomes if isinstance(o, Exception)], outcomes
    loaded = [o for o in outcomes if not o.already_loaded]
    assert len(loaded) == 1 and loaded[0].rows_loaded == 20, outcomes
    assert len(audit_rows(connector)) == 1
    assert sql(connector, "SELECT COUNT(*), COUNT(DISTINCT ORDER_ID) FROM SRC.MARTS.ORDERS") == [(20, 20)]
    # The connector's own cached connection was never used: each load opened its own.
    assert connector._connection is None


def test_an_older_run_after_a_newer_one_is_refused(connector: SnowflakeConnector) -> None:
    add_source(connector, 1, 10, T0 - timedelta(minutes=5))
    load(connector, T0 + timedelta(minutes=1), run_id=2)
    with pytest.raises(StaleDataError, match="not newer"):
        load(connector, T0, run_id=1)
    assert [row[0] for row in audit_rows(connector)] == [2]


def test_a_lock_left_by_a_crashed_load_times_out_clearly(connector: SnowflakeConnector) -> None:
    add_source(connector, 1, 10, T0 - timedelta(minutes=5))
    load(connector, T0, run_id=1)  # creates the lock row
    # A worker killed mid-transaction leaves its session's transaction open, holding the lock row.
    crashed = connector.credentials.get_client(database="SRC", schema="PUBLIC")
    cursor = crashed.cursor()
    cursor.execute("BEGIN")
    cursor.execute("""UPDATE SRC.MARTS."ORDERS__DBT_CLOUD_GATE_LOCK" SET LOCKED_BY = 'crashed'""")
    started = time.monotonic()
    try:
        with pytest.raises(LoadLockTimeout, match=r'Waited 3 s for the write lock of "SRC"."MARTS"."ORDERS"'):
            load(connector, T0 + timedelta(minutes=1), run_id=2, lock_timeout_seconds=3)
        assert time.monotonic() - started < 30
    finally:
        cursor.execute("ROLLBACK")
        crashed.close()
    assert len(audit_rows(connector)) == 1
    assert load(connector, T0 + timedelta(minutes=1), run_id=2).rows_loaded == 0  # free again


def test_reconcile_loads_what_is_missing_or_different(connector: SnowflakeConnector) -> None:
    for order_id in (1, 2, 3):
        add_source(connector, order_id, 10 * order_id, T0 - timedelta(minutes=order_id))
    with pytest.raises(StaleDataError, match="No incremental load"):
        reconcile(connector)
    load(connector, T0, run_id=1)
    # Drift: a row lost, a row changed behind the load's back, a row deleted from the source, a late row.
    sql(connector, "DELETE FROM SRC.MARTS.ORDERS WHERE ORDER_ID = 1")
    sql(connector, "UPDATE SRC.MARTS.ORDERS SET AMOUNT = 99 WHERE ORDER_ID = 2")
    sql(connector, "DELETE FROM SRC.DBT.ORDERS WHERE ORDER_ID = 3")
    add_source(connector, 4, 40, T0 - timedelta(days=3))
    add_source(connector, 5, 50, T0 + timedelta(minutes=5))  # after the last load's watermark: not yet
    report = reconcile(connector)
    assert (report.kind, report.rows_loaded, report.rows_updated, report.rows_deleted) == ("reconcile", 3, 1, 0)
    assert target_rows(connector) == [(1, 10), (2, 20), (3, 30), (4, 40)]
    # 1 of 4 rows: above the default ceiling (a tenth), within a quarter.
    report = reconcile(connector, ReconcileSettings(propagate_deletes=True, max_delete_fraction=0.25))
    assert (report.rows_loaded, report.rows_deleted) == (0, 1)
    assert target_rows(connector) == [(1, 10), (2, 20), (4, 40)]
    kinds = sql(connector, f"SELECT LOAD_KIND, ROWS_LOADED, ROWS_DELETED FROM {AUDIT} ORDER BY LOADED_AT")
    assert kinds == [("incremental", 3, 0), ("reconcile", 3, 0), ("reconcile", 0, 1)]
    # A reconcile does not move the incremental watermark: the next load starts where the last one ended.
    assert load(connector, T0 + timedelta(minutes=10), run_id=2).watermark_from == T0
    assert target_rows(connector)[-1] == (5, 50)


def test_an_audit_table_of_an_earlier_version_is_upgraded(connector: SnowflakeConnector) -> None:
    sql(
        connector,
        f"CREATE TABLE {AUDIT} (PIPELINE VARCHAR, TARGET VARCHAR, PREFECT_FLOW_RUN_ID VARCHAR, DBT_ACCOUNT_ID NUMBER,"
        " DBT_JOB_ID NUMBER, DBT_RUN_ID NUMBER, DBT_STATUS VARCHAR, DBT_FINISHED_AT TIMESTAMP_NTZ,"
        " WATERMARK_FROM TIMESTAMP_NTZ, WATERMARK_TO TIMESTAMP_NTZ, ROWS_LOADED NUMBER, LOADED_AT TIMESTAMP_NTZ)",
    )
    sql(
        connector,
        f"INSERT INTO {AUDIT} (TARGET, DBT_RUN_ID, DBT_FINISHED_AT, WATERMARK_TO, ROWS_LOADED) "
        'VALUES (\'"SRC"."MARTS"."ORDERS"\', 1, %(at)s, %(at)s, 0)',
        {"at": naive(T0)},
    )
    add_source(connector, 1, 10, T0 - timedelta(minutes=5))
    add_source(connector, 2, 20, T0 + timedelta(minutes=5))
    # The old row still sets the watermark and the guard.
    with pytest.raises(StaleDataError, match="not after the last load"):
        load(connector, T0, run_id=5)
    report = load(connector, T0 + timedelta(minutes=10), run_id=2)
    assert report.watermark_from == T0 and target_rows(connector) == [(2, 20)]


def test_the_model_guard_knows_versions() -> None:
    v1 = ModelResult(unique_id="model.shop.dim_customers.v1", name="dim_customers", version="1", status="success")
    v2 = ModelResult(unique_id="model.shop.dim_customers.v2", name="dim_customers", version="2", status="error")
    ensure_model_built([v1, v2], "dim_customers.v1")
    ensure_model_built([v1, v2], "model.shop.dim_customers.v1")
    with pytest.raises(StaleDataError, match=r"model.shop.dim_customers.v2' ended 'error'"):
        ensure_model_built([v1, v2], "dim_customers.v2")
    with pytest.raises(StaleDataError, match="ended 'error'"):  # the bare name: every version must have built
        ensure_model_built([v1, v2], "dim_customers")
    with pytest.raises(StaleDataError, match="not built"):
        ensure_model_built([v1, v2], "dim_customers.v3")


def test_a_lock_on_another_target_does_not_block_this_one(connector: SnowflakeConnector) -> None:
    sql(connector, "CREATE TABLE SRC.MARTS.OTHER (ORDER_ID NUMBER, AMOUNT NUMBER(10,2), UPDATED_AT TIMESTAMP_NTZ)")
    other = TARGET.model_copy(update={"name": "other", "target_table": "SRC.MARTS.OTHER"})
    add_source(connector, 1, 10, T0 - timedelta(minutes=5))
    load(connector, T0, run_id=1, target=other)
    held = connector.credentials.get_client(database="SRC", schema="PUBLIC")
    cursor = held.cursor()
    cursor.execute("BEGIN")
    cursor.execute("""UPDATE SRC.MARTS."OTHER__DBT_CLOUD_GATE_LOCK" SET LOCKED_BY = 'long load'""")
    try:
        assert load(connector, T0, run_id=1, lock_timeout_seconds=3).rows_loaded == 1
    finally:
        cursor.execute("ROLLBACK")
        held.close()


def test_type_differences_between_source_and_target_are_not_changes(connector: SnowflakeConnector) -> None:
    sql(connector, "CREATE TABLE SRC.DBT.PRICES (ORDER_ID NUMBER, AMOUNT NUMBER(12,4), UPDATED_AT TIMESTAMP_NTZ)")
    sql(connector, "CREATE TABLE SRC.MARTS.PRICES (ORDER_ID NUMBER, AMOUNT NUMBER(12,2), UPDATED_AT TIMESTAMP_NTZ)")
    for order_id, amount in ((1, 1.2345), (2, 2.5)):
        sql(
            connector,
            "INSERT INTO SRC.DBT.PRICES VALUES (%(id)s, %(a)s, %(at)s)",
            {"id": order_id, "a": amount, "at": naive(T0 - timedelta(minutes=1))},
        )
    prices = TARGET.model_copy(
        update={"name": "prices", "source_table": "SRC.DBT.PRICES", "target_table": "SRC.MARTS.PRICES"}
    )
    written = [load(connector, T0 + timedelta(minutes=i), run_id=i, target=prices).rows_loaded for i in (1, 2, 3)]
    assert written == [2, 0, 0]  # 1.2345 is stored as 1.23: the same value, not a change at every load


def test_reconcile_removes_duplicates_and_keeps_deletes_to_a_single_source(connector: SnowflakeConnector) -> None:
    add_source(connector, 1, 10, T0 - timedelta(minutes=5))
    load(connector, T0, run_id=1)
    sql(connector, "INSERT INTO SRC.MARTS.ORDERS VALUES (1, 10, %(at)s)", {"at": naive(T0 - timedelta(minutes=5))})
    report = reconcile(connector)
    assert report.rows_duplicates_removed == 2 and target_rows(connector) == [(1, 10)]
    # A second source loads into the same target: deleting what the first source lacks would delete its rows.
    sql(connector, "CREATE TABLE SRC.DBT.ORDERS_EU (ORDER_ID NUMBER, AMOUNT NUMBER(10,2), UPDATED_AT TIMESTAMP_NTZ)")
    sql(connector, "INSERT INTO SRC.DBT.ORDERS_EU VALUES (2, 20, %(at)s)", {"at": naive(T0 - timedelta(minutes=3))})
    load(connector, T0, run_id=7, target=TARGET.model_copy(update={"source_table": "SRC.DBT.ORDERS_EU"}))
    with pytest.raises(StaleDataError, match="propagate_deletes would delete"):
        reconcile(connector, ReconcileSettings(propagate_deletes=True))
    assert target_rows(connector) == [(1, 10), (2, 20)]


@pytest.mark.parametrize(
    "settings",
    [
        {"lookback_seconds": float("nan")},
        {"lookback_seconds": -1},
        {"lock_timeout_seconds": float("inf")},
        {"statement_timeout_seconds": 0},
        {"audit_table": "a.b;drop"},
    ],
)
def test_load_settings_that_cannot_work_are_refused(settings: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(settings)).replace("_", ".")):
        LoadSettings(**settings)
