"""The read of a job's runs before the trigger, skipped only on the first attempt of a run tree (keys.run_tree_scope,
tasks.start): a first attempt triggers without it; every kind of retry, and every doubtful shape, still searches
for the run carrying its key and reuses it. Polling without history (adaptive_polling off), on the session's
Prefect test server: the same start as a webhook wait's, without the event path."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from prefect import flow, task

from dbt_cloud_gate.blocks.dbt_cloud import DbtCloudCredentials
from dbt_cloud_gate.dbtcloud_api.emulator import EmulatorServer, Fault
from dbt_cloud_gate.flows.dbt_cloud import run_dbt_cloud_job
from dbt_cloud_gate.flows.demo import DEMO_TARGETS
from dbt_cloud_gate.flows.etl import dbt_cloud_etl
from dbt_cloud_gate.settings import LoadSettings, WaitSettings
from dbt_cloud_gate.stack.embedded import fakesnow_connector, fakesnow_server, seed_demo_tables
from tests.conftest import ACCOUNT, TOKEN

pytestmark = pytest.mark.usefixtures("prefect_harness")

# No history needed: the start may skip its read.
NO_HISTORY = WaitSettings(poll_interval_seconds=0.05, max_wait_seconds=20, adaptive_polling=False)


def creds(emulator: EmulatorServer) -> DbtCloudCredentials:
    return DbtCloudCredentials(account_id=ACCOUNT, api_token=TOKEN, access_url=emulator.url)


def sent(emulator: EmulatorServer, start: int = 0) -> Counter[str]:
    """Requests since index ``start``, by kind (listings of runs, triggers, job and run reads, artifacts)."""
    return Counter(r.kind for r in emulator.emulator.requests[start:])


def kill_one_read(emulator: EmulatorServer) -> None:
    """A 403 on the next read of a run: the wait dies mid-run, as a crashed worker's would."""
    emulator.emulator.add_fault(Fault(kind="status", status=403, method="GET", path=r"/runs/\d+/$", times=1))


def test_a_first_attempt_triggers_without_reading_the_jobs_runs(emulator: EmulatorServer) -> None:
    result = run_dbt_cloud_job(11, creds(emulator), wait=NO_HISTORY)
    assert result.status == "Success" and [m.name for m in result.models] == ["stg_orders", "orders"]
    counts = sent(emulator)
    assert counts["list"] == 0 and counts["trigger"] == 1 and counts["job"] == 0 and counts["artifact"] == 1
    # Adaptive polling (the default) reads it too, for the job's history, but after the trigger, as the first poll.
    start = len(emulator.emulator.requests)
    run_dbt_cloud_job(11, creds(emulator), wait=NO_HISTORY.model_copy(update={"adaptive_polling": True}))
    kinds = [r.kind for r in emulator.emulator.requests[start:]]
    assert kinds.count("list") == 1 and kinds.index("trigger") < kinds.index("list"), kinds


def test_without_model_results_a_run_costs_the_trigger_and_its_reads(emulator: EmulatorServer) -> None:
    result = run_dbt_cloud_job(11, creds(emulator), wait=NO_HISTORY.model_copy(update={"model_results": False}))
    assert result.status == "Success" and result.models == []
    counts = sent(emulator)
    assert counts["artifact"] == 0 and counts["list"] == 0 and counts["trigger"] == 1
    assert sum(counts.values()) == 1 + counts["run"]


@pytest.mark.parametrize(
    "policy",
    [{"if_running": "reuse"}, {"if_running": "fail"}, {"native_schedule": "fail"}, {"native_schedule": "disable"}],
)
def test_policies_that_need_the_jobs_runs_still_read_them(emulator: EmulatorServer, policy: dict[str, str]) -> None:
    run_dbt_cloud_job(11, creds(emulator), wait=NO_HISTORY, start=policy)
    assert sent(emulator)["list"] == 1


def test_the_schedule_warning_comes_from_the_runs_read_when_the_start_skipped_it(
    emulator: EmulatorServer, caplog: pytest.LogCaptureFixture
) -> None:
    # Job 13 has its own dbt Cloud schedule on.
    with caplog.at_level(logging.WARNING):
        run_dbt_cloud_job(13, creds(emulator), wait=NO_HISTORY)
    counts = sent(emulator)
    assert counts["list"] == 0 and counts["job"] == 0
    assert "dbt Cloud job 13 ('scheduled') has its own dbt Cloud schedule on" in caplog.text
    reads = [r for r in emulator.emulator.requests if r.kind == "run"]
    assert reads and all("job" in ",".join(r.query["include_related"]).split(",") for r in reads)
    # Turned off: no warning.
    emulator.emulator.job_objects[13]["triggers"]["schedule"] = False
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        run_dbt_cloud_job(13, creds(emulator), wait=NO_HISTORY)
    assert "has its own dbt Cloud schedule on" not in caplog.text


