"""End to end with real components: `prefect server start`, a process work pool, `prefect deploy --all`, a
worker, the webhook receiver (the emulator's subscription points at it), and runs of the deployments against the
emulator and a fakesnow server."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.states import Scheduled

from dbt_cloud_gate.blocks.dbt_cloud import DbtCloudCredentials
from dbt_cloud_gate.dbtcloud_api.emulator import Emulator, JobSpec
from dbt_cloud_gate.stack import services
from dbt_cloud_gate.stack.__main__ import TARGETS_VARIABLE
from dbt_cloud_gate.stack.embedded import DEMO_TARGETS
from dbt_cloud_gate.stack.services import ROOT
from tests.conftest import ACCOUNT, TOKEN
from tests.prefect_compat import load_deploy_configs_and_actions
from tests.prefect_db import seed_prefect_home

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]


DEPLOY_TIME_HOME = "/deploy-time/checkout"


def pull_steps() -> list[dict[str, Any]]:
    _, actions = load_deploy_configs_and_actions(ROOT / "prefect.yaml")
    return list(actions["pull"])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[services.PrefectServer]:
    with services.PrefectServer(seed_prefect_home(tmp_path_factory.mktemp("prefect-server-home")), ui=False) as started:
        yield started


def query(connector: Any, statement: str) -> list[tuple[Any, ...]]:
    with connector.get_connection() as connection:
        cursor = connection.cursor()
        cursor.execute(statement)
        return list(cursor.fetchall())


@dataclass
class Stack:
    """The deployed project: server env, emulator, fakesnow connector, a worker."""

    env: dict[str, str]
    emulator: Emulator
    connector: Any
    worker: services.Worker
    receiver: services.WebhookReceiver

    def worker_log(self, size: int = 12000) -> str:
        return self.worker.log(size)


@pytest.fixture(scope="module")
def stack(server: services.PrefectServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("e2e")
    jobs = [
        JobSpec(id=21, run_seconds=1.0, queue_seconds=0.1, start_seconds=0.1, models=["stg", "orders", "customers"]),
        JobSpec(
            id=22,
            run_seconds=1.0,
            queue_seconds=0.1,
            start_seconds=0.1,
            outcome="error",
            models=["stg", "orders", "customers"],
            failing_model="orders",
        ),
        JobSpec(id=23, run_seconds=8.0, queue_seconds=0.1, start_seconds=0.1, models=["stg", "orders"]),
    ]
    emulator = Emulator(jobs, account_id=ACCOUNT, token=TOKEN)
    with services.dbt_cloud_emulator(emulator) as dbt, services.fakesnow_server(db_path=str(workdir)) as snow:
        connector = services.fakesnow_connector(snow)
        services.seed_demo_tables(connector, new_rows=5)
        credentials = DbtCloudCredentials(account_id=ACCOUNT, api_token=TOKEN, access_url=dbt.url)
        services.save_blocks(server.api_url, credentials, "e2e-dbt", connector, "e2e-snowflake")
        services.set_variables(
            server.api_url,
            {
                "dbt_cloud_job_id": 21,
                "dbt_cloud_credentials_block": "e2e-dbt",
                "snowflake_connector_block": "e2e-snowflake",
                TARGETS_VARIABLE: [t.model_dump(mode="json", exclude_defaults=True) for t in DEMO_TARGETS],
            },
        )
        assert services.ensure_work_pool(server.api_url)
        # The deploying shell's DBT_CLOUD_GATE_HOME must not reach the deployment: the worker's own decides.
        deployed = services.deploy_all({**server.env, "DBT_CLOUD_GATE_HOME": DEPLOY_TIME_HOME})
        assert "nightly-etl" in deployed and "dbt-cloud-job" in deployed
        receiver = services.WebhookReceiver(server.env, workdir / "receiver.log", "e2e-webhook-secrets")
        services.ensure_emulator_webhook(server.api_url, credentials, receiver.url, "e2e-webhook-secrets")
        try:
            with receiver, services.Worker(server.env, workdir / "worker.log", query_seconds=1) as worker:
                yield Stack(server.env, emulator, connector, worker, receiver)
        finally:
            restart_prefect_workers()


def restart_prefect_workers() -> None:
    """Flush and stop this process's Prefect event and log workers: they keep the API URL they started with, so
    the block reads above could leave them sending this module's server's events after it stopped."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    EventsWorker.drain_all(timeout=30, at_exit=False)
    APILogWorker.drain_all(timeout=30, at_exit=False)


