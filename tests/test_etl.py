"""The ETL flow and its fan-out against the emulator and a fakesnow server; the native schedule policy."""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.client.schemas.sorting import ArtifactSort
from prefect_snowflake import SnowflakeConnector

from dbt_cloud_gate.dbtcloud_api import DbtCloudClient, RunStatus
from dbt_cloud_gate.dbtcloud_api.emulator import EmulatorServer
from dbt_cloud_gate.errors import DbtCloudNativeScheduleOn, DbtCloudRunFailed, EtlFailed
from dbt_cloud_gate.flows.dbt_cloud import run_dbt_cloud_job
from dbt_cloud_gate.flows.demo import DEMO_TARGETS
from dbt_cloud_gate.flows.etl import dbt_cloud_etl, dbt_cloud_etl_many
from dbt_cloud_gate.flows.reconcile import dbt_cloud_reconcile
from dbt_cloud_gate.models import EtlPipeline, EtlSummary
from dbt_cloud_gate.settings import LoadSettings
from dbt_cloud_gate.stack.embedded import seed_demo_tables
from tests.conftest import ACCOUNT, TOKEN, AlertSink
from tests.test_flow import FAST, creds, saved_webhook

pytestmark = pytest.mark.usefixtures("prefect_harness")

ORDERS, CUSTOMERS = DEMO_TARGETS  # the quickstart's targets: orders and customers


def count(connector: SnowflakeConnector, table: str, where: str = "", params: dict[str, Any] | None = None) -> int:
    with connector.get_connection() as connection:
        cursor = connection.cursor()
        cursor.execute(f"SELECT COUNT(*) FROM {table} {where}", params)
        return int(cursor.fetchone()[0])


def audit(connector: SnowflakeConnector) -> list[tuple[Any, ...]]:
    with connector.get_connection() as connection:
        cursor = connection.cursor()
        cursor.execute(
            "CREATE TABLE IF NOT EXISTS ANALYTICS.MARTS.DBT_CLOUD_GATE_AUDIT (PIPELINE VARCHAR, TARGET VARCHAR,"
            " PREFECT_FLOW_RUN_ID VARCHAR, DBT_ACCOUNT_ID NUMBER, DBT_JOB_ID NUMBER, DBT_RUN_ID NUMBER,"
            " DBT_STATUS VARCHAR, DBT_FINISHED_AT TIMESTAMP_NTZ, WATERMARK_FROM TIMESTAMP_NTZ,"
            " WATERMARK_TO TIMESTAMP_NTZ, ROWS_LOADED NUMBER, LOADED_AT TIMESTAMP_NTZ)"
        )
        cursor.execute(
            "SELECT PIPELINE, TARGET, DBT_JOB_ID, DBT_RUN_ID, DBT_FINISHED_AT, ROWS_LOADED, PREFECT_FLOW_RUN_ID"
            " FROM ANALYTICS.MARTS.DBT_CLOUD_GATE_AUDIT ORDER BY LOADED_AT"
        )
        return list(cursor.fetchall())


def test_etl_success_loads_and_audits_the_dbt_run(emulator: EmulatorServer, snowflake: SnowflakeConnector) -> None:
    summary = dbt_cloud_etl(11, [ORDERS], snowflake, creds(emulator), pipeline="nightly", **FAST)
    assert summary.rows_by_target == {"orders": 4} and summary.dbt_status == "Success"
    assert count(snowflake, "ANALYTICS.MARTS.ORDERS") == 4
    rows = audit(snowflake)
    assert len(rows) == 1
    pipeline, target, job_id, run_id, finished_at, loaded, flow_run_id = rows[0]
    assert (pipeline, target, job_id, run_id, loaded) == (
        "nightly",
        '"ANALYTICS"."MARTS"."ORDERS"',
        11,
        summary.dbt_run_id,
        4,
    )
    internal = emulator.emulator.runs[summary.dbt_run_id]
    assert finished_at == datetime.fromtimestamp(internal.finished, UTC).replace(tzinfo=None)
    assert flow_run_id  # the Prefect flow run that loaded it
    with get_client(sync_client=True) as client:
        (report,) = client.read_artifacts(artifact_filter=by_key("dbt-cloud-etl-nightly"))
    # On the ETL run's page: the dbt run and its models at a glance, a narrow table (fits 1,280 px), the tables.
    markdown = str(report.data)
    assert f"dbt Cloud run [{summary.dbt_run_id}]" in markdown and "— Success" in markdown
    assert "dbt models: 2: success 2 (stg_orders, orders)" in markdown
    assert "|---|---|---|---|\n| orders | 4 (0) | 0 / 0 / 0 | " in markdown
    assert "- orders: ANALYTICS.DBT_PROD.ORDERS → ANALYTICS.MARTS.ORDERS, window " in markdown
    # The next cycle takes only what changed since.
    seed_demo_tables(snowflake, new_rows=2)
    again = dbt_cloud_etl(11, [ORDERS], snowflake, creds(emulator), pipeline="nightly", **FAST)
    assert again.rows_by_target == {"orders": 2} and count(snowflake, "ANALYTICS.MARTS.ORDERS") == 6
    assert [row[3] for row in audit(snowflake)] == [summary.dbt_run_id, again.dbt_run_id]


