"""The preflight of the ETL flows: each load-target mistake is one line naming the parameter, the object and the fix,
before anything is triggered (the emulator over loopback HTTP, a fakesnow server)."""

from __future__ import annotations

import logging

import pytest
from prefect_snowflake import SnowflakeConnector

from dbt_cloud_gate.blocks.dbt_cloud import DbtCloudCredentials
from dbt_cloud_gate.dbtcloud_api import DbtCloudClient
from dbt_cloud_gate.dbtcloud_api.emulator import EmulatorServer
from dbt_cloud_gate.errors import PreflightFailed
from dbt_cloud_gate.flows.demo import DEMO_TARGETS
from dbt_cloud_gate.flows.etl import dbt_cloud_etl, dbt_cloud_etl_many
from dbt_cloud_gate.models import EtlPipeline, LoadTarget
from dbt_cloud_gate.preflight import PreflightItem, run_preflight
from dbt_cloud_gate.settings import LOAD, LoadSettings, WaitSettings
from dbt_cloud_gate.stack.embedded import seed_demo_tables
from tests.conftest import ACCOUNT, TOKEN

pytestmark = pytest.mark.usefixtures("prefect_harness")

ORDERS, CUSTOMERS = DEMO_TARGETS  # job 11 builds stg_orders and orders, not customers
WAIT = WaitSettings(poll_interval_seconds=0.05, max_wait_seconds=20)


def creds(emulator: EmulatorServer) -> DbtCloudCredentials:
    return DbtCloudCredentials(account_id=ACCOUNT, api_token=TOKEN, access_url=emulator.url)


def sql(connector: SnowflakeConnector, statement: str) -> None:
    with connector.get_connection() as connection:
        connection.cursor().execute(statement)


def refused(emulator: EmulatorServer, snowflake: SnowflakeConnector, *targets: LoadTarget) -> str:
    """The preflight's error for an ETL run of job 11 with ``targets``; asserts that nothing was triggered."""
    before = emulator.emulator.trigger_count.get(11, 0)
    with pytest.raises(PreflightFailed) as info:
        dbt_cloud_etl(11, list(targets), snowflake, creds(emulator), wait=WAIT)
    assert emulator.emulator.trigger_count.get(11, 0) == before
    assert str(info.value).startswith("Preflight of dbt-job-11 found") and "nothing was triggered" in str(info.value)
    return str(info.value)


def test_a_missing_source_table(emulator: EmulatorServer, snowflake: SnowflakeConnector) -> None:
    message = refused(emulator, snowflake, ORDERS.model_copy(update={"source_table": "ANALYTICS.DBT_PROD.ORDERZ"}))
    assert 'targets[0].source_table: source table "ANALYTICS"."DBT_PROD"."ORDERZ" does not exist' in message
    assert "(did you mean 'ORDERS'?)" in message and "Fix: correct source_table" in message
    assert message.count("\n- ") == 1  # the columns of a table not found are not reported again


def test_a_missing_target_table(emulator: EmulatorServer, snowflake: SnowflakeConnector) -> None:
    message = refused(emulator, snowflake, ORDERS.model_copy(update={"target_table": "ANALYTICS.MART.ORDERS"}))
    assert 'targets[0].target_table: target table "ANALYTICS"."MART"."ORDERS" does not exist' in message
    assert "a load never creates its target" in message


def test_a_misspelt_key_column(emulator: EmulatorServer, snowflake: SnowflakeConnector) -> None:
    message = refused(emulator, snowflake, ORDERS.model_copy(update={"key_columns": ["ORDERID"]}))
    assert (
        'targets[0].key_columns[0]: column "ORDERID" is not in source table "ANALYTICS"."DBT_PROD"."ORDERS"' in message
    )
    assert 'column "ORDERID" is not in target table "ANALYTICS"."MARTS"."ORDERS"' in message
    assert "did you mean 'ORDER_ID'?" in message


def test_a_misspelt_watermark_column(emulator: EmulatorServer, snowflake: SnowflakeConnector) -> None:
    message = refused(emulator, snowflake, ORDERS.model_copy(update={"watermark_column": '"updated_at"'}))
    assert 'targets[0].watermark_column: column "updated_at" is not in source table' in message
    # Written in double quotes, the name keeps its case: the fix says how the table spells it.
    assert "write it as the source stores it, in double quotes: '\"UPDATED_AT\"'" in message


def test_a_source_model_the_job_does_not_build(emulator: EmulatorServer, snowflake: SnowflakeConnector) -> None:
    dbt_cloud_etl(11, [ORDERS], snowflake, creds(emulator), wait=WAIT)  # a successful run: its manifest
    assert emulator.emulator.trigger_count.get(11, 0) == 1
    message = refused(emulator, snowflake, ORDERS.model_copy(update={"source_model": "order"}), CUSTOMERS)
    run_id = emulator.emulator.runs_of(11)[0].id
    assert (
        f"targets[0].source_model: dbt Cloud job 11 does not build model 'order': the manifest.json of its latest "
        f"successful run {run_id} has no such model, snapshot or seed (did you mean 'orders'?)" in message
    )
    assert "targets[1].source_model: dbt Cloud job 11 does not build model 'customers'" in message
    # With check_model_built off, the job's models are none of the load's business.
    loose = LoadSettings(check_model_built=False)
    dbt_cloud_etl(
        11, [ORDERS.model_copy(update={"source_model": "order"})], snowflake, creds(emulator), wait=WAIT, load=loose
    )
    assert emulator.emulator.trigger_count.get(11, 0) == 2