def start_deployment(env: dict[str, str], name: str, parameters: dict[str, Any]) -> Any:
    with temporary_settings({PREFECT_API_URL: env["PREFECT_API_URL"]}), get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(name)
        return client.create_flow_run_from_deployment(deployment.id, parameters=parameters)


def wait_final(env: dict[str, str], flow_run_id: Any, timeout: float = 240) -> Any:
    with temporary_settings({PREFECT_API_URL: env["PREFECT_API_URL"]}), get_client(sync_client=True) as client:
        deadline = time.monotonic() + timeout
        while True:
            flow_run = client.read_flow_run(flow_run_id)
            if flow_run.state is not None and flow_run.state.is_final():
                return flow_run
            assert time.monotonic() < deadline, f"flow run stuck in {flow_run.state}"
            time.sleep(0.5)


def wait_running(emulator: Emulator, job_id: int, known: int, timeout: float = 120) -> Any:
    """The first run of ``job_id`` beyond the ``known`` ones, once it is running."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = emulator.runs_of(job_id)
        if len(runs) > known and emulator.clock() >= runs[known].started:
            return runs[known]
        time.sleep(0.2)
    raise AssertionError(f"no run of job {job_id} started")


def test_deploy_all_and_a_worker_runs_the_etl(stack: Stack) -> None:
    env, emulator, connector = stack.env, stack.emulator, stack.connector
    with temporary_settings({PREFECT_API_URL: env["PREFECT_API_URL"]}), get_client(sync_client=True) as client:
        saved = client.read_deployment_by_name("dbt-cloud-etl/nightly-etl").pull_steps
    assert saved == pull_steps() and DEPLOY_TIME_HOME not in str(saved)  # the worker's DBT_CLOUD_GATE_HOME decides
    ok = wait_final(
        env, start_deployment(env, "dbt-cloud-etl/nightly-etl", {"wait": {"poll_interval_seconds": 0.2}}).id
    )
    assert ok.state.type.value == "COMPLETED", stack.worker_log()
    run = emulator.runs_of(21)[0]
    assert query(connector, "SELECT COUNT(*) FROM ANALYTICS.MARTS.ORDERS") == [(5,)]
    audit = query(
        connector,
        "SELECT TARGET, DBT_RUN_ID, DBT_FINISHED_AT, ROWS_LOADED, PREFECT_FLOW_RUN_ID "
        "FROM ANALYTICS.MARTS.DBT_CLOUD_GATE_AUDIT ORDER BY TARGET",
    )
    finished = datetime.fromtimestamp(run.finished, UTC).replace(tzinfo=None)
    assert [(row[1], row[2], row[4]) for row in audit] == [(run.id, finished, str(ok.id))] * 2
    assert {row[0]: row[3] for row in audit} == {
        '"ANALYTICS"."MARTS"."CUSTOMERS"': 5,
        '"ANALYTICS"."MARTS"."ORDERS"': 5,
    }

    services.seed_demo_tables(connector, new_rows=3)
    failed = wait_final(
        env,
        start_deployment(env, "dbt-cloud-etl/nightly-etl", {"job_id": 22, "wait": {"poll_interval_seconds": 0.2}}).id,
    )
    assert failed.state.type.value == "FAILED"
    assert len(emulator.runs_of(22)) == 1
    assert query(connector, "SELECT COUNT(*) FROM ANALYTICS.MARTS.ORDERS") == [(5,)]
    assert len(query(connector, "SELECT * FROM ANALYTICS.MARTS.DBT_CLOUD_GATE_AUDIT")) == 2


def start_slow_job_and_wait_running(stack: Stack) -> tuple[Any, Any]:
    """Start the dbt-cloud-job deployment on the 8 s job 23; returns (flow run, dbt run) once the dbt run runs."""
    known = len(stack.emulator.runs_of(23))
    flow_run = start_deployment(
        stack.env,
        "dbt-cloud-job/dbt-cloud-job",
        {"job_id": 23, "wait": {"poll_interval_seconds": 0.2}, "start": {"if_running": "trigger"}},
    )
    return flow_run, wait_running(stack.emulator, 23, known)


def test_cancelling_the_flow_run_cancels_the_dbt_cloud_run(stack: Stack) -> None:
    before = len(stack.emulator.runs_of(23))
    flow_run, dbt_run = start_slow_job_and_wait_running(stack)
    assert len(stack.emulator.runs_of(23)) == before + 1
    services.prefect_cli(stack.env, "flow-run", "cancel", str(flow_run.id))
    final = wait_final(stack.env, flow_run.id)
    assert final.state.type.value == "CANCELLED", stack.worker_log()
    deadline = time.monotonic() + 30
    while dbt_run.cancelled_at is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert dbt_run.cancelled_at is not None, stack.worker_log()
    # What docs/deploying.md explains: the worker stops the flow run's process with SIGTERM; Prefect marks the task it
    # interrupted Crashed ("Crash detected!") and logs the flow run's last local state ("Finished in state
    # Running()") before the worker sets Cancelled. The cancellation itself is clean: only the wait task crashed.
    with temporary_settings({PREFECT_API_URL: stack.env["PREFECT_API_URL"]}), get_client(sync_client=True) as client:
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run.id])))
    states = {task.name.rsplit("-", 1)[0]: task.state.type.value for task in tasks if task.state is not None}
    assert states == {"start-dbt-cloud-run": "COMPLETED", "wait-for-dbt-cloud-run-and-results": "CRASHED"}, states
    log = stack.worker_log()
    assert "Crash detected! Execution was aborted by a termination signal." in log
    assert "Finished in state Running()" in log


def test_worker_crash_mid_wait_then_retry_resumes_the_same_run(stack: Stack) -> None:
    before = len(stack.emulator.runs_of(23))
    flow_run, dbt_run = start_slow_job_and_wait_running(stack)
    stack.worker.stop(crash=True)  # the worker and the flow run's process die mid-wait
    with temporary_settings({PREFECT_API_URL: stack.env["PREFECT_API_URL"]}), get_client(sync_client=True) as client:
        state = client.read_flow_run(flow_run.id).state
        assert state.type.value == "RUNNING", (
            state,
            [(s.name, s.message) for s in client.read_flow_run_states(flow_run.id)],
        )
        # A retry of the flow run, as from the UI: the same flow run is scheduled again.
        client.set_flow_run_state(flow_run.id, Scheduled(), force=True)
    stack.worker.start()
    final = wait_final(stack.env, flow_run.id)
    assert final.state.type.value == "COMPLETED", stack.worker_log()
    assert final.run_count >= 2
    runs = stack.emulator.runs_of(23)
    assert len(runs) == before + 1 and runs[-1].id == dbt_run.id  # no second dbt run
    with temporary_settings({PREFECT_API_URL: stack.env["PREFECT_API_URL"]}), get_client(sync_client=True) as client:
        result = client.read_flow_run(flow_run.id).state
    assert result is not None and result.is_completed()


def test_a_deployed_webhook_wait_ends_on_the_receivers_event(stack: Stack) -> None:
    known = len(stack.emulator.runs_of(21))
    # A 60 s safety net: only the webhook, through the receiver and the server's events, can end this wait early.
    flow_run = start_deployment(
        stack.env,
        "dbt-cloud-job/dbt-cloud-job",
        {"job_id": 21, "wait": {"webhooks": True, "fallback_poll_seconds": 60}},
    )
    final = wait_final(stack.env, flow_run.id, timeout=120)
    assert final.state.type.value == "COMPLETED", stack.worker_log()
    run = stack.emulator.runs_of(21)[known]
    log = stack.worker_log(60000)
    assert "Webhook waits on: subscribed to dbt Cloud webhook events" in log
    assert f"dbt Cloud run {run.id}: the poll after a wake-up saw it end (Success)." in log, log[-6000:]
    reads = [r for r in stack.emulator.requests if r.method == "GET" and r.path.endswith(f"/runs/{run.id}/")]
    assert len(reads) == 1  # no poll before the wake-up (the first safety-net poll is 60 s away), one after it
    assert final.end_time is not None and (final.end_time.timestamp() - run.finished) < 30
    delivered = {d.event_type for d in stack.emulator.webhooks.deliveries if d.ok and d.run_id == run.id}
    assert delivered == {"job.run.started", "job.run.completed"}
    assert f"of run {run.id}, job 21" in services.log_tail(stack.receiver.log_path, 20000)
