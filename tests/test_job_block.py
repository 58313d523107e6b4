"""The dbt Cloud Gate Job block against the emulator on a real Prefect server: saved once, it runs the job with its
credentials, trigger overrides and wait settings; the call's own parameters win; a mistake is refused before
anything is triggered."""

from __future__ import annotations

import uuid

import pytest

from dbt_cloud_gate import DbtCloudJob, run_dbt_cloud_job
from dbt_cloud_gate.blocks.dbt_cloud import DbtCloudCredentials
from dbt_cloud_gate.dbtcloud_api import DbtCloudConfigError
from dbt_cloud_gate.dbtcloud_api.emulator import EmulatorServer
from dbt_cloud_gate.settings import TriggerOverrides, WaitSettings
from tests.conftest import ACCOUNT, TOKEN

pytestmark = pytest.mark.usefixtures("prefect_harness")


def saved_job(emulator: EmulatorServer, job_id: int = 11, **fields: object) -> str:
    name = f"job-{uuid.uuid4().hex[:8]}"
    credentials = DbtCloudCredentials(account_id=ACCOUNT, api_token=TOKEN, access_url=emulator.url)
    DbtCloudJob(credentials=credentials, job_id=job_id, **fields).save(name)  # type: ignore[arg-type]
    return name


def test_a_saved_job_runs_with_its_credentials_overrides_and_wait(emulator: EmulatorServer) -> None:
    name = saved_job(
        emulator,
        trigger=TriggerOverrides(steps_override=["dbt build --select orders"], threads_override=3),
        wait=WaitSettings(poll_interval_seconds=0.05, max_wait_seconds=20),
    )
    result = run_dbt_cloud_job(job=name)  # no job_id, no credentials, no environment: all from the block
    assert result.status == "Success" and result.job_id == 11
    [run] = emulator.emulator.runs_of(11)[-1:]
    assert run.overrides["steps_override"] == ["dbt build --select orders"] and run.overrides["threads_override"] == 3
    assert emulator.emulator.trigger_count[11] == 1
    # And by the block's type slug and name, as a deployment's parameter names it; the call's own trigger wins.
    again = run_dbt_cloud_job(job=f"dbt-cloud-gate-job/{name}", trigger=TriggerOverrides(threads_override=5))
    assert again.status == "Success" and emulator.emulator.runs_of(11)[-1].overrides == {"threads_override": 5}


def test_a_job_id_other_than_the_blocks_is_refused_before_any_trigger(emulator: EmulatorServer) -> None:
    name = saved_job(emulator, wait=WaitSettings(poll_interval_seconds=0.05))
    with pytest.raises(ValueError, match="job_id 12 differs from the job block's job 11"):
        run_dbt_cloud_job(12, job=name)
    assert emulator.emulator.trigger_count == {}


def test_a_missing_job_block_or_none_at_all_is_named_before_any_trigger(emulator: EmulatorServer) -> None:
    with pytest.raises(DbtCloudConfigError, match="No saved dbt Cloud Gate Job block named 'nope'"):
        run_dbt_cloud_job(job="nope")
    with pytest.raises(ValueError, match="job_id is missing: give the dbt Cloud job's ID, or a saved job block"):
        run_dbt_cloud_job()
    assert emulator.emulator.trigger_count == {}
