"""End to end with real components: `prefect server start`, a process work pool, `prefect deploy --all`, a
worker, and runs of the ETL deployment against the emulator and a fakesnow server."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL, temporary_settings

from blocks.dbt_cloud import DbtCloudCredentials
from dbtcloud_api.emulator import Emulator, EmulatorServer, JobSpec
from flows.embedded import fakesnow_connector, fakesnow_server, seed_demo_tables
from tests.conftest import ACCOUNT, TOKEN

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cli(env: dict[str, str], *args: str, timeout: float = 180) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "prefect", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, f"prefect {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def server_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    home = tmp_path_factory.mktemp("prefect-server-home")
    port = free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "",
        "DBT_CLOUD_GATE_HOME": str(ROOT),
    }
    env.pop("PREFECT_FLOWS_HEARTBEAT_FREQUENCY")
    log = (home / "server.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, (home / "server.log").read_text()[-3000:]
            time.sleep(0.5)
        yield env
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()


def run_deployment(env: dict[str, str], name: str, parameters: dict[str, Any] | None = None) -> Any:
    with temporary_settings({PREFECT_API_URL: env["PREFECT_API_URL"]}), get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(name)
        flow_run = client.create_flow_run_from_deployment(deployment.id, parameters=parameters or {})
        deadline = time.monotonic() + 240
        while True:
            flow_run = client.read_flow_run(flow_run.id)
            if flow_run.state is not None and flow_run.state.is_final():
                return flow_run
            assert time.monotonic() < deadline, f"flow run stuck in {flow_run.state}"
            time.sleep(1)


def query(connector: Any, statement: str) -> list[tuple[Any, ...]]:
    with connector.get_connection() as connection:
        cursor = connection.cursor()
        cursor.execute(statement)
        return list(cursor.fetchall())


def test_deploy_all_and_a_worker_runs_the_etl(server_env: dict[str, str], tmp_path: Path) -> None:
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
    ]
    emulator = Emulator(jobs, account_id=ACCOUNT, token=TOKEN)
    with EmulatorServer(emulator) as dbt, fakesnow_server(db_path=str(tmp_path)) as snow:
        connector = fakesnow_connector(snow)
        seed_demo_tables(connector, new_rows=5)
        with temporary_settings({PREFECT_API_URL: server_env["PREFECT_API_URL"]}):
            DbtCloudCredentials(account_id=ACCOUNT, api_token=TOKEN, access_url=dbt.url).save("e2e-dbt")
            connector.save("e2e-snowflake")
        for name, value in (
            ("dbt_cloud_job_id", "21"),
            ("dbt_cloud_credentials_block", "e2e-dbt"),
            ("snowflake_connector_block", "e2e-snowflake"),
        ):
            cli(server_env, "variable", "set", name, value)
        cli(server_env, "work-pool", "create", "dbt-cloud-gate", "--type", "process")
        deployed = cli(server_env, "--no-prompt", "deploy", "--all")
        assert "nightly-etl" in deployed and "dbt-cloud-job" in deployed
        worker_log = (tmp_path / "worker.log").open("w")
        worker = subprocess.Popen(
            [sys.executable, "-m", "prefect", "worker", "start", "--pool", "dbt-cloud-gate"],
            env=server_env,
            cwd=ROOT,
            stdout=worker_log,
            stderr=subprocess.STDOUT,
        )
        try:
            ok = run_deployment(server_env, "dbt-cloud-etl/nightly-etl", {"poll_interval_seconds": 0.2})
            assert ok.state.type.value == "COMPLETED", (tmp_path / "worker.log").read_text()[-4000:]
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

            seed_demo_tables(connector, new_rows=3)
            failed = run_deployment(
                server_env, "dbt-cloud-etl/nightly-etl", {"job_id": 22, "poll_interval_seconds": 0.2}
            )
            assert failed.state.type.value == "FAILED"
            assert len(emulator.runs_of(22)) == 1
            assert query(connector, "SELECT COUNT(*) FROM ANALYTICS.MARTS.ORDERS") == [(5,)]
            assert len(query(connector, "SELECT * FROM ANALYTICS.MARTS.DBT_CLOUD_GATE_AUDIT")) == 2
        finally:
            worker.terminate()
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()
