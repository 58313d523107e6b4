"""Issue 8, 5.1: the ETL flows retried after a failure mid-wait wait on the dbt Cloud run already started."""

from __future__ import annotations

import pytest
from prefect_snowflake import SnowflakeConnector

from dbt_cloud_gate.dbtcloud_api.emulator import EmulatorServer, Fault
from dbt_cloud_gate.flows.etl import dbt_cloud_etl, dbt_cloud_etl_many
from dbt_cloud_gate.models import EtlPipeline
from tests.test_etl import ORDERS
from tests.test_flow import FAST, creds

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.mark.parametrize("flow_name", ["dbt_cloud_etl", "dbt_cloud_etl_many"])
def test_etl_retried_after_a_failure_mid_wait_starts_one_dbt_run(
    emulator: EmulatorServer,
    snowflake: SnowflakeConnector,
    flow_name: str,
) -> None:
    # A 403 on a poll kills the run_dbt_cloud_job subflow's wait; the ETL flow fails and is retried.
    emulator.emulator.add_fault(Fault(kind="status", status=403, method="GET", path=r"/runs/\d+/$", times=1))
    if flow_name == "dbt_cloud_etl":
        summary = dbt_cloud_etl.with_options(retries=1, retry_delay_seconds=0)(
            11, [ORDERS], snowflake, creds(emulator), **FAST
        )
        run_ids = {summary.dbt_run_id}
    else:
        summaries = dbt_cloud_etl_many.with_options(retries=1, retry_delay_seconds=0)(
            [EtlPipeline(job_id=11, targets=[ORDERS], name="orders")], snowflake, creds(emulator), **FAST
        )
        run_ids = {s.dbt_run_id for s in summaries}
    runs = emulator.emulator.runs_of(11)
    assert emulator.emulator.trigger_count[11] == 1 and [r.id for r in runs] == sorted(run_ids)