def test_etl_dbt_failure_loads_nothing_and_alerts(
    emulator: EmulatorServer, snowflake: SnowflakeConnector, webhook: AlertSink
) -> None:
    block = saved_webhook(webhook, "etl-alerts")
    with pytest.raises(DbtCloudRunFailed) as info:
        dbt_cloud_etl(12, [ORDERS], snowflake, creds(emulator), alert_blocks=[block], **FAST)
    assert count(snowflake, "ANALYTICS.MARTS.ORDERS") == 0 and audit(snowflake) == []
    assert len(webhook.received) == 1 and str(info.value.run_id) in webhook.received[0]["body"]


def test_etl_refuses_a_target_whose_model_did_not_build(
    emulator: EmulatorServer, snowflake: SnowflakeConnector
) -> None:
    with pytest.raises(EtlFailed, match="customers: dbt model 'customers' was not built"):
        dbt_cloud_etl(11, [ORDERS, CUSTOMERS], snowflake, creds(emulator), **FAST)
    assert count(snowflake, "ANALYTICS.MARTS.ORDERS") == 4
    assert count(snowflake, "ANALYTICS.MARTS.CUSTOMERS") == 0
    assert [row[1] for row in audit(snowflake)] == ['"ANALYTICS"."MARTS"."ORDERS"']


def test_fan_out_runs_concurrently_and_names_each_failure(
    emulator: EmulatorServer, snowflake: SnowflakeConnector
) -> None:
    # Long enough that the runs overlap although subflows start seconds apart on a loaded 2-core machine
    # (6.6 s apart seen in CI); run one after the other, they could not overlap at all.
    emulator.emulator.set_job(11, run_seconds=12.0)
    emulator.emulator.set_job(12, run_seconds=12.0)
    pipelines = [
        EtlPipeline(job_id=11, targets=[ORDERS], name="good"),
        EtlPipeline(job_id=12, targets=[ORDERS], name="bad"),
    ]
    with pytest.raises(EtlFailed) as info:
        dbt_cloud_etl_many(pipelines, snowflake, creds(emulator), **FAST)
    bad_run = emulator.emulator.runs_of(12)[0]
    good_run = emulator.emulator.runs_of(11)[0]
    assert f"bad: dbt Cloud run {bad_run.id} Error" in str(info.value) and "good" not in str(info.value)
    assert [row[3] for row in audit(snowflake)] == [good_run.id]
    assert bad_run.created < good_run.finished and good_run.created < bad_run.finished


