"""What a user reads: error messages name the setting and read as sentences; the wait's log says what it timed."""

from __future__ import annotations

import logging

import pytest

from dbt_cloud_gate.blocks.dbt_cloud import resolve_credentials
from dbt_cloud_gate.dbtcloud_api import (
    DbtCloudAuthError,
    DbtCloudClient,
    DbtCloudConfigError,
    DbtCloudNotFoundError,
    RunStatus,
)
from dbt_cloud_gate.dbtcloud_api.emulator import EmulatorServer
from dbt_cloud_gate.dbtcloud_api.polling import FixedInterval
from dbt_cloud_gate.dbtcloud_api.wait import wait_for_run
from tests.conftest import ACCOUNT, FAST_RETRY, TOKEN


def test_error_messages_have_no_doubled_full_stop(emulator: EmulatorServer) -> None:
    with DbtCloudClient(ACCOUNT, "tok_wrong_0123", emulator.url, retry=FAST_RETRY) as client:
        with pytest.raises(DbtCloudAuthError) as auth:
            client.get_job(11)
    with DbtCloudClient(ACCOUNT, TOKEN, emulator.url, retry=FAST_RETRY) as client:
        with pytest.raises(DbtCloudNotFoundError) as missing:
            client.get_job(999)
    for message in (str(auth.value), str(missing.value)):
        assert ".." not in message and ". Check" in message, message


def test_a_bad_environment_setting_names_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DBT_CLOUD_ACCOUNT_ID", "abc")
    monkeypatch.setenv("DBT_CLOUD_API_TOKEN", "tok_abc")
    with pytest.raises(DbtCloudConfigError, match="DBT_CLOUD_ACCOUNT_ID: Input should be a valid integer") as info:
        resolve_credentials(None)
    assert "tok_abc" not in str(info.value)


def test_the_wait_log_tells_its_own_time_from_the_run_time(
    client: DbtCloudClient, emulator: EmulatorServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    run = client.trigger_job_run(11, "log wording")
    done = wait_for_run(client, run.id, schedule=FixedInterval(0.05), max_wait_seconds=30, job_id=11)
    assert done.status is RunStatus.SUCCESS
    final = [r.getMessage() for r in caplog.records if "is Success" in r.getMessage()]
    assert final and "s into this wait; the run took" in final[-1] and "s in dbt Cloud" in final[-1]
