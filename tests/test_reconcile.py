"""A reconcile that cannot delete what is not its own (fakesnow): the source registry of each target, the empty
source, the delete ceiling, the dry run, and the flow's grouped settings (and the old flat names).

Written for Snowflake's semantics. Where fakesnow differs: its snapshot isolation never lets the source change
between the delete count and the DELETE (READ COMMITTED on Snowflake), so that check is driven directly; and a
dry run's rolled-back writes hold no table lock there, while on Snowflake they hold the target's until ROLLBACK.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.client.schemas.sorting import ArtifactSort
from prefect_snowflake import SnowflakeConnector

from dbt_cloud_gate import DeletesRefused, EtlFailed, ReconcileSettings, dbt_cloud_reconcile
from dbt_cloud_gate.models import LoadReport
from dbt_cloud_gate.reconcile_guard import DeleteCheck
from tests.snowflake_orders import AUDIT, T0, TARGET, add_source, load, orders_database, reconcile, sql, target_rows

pytestmark = pytest.mark.usefixtures("prefect_harness")

EU = TARGET.model_copy(update={"name": "orders_eu", "source_table": "SRC.DBT.ORDERS_EU"})
EU_AUDIT = "SRC.MARTS.EU_AUDIT"
REGISTRY = 'SRC.MARTS."ORDERS__DBT_CLOUD_GATE_SOURCES"'
DELETES = ReconcileSettings(propagate_deletes=True)


@pytest.fixture
def connector(tmp_path: Path) -> Iterator[SnowflakeConnector]:
    with orders_database(tmp_path) as block:
        yield block


def keys(block: SnowflakeConnector) -> list[int]:
    return [int(row[0]) for row in target_rows(block)]


def loaded(block: SnowflakeConnector, count: int) -> None:
    """Keys 1..count in the source, loaded into the target by run 1."""
    for order_id in range(1, count + 1):
        add_source(block, order_id, order_id, T0 - timedelta(minutes=1))
    load(block, T0, run_id=1)


def state(block: SnowflakeConnector) -> tuple[list[Any], ...]:
    """Everything a reconcile may write: the target, the audit history and the registry."""
    return (
        sql(block, "SELECT * FROM SRC.MARTS.ORDERS ORDER BY ORDER_ID, AMOUNT"),
        sql(block, f"SELECT * FROM {AUDIT} ORDER BY LOADED_AT"),
        sql(block, f"SELECT * FROM {REGISTRY} ORDER BY SOURCE_TABLE"),
    )


def counts(report: LoadReport) -> tuple[int, int, int, int]:
    return report.rows_loaded, report.rows_updated, report.rows_deleted, report.rows_duplicates_removed


def two_sources(block: SnowflakeConnector, eu_audit_table: str | None = EU_AUDIT) -> None:
    """The issue's case: keys 1 and 2 from ORDERS, 101 and 102 from ORDERS_EU, whose loads are audited in
    another audit table."""
    loaded(block, 2)
    sql(block, "CREATE TABLE SRC.DBT.ORDERS_EU (ORDER_ID NUMBER, AMOUNT NUMBER(10,2), UPDATED_AT TIMESTAMP_NTZ)")
    sql(block, "INSERT INTO SRC.DBT.ORDERS_EU SELECT ORDER_ID + 100, AMOUNT, UPDATED_AT FROM SRC.DBT.ORDERS")
    load(block, T0, run_id=2, target=EU, audit_table=eu_audit_table)
    assert keys(block) == [1, 2, 101, 102]


def test_deletes_are_refused_while_another_source_feeds_the_target_whatever_its_audit_table(
    connector: SnowflakeConnector,
) -> None:
    two_sources(connector)
    with pytest.raises(DeletesRefused, match=r"other sources .*ORDERS_EU.* \(audited in .*EU_AUDIT") as info:
        reconcile(connector, DELETES.model_copy(update={"max_delete_fraction": 1.0}))
    assert info.value.rows_to_delete == 2
    assert keys(connector) == [1, 2, 101, 102]
    assert sql(connector, f"SELECT COUNT(*) FROM {AUDIT} WHERE LOAD_KIND = 'reconcile'") == [(0,)]
    # The error's own advice, run as written, retires ORDERS_EU; the deletes then pass (behind the ceiling).
    retire = re.search(r"retire it: (UPDATE .*)\.$", str(info.value))
    assert retire is not None
    sql(connector, retire.group(1).replace("<source>", '"SRC"."DBT"."ORDERS_EU"'))
    report = reconcile(connector, DELETES.model_copy(update={"max_delete_fraction": 0.5}))
    assert report.rows_deleted == 2 and keys(connector) == [1, 2]
    # A retired source that loads again is registered again.
    load(connector, T0 + timedelta(minutes=1), run_id=3, target=EU, audit_table=EU_AUDIT)
    with pytest.raises(DeletesRefused, match="ORDERS_EU"):
        reconcile(connector, DELETES)
    registry = sql(connector, f"SELECT SOURCE_TABLE, COUNT(*) FROM {REGISTRY} GROUP BY SOURCE_TABLE ORDER BY 1")
    assert registry == [('"SRC"."DBT"."ORDERS"', 1), ('"SRC"."DBT"."ORDERS_EU"', 1)]  # one row each, however often


def test_sources_loaded_before_the_registry_existed_are_known_from_the_audit_history(
    connector: SnowflakeConnector,
) -> None:
    two_sources(connector, eu_audit_table=None)  # both audited in the default audit table
    sql(connector, f"DROP TABLE {REGISTRY}")  # as a target loaded by an earlier release has none
    with pytest.raises(DeletesRefused, match=r"other sources .*ORDERS_EU.* \(audited in .*DBT_CLOUD_GATE_AUDIT"):
        reconcile(connector, DELETES)
    reconcile(connector)  # commits, with the registration (the refusal rolled it back)
    registered = sql(connector, f"SELECT SOURCE_TABLE FROM {REGISTRY} ORDER BY SOURCE_TABLE")
    assert registered == [('"SRC"."DBT"."ORDERS"',), ('"SRC"."DBT"."ORDERS_EU"',)]


def test_an_emptied_source_deletes_nothing_unless_told(connector: SnowflakeConnector) -> None:
    loaded(connector, 20)
    # A dbt build that leaves the model empty (a row without a key is no row to keep).
    sql(connector, "DELETE FROM SRC.DBT.ORDERS")
    add_source(connector, None, 1, T0 - timedelta(minutes=1))
    everything = DELETES.model_copy(update={"max_delete_fraction": 1.0})
    with pytest.raises(DeletesRefused, match=r"holds no row with a key.* all 20 rows.*allow_empty_source=True"):
        reconcile(connector, everything)
    assert keys(connector) == list(range(1, 21))
    assert reconcile(connector).rows_deleted == 0 and len(keys(connector)) == 20  # deletes off: nothing to refuse
    told = reconcile(connector, everything.model_copy(update={"allow_empty_source": True}))
    assert told.rows_deleted == 20 and keys(connector) == []


def test_above_the_ceiling_nothing_changes_and_the_error_names_the_count_and_the_setting(
    connector: SnowflakeConnector,
) -> None:
    loaded(connector, 10)
    # Drift the reconcile would repair (a row lost, a row changed), and three keys gone from the source.
    sql(connector, "DELETE FROM SRC.MARTS.ORDERS WHERE ORDER_ID = 1")
    sql(connector, "UPDATE SRC.MARTS.ORDERS SET AMOUNT = 99 WHERE ORDER_ID = 2")
    sql(connector, "DELETE FROM SRC.DBT.ORDERS WHERE ORDER_ID >= 8")
    before = state(connector)
    with pytest.raises(
        DeletesRefused, match=r"would delete 3 of 9 rows .*\(33%\), above reconcile.max_delete_fraction=0.1"
    ) as info:
        reconcile(connector, DELETES)
    assert info.value.rows_to_delete == 3
    assert state(connector) == before  # not even the lost and the changed row: the whole transaction is gone
    with pytest.raises(DeletesRefused, match=r"above reconcile.max_deletes=2 \(set it to 3 or more\)"):
        reconcile(connector, DELETES.model_copy(update={"max_delete_fraction": 1.0, "max_deletes": 2}))
    assert state(connector) == before
    # The fraction the error asks for is enough.
    needed = re.search(r"max_delete_fraction=0.1 \(set it to ([0-9.]+) or more\)", str(info.value))
    assert needed is not None
    report = reconcile(connector, DELETES.model_copy(update={"max_delete_fraction": float(needed.group(1))}))
    assert (report.rows_loaded, report.rows_updated, report.rows_deleted) == (2, 1, 3)
    assert keys(connector) == list(range(1, 8))


def test_a_delete_larger_than_counted_is_refused_after_it() -> None:
    # On Snowflake (READ COMMITTED) a dbt build may commit between the count and the DELETE; fakesnow's snapshot
    # isolation never shows it, so the check that follows the DELETE is driven here with the count it would see.
    check = DeleteCheck(target_rows=10, to_delete=1, allowed=1)
    check.confirm(1, "T")
    with pytest.raises(DeletesRefused, match=r"deleted 5 rows of T where 1 were counted.*rolled back") as info:
        check.confirm(5, "T")
    assert info.value.rows_to_delete == 5
    assert pickle.loads(pickle.dumps(info.value)).rows_to_delete == 5  # Prefect stores a failed task's exception


def test_a_dry_run_reports_what_a_reconcile_would_do_and_writes_nothing(connector: SnowflakeConnector) -> None:
    loaded(connector, 10)
    sql(connector, "DELETE FROM SRC.MARTS.ORDERS WHERE ORDER_ID = 1")
    sql(connector, "UPDATE SRC.MARTS.ORDERS SET AMOUNT = 99 WHERE ORDER_ID = 2")
    sql(connector, "INSERT INTO SRC.MARTS.ORDERS SELECT * FROM SRC.MARTS.ORDERS WHERE ORDER_ID = 3")
    sql(connector, "DELETE FROM SRC.DBT.ORDERS WHERE ORDER_ID = 10")
    before = state(connector)
    settings = DELETES.model_copy(update={"max_delete_fraction": 0.2})
    dry = reconcile(connector, settings.model_copy(update={"dry_run": True}))
    assert dry.dry_run and dry.deletes_refused is None
    assert state(connector) == before  # not the target, not the audit history, not the registry
    # Deletes the ceiling refuses: reported with their count, not raised.
    refused = reconcile(connector, DELETES.model_copy(update={"dry_run": True, "max_deletes": 0}))
    assert refused.rows_deleted == 1 and "max_deletes=0" in str(refused.deletes_refused)
    assert state(connector) == before
    real = reconcile(connector, settings)
    assert not real.dry_run and counts(real) == counts(dry) and counts(dry) == (3, 1, 1, 2)
    assert state(connector) != before


def test_the_flow_takes_grouped_settings_and_the_old_flat_names_with_a_warning(connector: SnowflakeConnector) -> None:
    loaded(connector, 10)
    sql(connector, "DELETE FROM SRC.DBT.ORDERS WHERE ORDER_ID >= 9")
    # A dry run: its own artifact, with the counts and the deletes the ceiling would refuse.
    (dry,) = dbt_cloud_reconcile(
        [TARGET], connector, pipeline="weekly", reconcile=DELETES.model_copy(update={"dry_run": True})
    )
    assert dry.dry_run and dry.rows_deleted == 2 and keys(connector) == list(range(1, 11))
    with get_client(sync_client=True) as client:
        (artifact, *_) = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["dbt-cloud-reconcile-dry-run-weekly"])),
            sort=ArtifactSort.CREATED_DESC,
        )
    assert "dry run" in str(artifact.data) and "| orders | SRC.MARTS.ORDERS | 0 | 0 | 2 (refused) |" in str(
        artifact.data
    )
    assert "max_delete_fraction=0.1" in str(artifact.data)
    # The real run fails after all targets, naming the count and the setting.
    with pytest.raises(EtlFailed, match=r"orders: propagate_deletes would delete 2 of 10 rows .*max_delete_fraction"):
        dbt_cloud_reconcile([TARGET], connector, pipeline="weekly", reconcile=DELETES)
    assert keys(connector) == list(range(1, 11))
    # The flat names of the previous release still work from Python, each group with a DeprecationWarning.
    add_source(connector, 9, 9, T0 - timedelta(minutes=1))  # one key gone of ten: within the default ceiling
    with pytest.warns(DeprecationWarning) as warned:
        (report,) = dbt_cloud_reconcile(
            [TARGET], connector, pipeline="weekly", propagate_deletes=True, lock_timeout_seconds=30
        )
    messages = [str(w.message) for w in warned if issubclass(w.category, DeprecationWarning)]
    assert any("load=LoadSettings(lock_timeout_seconds=...)" in m for m in messages)
    assert any("reconcile=ReconcileSettings(propagate_deletes=...)" in m for m in messages)
    assert report.rows_deleted == 1 and keys(connector) == list(range(1, 10))