def test_native_schedule_policies(emulator: EmulatorServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    result = run_dbt_cloud_job(13, creds(emulator), **FAST)
    assert result.status == "Success"
    assert "has its own dbt Cloud schedule on" in caplog.text and "native_schedule='disable'" in caplog.text
    with pytest.raises(DbtCloudNativeScheduleOn, match="Run on schedule"):
        run_dbt_cloud_job(13, creds(emulator), native_schedule="fail", **FAST)
    assert emulator.emulator.trigger_count[13] == 1
    run_dbt_cloud_job(13, creds(emulator), native_schedule="disable", **FAST)
    with DbtCloudClient(ACCOUNT, TOKEN, emulator.url) as client:
        job = client.get_job(13)
    assert not job.schedule_enabled and "Schedule owned by Prefect deployment" in (job.description or "")
    assert job.execute_steps == ["dbt build"] and job.name == "scheduled"  # the rest of the job as it was
    # Off now: "fail" runs.
    assert run_dbt_cloud_job(13, creds(emulator), native_schedule="fail", **FAST).status == "Success"


def add_order(connector: SnowflakeConnector, order_id: int, at: datetime) -> None:
    with connector.get_connection() as connection:
        connection.cursor().execute(
            "INSERT INTO ANALYTICS.DBT_PROD.ORDERS VALUES (%(id)s, 1, 5, %(at)s)",
            {"id": order_id, "at": at.astimezone(UTC).replace(tzinfo=None)},
        )


def test_a_late_row_is_loaded_by_the_next_cycle(emulator: EmulatorServer, snowflake: SnowflakeConnector) -> None:
    first = dbt_cloud_etl(11, [ORDERS], snowflake, creds(emulator), **FAST)
    assert first.finished_at is not None
    # Changed in the source system while the first dbt run ran: its UPDATED_AT is before that run's end, but
    # it reaches the model only in the next run.
    add_order(snowflake, 1001, first.finished_at - timedelta(seconds=1))
    exact = dbt_cloud_etl(11, [ORDERS], snowflake, creds(emulator), lookback_seconds=0, **FAST)
    assert exact.rows_by_target == {"orders": 0}  # what every cycle did before: the row is in no window
    again = dbt_cloud_etl(11, [ORDERS], snowflake, creds(emulator), **FAST)  # default lookback
    assert again.rows_by_target == {"orders": 1}
    assert count(snowflake, "ANALYTICS.MARTS.ORDERS", "WHERE ORDER_ID = 1001") == 1
    assert count(snowflake, "ANALYTICS.MARTS.ORDERS") == 5


def test_one_failing_target_does_not_stop_the_others(emulator: EmulatorServer, snowflake: SnowflakeConnector) -> None:
    missing = ORDERS.model_copy(update={"name": "missing", "target_table": "ANALYTICS.MARTS.NO_SUCH_TABLE"})
    # A table that goes missing after the preflight (here: none ran) fails its load only.
    unchecked = LoadSettings(preflight=False)
    with pytest.raises(EtlFailed, match=r"1 of 2 load\(s\) of .* failed: missing: ProgrammingError") as info:
        dbt_cloud_etl(11, [missing, ORDERS], snowflake, creds(emulator), pipeline="partial", load=unchecked, **FAST)
    assert "orders" not in str(info.value).split("failed:")[1]
    assert count(snowflake, "ANALYTICS.MARTS.ORDERS") == 4
    with get_client(sync_client=True) as client:
        (artifact, *_) = client.read_artifacts(
            artifact_filter=by_key("dbt-cloud-etl-partial"), sort=ArtifactSort.CREATED_DESC
        )
    assert "| orders |" in str(artifact.data) and "missing: ProgrammingError" in str(artifact.data)


def test_reconcile_flow_repairs_drift(emulator: EmulatorServer, snowflake: SnowflakeConnector) -> None:
    dbt_cloud_etl(11, [ORDERS], snowflake, creds(emulator), **FAST)
    with snowflake.get_connection() as connection:
        connection.cursor().execute("DELETE FROM ANALYTICS.MARTS.ORDERS WHERE ORDER_ID = 2")
    reports = dbt_cloud_reconcile([ORDERS], snowflake, pipeline="weekly")
    assert [(r.target, r.kind, r.rows_loaded) for r in reports] == [("orders", "reconcile", 1)]
    assert count(snowflake, "ANALYTICS.MARTS.ORDERS") == 4
    assert count(snowflake, "ANALYTICS.MARTS.DBT_CLOUD_GATE_AUDIT", "WHERE LOAD_KIND = 'reconcile'") == 1


def test_a_retry_after_a_partial_failure_finishes_the_loads_on_the_same_run(
    emulator: EmulatorServer, snowflake: SnowflakeConnector
) -> None:
    copy = ORDERS.model_copy(update={"name": "copy", "target_table": "ANALYTICS.MARTS.ORDERS_COPY"})
    attempts: list[str] = []

    @flow(retries=1, retry_delay_seconds=0)
    def nightly() -> EtlSummary:
        try:
            # No preflight: it would refuse the missing table before the run; a load-time failure is the case here.
            unchecked = LoadSettings(preflight=False)
            return dbt_cloud_etl(
                11, [ORDERS, copy], snowflake, creds(emulator), pipeline="retry", load=unchecked, **FAST
            )
        except EtlFailed as exc:
            attempts.append(str(exc))
            # What an operator fixes between the attempts: the missing table.
            with snowflake.get_connection() as connection:
                connection.cursor().execute(
                    "CREATE TABLE ANALYTICS.MARTS.ORDERS_COPY "
                    "(ORDER_ID NUMBER, CUSTOMER_ID NUMBER, AMOUNT NUMBER(12,2), UPDATED_AT TIMESTAMP_NTZ)"
                )
            raise

    summary = nightly()
    assert len(attempts) == 1 and "copy:" in attempts[0]
    assert emulator.emulator.trigger_count[11] == 1  # the retry waited on the run already started
    loads = {load.target: load for load in summary.loads}
    assert loads["orders"].already_loaded and loads["orders"].rows_loaded == 0
    assert loads["copy"].rows_loaded == 4
    assert count(snowflake, "ANALYTICS.MARTS.ORDERS") == 4 and count(snowflake, "ANALYTICS.MARTS.ORDERS_COPY") == 4
    assert [row[3] for row in audit(snowflake)] == [summary.dbt_run_id, summary.dbt_run_id]


def test_a_retry_after_the_dbt_run_failed_runs_dbt_again(
    emulator: EmulatorServer, snowflake: SnowflakeConnector
) -> None:
    # A transient dbt failure: a retry of the pipeline must run the job again, not wait on the failed run.
    with pytest.raises(DbtCloudRunFailed):
        dbt_cloud_etl.with_options(retries=1, retry_delay_seconds=0)(12, [ORDERS], snowflake, creds(emulator), **FAST)
    runs = emulator.emulator.runs_of(12)
    assert emulator.emulator.trigger_count[12] == 2 and len(runs) == 2
    first, second = sorted(runs, key=lambda r: r.id)
    key = first.cause.split(" ")[-1]
    assert key.startswith("[dcg:") and second.cause.endswith(f" {key}+2")  # one key, its second attempt


def test_cancelling_the_etl_flow_run_cancels_the_dbt_cloud_run(
    emulator: EmulatorServer, snowflake: SnowflakeConnector
) -> None:
    emulator.emulator.set_job(11, run_seconds=30.0)
    outcome: dict[str, Any] = {}
    thread = threading.Thread(
        target=lambda: outcome.update(
            state=dbt_cloud_etl(11, [ORDERS], snowflake, creds(emulator), return_state=True, **FAST)
        )
    )
    thread.start()
    deadline = time.monotonic() + 60
    while not [r for r in emulator.emulator.runs_of(11) if r.started] and time.monotonic() < deadline:
        time.sleep(0.1)
    with get_client(sync_client=True) as client:
        etl_runs = [
            fr
            for fr in client.read_flow_runs()
            if fr.name and fr.parameters.get("job_id") == 11 and "targets" in fr.parameters and not fr.state.is_final()
        ]
    assert len(etl_runs) == 1
    # What the runner does when a deployed ETL flow run is cancelled: the ETL flow's hooks run.
    for hook in dbt_cloud_etl.on_cancellation_hooks:
        hook(dbt_cloud_etl, etl_runs[0], etl_runs[0].state)
    with DbtCloudClient(ACCOUNT, TOKEN, emulator.url) as client:
        assert client.get_run(emulator.emulator.runs_of(11)[0].id).status is RunStatus.CANCELLED
    thread.join(timeout=60)
    assert outcome["state"].is_failed() and count(snowflake, "ANALYTICS.MARTS.ORDERS") == 0


def by_key(*keys: str) -> ArtifactFilter:
    """Artifacts with these keys (the server answers 200 at most per read, and the session makes many)."""
    return ArtifactFilter(key=ArtifactFilterKey(any_=list(keys)))


def test_models_at_a_glance_puts_problems_first_and_stays_short() -> None:
    from dbt_cloud_gate.dbtcloud_api import ModelResult
    from dbt_cloud_gate.publish import models_at_a_glance

    models = [ModelResult(unique_id=f"model.p.m{i}", name=f"m{i}", status="success") for i in range(12)]
    models.insert(5, ModelResult(unique_id="model.p.bad", name="bad", status="error"))
    line = models_at_a_glance(models, named=3)
    assert line == "13: success 12, error 1 (bad, m0, m1, ...)"
    assert models_at_a_glance([]) == "none in the run's results"
