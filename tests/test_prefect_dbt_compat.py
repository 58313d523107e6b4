"""Coming from prefect-dbt: its saved ``DbtCloudCredentials`` block (slug ``dbt-cloud-credentials``), by name or as
an instance, works wherever our flows take credentials, without prefect-dbt installed."""

from __future__ import annotations

import pytest
from prefect.blocks.core import Block
from pydantic import SecretStr

from dbt_cloud_gate import DbtCloudCredentials, run_dbt_cloud_job
from dbt_cloud_gate.blocks.dbt_cloud import resolve_credentials
from dbt_cloud_gate.dbtcloud_api import DbtCloudConfigError
from dbt_cloud_gate.dbtcloud_api.emulator import EmulatorServer
from tests.conftest import ACCOUNT, TOKEN

pytestmark = pytest.mark.usefixtures("prefect_harness")


class TheirCredentials(Block):
    """A stand-in with the slug and fields of prefect-dbt's block (prefect-dbt is not a dependency here)."""

    _block_type_slug = "dbt-cloud-credentials"
    _block_type_name = "dbt Cloud Credentials (prefect-dbt stand-in)"

    api_key: SecretStr
    account_id: int
    domain: str = "cloud.getdbt.com"


def test_their_saved_block_by_name_and_as_an_instance_runs_our_flow(emulator: EmulatorServer) -> None:
    theirs = TheirCredentials(api_key=SecretStr(TOKEN), account_id=ACCOUNT, domain=emulator.url)
    theirs.save("from-prefect-dbt", overwrite=True)

    by_name = run_dbt_cloud_job(11, "from-prefect-dbt", wait={"poll_interval_seconds": 0.2})
    by_slug = run_dbt_cloud_job(11, "dbt-cloud-credentials/from-prefect-dbt", wait={"poll_interval_seconds": 0.2})
    as_instance = run_dbt_cloud_job(11, theirs, wait={"poll_interval_seconds": 0.2})  # type: ignore[arg-type]
    assert [r.status for r in (by_name, by_slug, as_instance)] == ["Success"] * 3
    assert emulator.emulator.trigger_count[11] == 3

    resolved = resolve_credentials("from-prefect-dbt")
    assert isinstance(resolved, DbtCloudCredentials) and resolved.account_id == ACCOUNT
    assert resolved.api_token.get_secret_value() == TOKEN and resolved.access_url.startswith("http://127.0.0.1")


def test_a_name_that_is_neither_block_says_both() -> None:
    with pytest.raises(DbtCloudConfigError, match="neither a dbt Cloud Gate Credentials block nor prefect-dbt"):
        resolve_credentials("no-such-block-anywhere")


# The flow names prefect-dbt's flows register under (prefect_dbt/cloud/jobs.py: `run_dbt_cloud_job` takes its
# function's name, the others name themselves). Read from prefect-dbt itself when it is installed.
PREFECT_DBT_FLOW_NAMES = {
    "run-dbt-cloud-job",
    "Trigger dbt Cloud job run and wait for completion",
    "Retry subset of dbt Cloud job run and wait for completion",
}


def _their_flow_names() -> set[str]:
    try:
        from prefect_dbt.cloud import jobs  # type: ignore[import-not-found]
    except ImportError:
        return PREFECT_DBT_FLOW_NAMES
    from prefect import Flow

    return {obj.name for obj in vars(jobs).values() if isinstance(obj, Flow)} | PREFECT_DBT_FLOW_NAMES


def test_our_flow_names_do_not_collide_with_prefect_dbts() -> None:
    from prefect import Flow

    import dbt_cloud_gate

    ours = {name: obj.name for name in dbt_cloud_gate.__all__ if isinstance(obj := getattr(dbt_cloud_gate, name), Flow)}
    assert {"run_dbt_cloud_job", "run_dbt_cloud_jobs", "dbt_cloud_etl"} <= set(ours), ours
    assert ours["run_dbt_cloud_job"] == "dbt-cloud-job"
    assert not set(ours.values()) & _their_flow_names(), ours
    assert len(set(ours.values())) == len(ours), "two of our flows share a name"