def test_several_problems_of_several_pipelines_in_one_error(
    emulator: EmulatorServer, snowflake: SnowflakeConnector
) -> None:
    sql(
        snowflake,
        "CREATE TABLE ANALYTICS.MARTS.ORDERS_TEXT (ORDER_ID NUMBER, CUSTOMER_ID NUMBER, AMOUNT VARCHAR, UPDATED_AT TIMESTAMP_NTZ)",
    )
    sql(snowflake, "CREATE VIEW ANALYTICS.MARTS.ORDERS_VIEW AS SELECT * FROM ANALYTICS.MARTS.ORDERS")
    pipelines = [
        EtlPipeline(job_id=11, targets=[ORDERS.model_copy(update={"target_table": "ANALYTICS.MARTS.ORDERS_TEXT"})]),
        EtlPipeline(
            job_id=12,
            targets=[
                ORDERS.model_copy(update={"target_table": "ANALYTICS.MARTS.ORDERS_VIEW"}),
                CUSTOMERS.model_copy(
                    update={"watermark_column": "NAME", "source_table": "ANALYTICS.DBT_PROD.CUSTOMER"}
                ),
                CUSTOMERS.model_copy(update={"watermark_column": "NAME"}),
                ORDERS,
            ],
        ),
    ]
    with pytest.raises(PreflightFailed) as info:
        dbt_cloud_etl_many(pipelines, snowflake, creds(emulator), wait=WAIT)
    problems = info.value.problems
    assert [line.split(":")[0] for line in problems] == [
        "pipelines[0].targets[0].target_table",
        "pipelines[1].targets[0].target_table",
        "pipelines[1].targets[0].target_table",
        "pipelines[1].targets[1].source_table",
        "pipelines[1].targets[2].watermark_column",
    ]
    assert 'column "AMOUNT" is NUMBER in source table "ANALYTICS"."DBT_PROD"."ORDERS" but TEXT in target' in problems[0]
    # fakesnow has no privileges to withhold, but a view refuses the load's writes all the same: the rights check
    # runs the load's INSERT and DELETE (on nothing, rolled back) and names what to grant.
    assert "cannot run the load's INSERT on it" in problems[1] and "cannot run the load's DELETE on it" in problems[2]
    assert 'GRANT DELETE ON TABLE "ANALYTICS"."MARTS"."ORDERS_VIEW" TO ROLE' in problems[2]
    assert (
        '"ANALYTICS"."DBT_PROD"."CUSTOMER" does not exist' in problems[3] and "did you mean 'CUSTOMERS'" in problems[3]
    )
    assert 'column "NAME" is TEXT in source table' in problems[4] and "a watermark must be a TIMESTAMP" in problems[4]
    assert str(info.value).startswith("Preflight of 2 pipeline(s) found 5 problem(s); nothing was triggered:\n- ")
    assert emulator.emulator.trigger_count.get(11, 0) == 0 and emulator.emulator.trigger_count.get(12, 0) == 0


def test_the_happy_path_costs_no_trigger_and_leaves_nothing_behind(
    emulator: EmulatorServer, snowflake: SnowflakeConnector, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    first = dbt_cloud_etl(11, [ORDERS], snowflake, creds(emulator), wait=WAIT)
    assert first.rows_by_target == {"orders": 4} and emulator.emulator.trigger_count.get(11, 0) == 1
    assert "dbt Cloud job 11 has no successful run yet" in caplog.text  # a warning, not a refusal
    manifests = [r for r in emulator.emulator.requests if r.path.endswith("/manifest.json")]
    assert manifests == []
    seed_demo_tables(snowflake, new_rows=1)
    again = dbt_cloud_etl(11, [ORDERS], snowflake, creds(emulator), wait=WAIT)
    assert again.rows_by_target == {"orders": 1} and emulator.emulator.trigger_count.get(11, 0) == 2
    manifests = [r for r in emulator.emulator.requests if r.path.endswith("/manifest.json")]
    assert len(manifests) == 1 and str(first.dbt_run_id) in manifests[0].path


def test_the_checks_write_nothing_and_say_what_fakesnow_cannot_show(
    emulator: EmulatorServer, snowflake: SnowflakeConnector
) -> None:
    fresh = CUSTOMERS.model_copy(update={"target_table": "ANALYTICS.MARTS.CUSTOMERS"})
    with DbtCloudClient(ACCOUNT, TOKEN, emulator.url) as client:
        found = run_preflight(snowflake, client, [PreflightItem("targets", 11, [fresh])], LOAD)
    assert found.problems == [] and found.requests == 1  # no successful run: a warning, no manifest read
    assert found.unchecked == [
        'CREATE TABLE on schema "ANALYTICS"."MARTS" (the grant views cannot be read: ProgrammingError)'
    ]
    # Metadata and rolled-back statements only, a bounded number of them.
    assert 0 < found.statements <= 12
    with snowflake.get_connection() as connection:
        cursor = connection.cursor()
        cursor.execute(
            "SELECT TABLE_NAME FROM ANALYTICS.INFORMATION_SCHEMA.TABLES WHERE TABLE_NAME LIKE '%DBT_CLOUD_GATE%'"
        )
        assert cursor.fetchall() == []  # the lock, registry and audit tables are the first load's to create
