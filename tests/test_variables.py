"""Load targets (and ETL pipelines) named by a Prefect variable: read at each run, every mistake refused before
anything is triggered (the emulator over loopback HTTP, a fakesnow server, Prefect's test server)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from prefect.variables import Variable
from prefect_snowflake import SnowflakeConnector

from dbt_cloud_gate.blocks.dbt_cloud import DbtCloudCredentials
from dbt_cloud_gate.dbtcloud_api.emulator import EmulatorServer
from dbt_cloud_gate.flows.etl import dbt_cloud_etl, dbt_cloud_etl_many
from dbt_cloud_gate.flows.reconcile import dbt_cloud_reconcile
from dbt_cloud_gate.models import LoadTarget
from dbt_cloud_gate.settings import ReconcileSettings, WaitSettings
from dbt_cloud_gate.stack.embedded import DEMO_TARGETS
from tests.conftest import ACCOUNT, TOKEN

pytestmark = pytest.mark.usefixtures("prefect_harness")

ORDERS = DEMO_TARGETS[0]  # the test emulator's job 11 builds orders (not customers)
WAIT = WaitSettings(poll_interval_seconds=0.05, max_wait_seconds=20)


def creds(emulator: EmulatorServer) -> DbtCloudCredentials:
    return DbtCloudCredentials(account_id=ACCOUNT, api_token=TOKEN, access_url=emulator.url)


@pytest.fixture
def variable(request: pytest.FixtureRequest) -> Iterator[str]:
    """A variable name of this test's own, unset again afterwards."""
    name = "targets_" + request.node.name.lower().replace("[", "_").replace("]", "").replace("-", "_")[:40]
    yield name
    Variable.unset(name)


def as_json(targets: list[LoadTarget]) -> list[dict[str, object]]:
    return [target.model_dump(mode="json", exclude_defaults=True) for target in targets]


def refused(emulator: EmulatorServer, snowflake: SnowflakeConnector, targets: str, job_id: int = 11) -> str:
    """The error of an ETL run given ``targets``; asserts that nothing was triggered."""
    before = emulator.emulator.trigger_count.get(job_id, 0)
    with pytest.raises(ValueError) as info:
        dbt_cloud_etl(job_id, targets, snowflake, creds(emulator), wait=WAIT)
    assert emulator.emulator.trigger_count.get(job_id, 0) == before
    return str(info.value)


def test_the_etl_loads_the_targets_the_variable_holds(
    emulator: EmulatorServer, snowflake: SnowflakeConnector, variable: str
) -> None:
    Variable.set(variable, as_json([ORDERS]))
    summary = dbt_cloud_etl(11, variable, snowflake, creds(emulator), wait=WAIT)
    assert summary.rows_by_target == {"orders": 4}
    # Edited in one place, read at the next run.
    Variable.set(variable, as_json([ORDERS.model_copy(update={"name": "orders_edited"})]), overwrite=True)
    again = dbt_cloud_etl(11, variable, snowflake, creds(emulator), wait=WAIT)
    assert again.rows_by_target == {"orders_edited": 0}


def test_a_variable_saved_as_a_json_string_is_read_too(
    emulator: EmulatorServer, snowflake: SnowflakeConnector, variable: str
) -> None:
    Variable.set(variable, json.dumps(as_json([ORDERS])))
    assert list(dbt_cloud_etl(11, variable, snowflake, creds(emulator), wait=WAIT).rows_by_target) == ["orders"]


def test_a_missing_variable_names_itself_and_how_to_create_it(
    emulator: EmulatorServer, snowflake: SnowflakeConnector, variable: str
) -> None:
    message = refused(emulator, snowflake, variable)
    assert f"targets names the Prefect variable {variable!r}, which does not exist" in message
    assert f"prefect variable set {variable} '" in message and "Nothing was triggered" in message


def test_a_variable_that_is_not_a_list_of_targets_names_the_field(
    emulator: EmulatorServer, snowflake: SnowflakeConnector, variable: str
) -> None:
    broken = as_json([ORDERS])
    del broken[0]["key_columns"]
    Variable.set(variable, broken)
    message = refused(emulator, snowflake, variable)
    assert "whose value is not a list of LoadTarget: 0.key_columns: Field required" in message
    Variable.set(variable, "[{not json", overwrite=True)
    assert "whose value is not JSON" in refused(emulator, snowflake, variable)
    Variable.set(variable, [], overwrite=True)
    assert f"{variable!r}, which holds an empty list" in refused(emulator, snowflake, variable)


def test_a_string_that_cannot_be_a_variable_name_says_so(
    emulator: EmulatorServer, snowflake: SnowflakeConnector
) -> None:
    message = refused(emulator, snowflake, "ANALYTICS.MARTS.ORDERS")
    assert "'ANALYTICS.MARTS.ORDERS' is not a variable name" in message


def test_the_pipelines_of_the_many_flow_come_from_a_variable(
    emulator: EmulatorServer, snowflake: SnowflakeConnector, variable: str
) -> None:
    Variable.set(variable, [{"job_id": 11, "name": "nightly", "targets": as_json([ORDERS])}])
    (summary,) = dbt_cloud_etl_many(variable, snowflake, creds(emulator), wait=WAIT)
    assert summary.pipeline == "nightly" and summary.rows_by_target == {"orders": 4}


def test_the_reconcile_reads_the_same_variable(
    emulator: EmulatorServer, snowflake: SnowflakeConnector, variable: str
) -> None:
    Variable.set(variable, as_json([ORDERS]))
    dbt_cloud_etl(11, variable, snowflake, creds(emulator), wait=WAIT)
    (report,) = dbt_cloud_reconcile(variable, snowflake, reconcile=ReconcileSettings(dry_run=True))
    assert (report.target, report.kind, report.rows_loaded) == (ORDERS.name, "reconcile", 0)