def test_a_flow_retry_searches_and_reuses_its_run(emulator: EmulatorServer) -> None:
    kill_one_read(emulator)
    result = run_dbt_cloud_job.with_options(retries=1, retry_delay_seconds=0)(11, creds(emulator), wait=NO_HISTORY)
    assert result.status == "Success"
    assert emulator.emulator.trigger_count[11] == 1 and sent(emulator)["list"] == 1  # the retry's search


def _tree(credentials: DbtCloudCredentials, shape: str) -> Any:
    @flow
    def middle() -> int:
        return run_dbt_cloud_job(11, credentials, wait=NO_HISTORY).run_id

    @task(retries=1, retry_delay_seconds=0)
    def in_task() -> int:
        return run_dbt_cloud_job(11, credentials, wait=NO_HISTORY).run_id

    @flow(retries=1, retry_delay_seconds=0)
    def parent() -> int:
        if shape == "parent":
            return run_dbt_cloud_job(11, credentials, wait=NO_HISTORY).run_id
        if shape == "grandparent":
            return middle()
        return in_task()  # retried by the task itself: the parent flow run's run_count stays 1

    return parent


@pytest.mark.parametrize(
    ("shape", "searches"),
    # A subflow called in a task is never a sure first attempt (a task retry re-runs it): it searches twice.
    [("parent", 1), ("grandparent", 1), ("subflow-in-a-task", 2)],
)
def test_an_ancestor_retry_searches_and_reuses_the_run(emulator: EmulatorServer, shape: str, searches: int) -> None:
    kill_one_read(emulator)
    run_id = _tree(creds(emulator), shape)()
    assert [r.id for r in emulator.emulator.runs_of(11)] == [run_id] and emulator.emulator.trigger_count[11] == 1
    assert sent(emulator)["list"] == searches


def test_equal_calls_from_tasks_of_one_flow_run_keep_sharing_their_run(emulator: EmulatorServer) -> None:
    """Two equal subflow calls from tasks of one flow run share a key (keys.key_scope): the second must still find
    the first's run, as before the search could be skipped."""
    credentials = creds(emulator)

    @task
    def call() -> int:
        return run_dbt_cloud_job(11, credentials, wait=NO_HISTORY).run_id

    @flow
    def twice() -> list[int]:
        return [call(), call()]

    first, second = twice()
    assert first == second and emulator.emulator.trigger_count[11] == 1 and sent(emulator)["list"] == 2


def test_the_flow_body_called_through_fn_shares_its_callers_run_and_searches(emulator: EmulatorServer) -> None:
    credentials = creds(emulator)

    @flow
    async def caller() -> list[int]:
        return [(await run_dbt_cloud_job.fn(11, credentials, wait=NO_HISTORY)).run_id for _ in range(2)]

    first, second = asyncio.run(caller())
    assert first == second and emulator.emulator.trigger_count[11] == 1 and sent(emulator)["list"] == 2


def test_the_etl_guard_reads_the_model_results_whatever_wait_says(emulator: EmulatorServer, tmp_path: Path) -> None:
    """check_model_built is a consumer of the per-model results: the ETL turns model_results back on for it, and
    leaves it off when the guard is off."""
    off = NO_HISTORY.model_copy(update={"model_results": False})
    with fakesnow_server(db_path=str(tmp_path)) as settings:
        connector = fakesnow_connector(settings)
        seed_demo_tables(connector, new_rows=4)
        summary = dbt_cloud_etl(11, DEMO_TARGETS[:1], connector, creds(emulator), wait=off)
        assert summary.rows_by_target == {"orders": 4} and sent(emulator)["artifact"] == 1
        start = len(emulator.emulator.requests)
        seed_demo_tables(connector, new_rows=2)
        unguarded = LoadSettings(check_model_built=False)
        summary = dbt_cloud_etl(11, DEMO_TARGETS[:1], connector, creds(emulator), wait=off, load=unguarded)
        assert summary.rows_by_target == {"orders": 2} and sent(emulator, start)["artifact"] == 0
