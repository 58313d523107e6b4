"""``python -m dbt_cloud_gate.stack`` as a user runs it: a subprocess that starts a Prefect server, the emulator (http and https), fakesnow, the
webhook receiver and a worker, deploys prefect.yaml, runs deployments, stops on SIGINT or SIGTERM with no process left behind, and
starts again on the same state without duplicating anything."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from dbt_cloud_gate.dbtcloud_api import DbtCloudClient
from dbt_cloud_gate.dbtcloud_api.emulator.jobs import DEMO_ACCOUNT_ID, DEMO_TOKEN
from dbt_cloud_gate.stack.__main__ import CREDENTIALS_BLOCK, DEPLOYMENTS, SNOWFLAKE_BLOCK, TARGETS_VARIABLE
from dbt_cloud_gate.stack.embedded import DEMO_TARGETS
from dbt_cloud_gate.stack.services import ROOT, WORK_POOL, descendants
from dbt_cloud_gate.tasks.webhooks import DEFAULT_SECRET_BLOCK
from tests.stack_helpers import RunningStack, child, rows, wait_console, wait_state

pytestmark = pytest.mark.slow


def check_children_are_restarted(stack: RunningStack) -> None:
    """A worker killed under a running flow run, then the server killed: each is restarted, the flow run ends, and a
    new ETL run loads (the emulator and fakesnow, in the stack's own process, keep their state)."""
    deployments = stack.info["deployments"]
    with stack.client() as client:
        job = client.create_flow_run_from_deployment(
            deployments["dbt-cloud-job/dbt-cloud-job"], parameters={"wait": {"poll_interval_seconds": 0.2}}
        )
        wait_state(client, job.id, {"RUNNING"})
        worker = child(stack, b"worker\x00start")
        os.kill(worker[0], signal.SIGKILL)  # the worker alone: its flow run's process is orphaned
        wait_console(stack, "The worker runs again.")
        assert child(stack, b"worker\x00start") != worker
        # Its flow run ends, never left Running (Prefect's worker marks the runs of its crashed predecessor Crashed,
        # or the run finishes on its own).
        assert wait_state(client, job.id, {"COMPLETED", "FAILED", "CRASHED"}).state.type.value in {
            "COMPLETED",
            "CRASHED",
        }
    os.kill(child(stack, b"server\x00start")[0], signal.SIGKILL)
    wait_console(stack, "The Prefect server runs again.")
    with stack.client() as client:
        etl = client.create_flow_run_from_deployment(
            deployments["dbt-cloud-etl/nightly-etl"], parameters={"wait": {"poll_interval_seconds": 0.2}}
        )
        done = wait_state(client, etl.id, {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"})
        assert done.state.type.value == "COMPLETED", stack.console()


def check_webhooks(stack: RunningStack) -> None:
    """The receiver answers, the emulator's one subscription points at it, and only its secret is in the block."""
    health = httpx.get(stack.info["receiver_health_url"], timeout=10).json()
    assert health["status"] == "ok" and health["secrets"] == 1
    with DbtCloudClient(DEMO_ACCOUNT_ID, DEMO_TOKEN, access_url=stack.info["emulator_url"]) as dbt:
        [subscription] = dbt.list_webhook_subscriptions()
    assert subscription.id == stack.info["webhook_subscription"] and subscription.active
    assert subscription.client_url == stack.info["receiver_url"] and subscription.job_ids == []
    with stack.client() as client:  # read through the API: Secret.load would emit an event to this server
        kept = client.read_block_document_by_name(DEFAULT_SECRET_BLOCK, "secret", include_secrets=True).data
    assert list(kept["value"]) == [subscription.id]


def check_doctor(stack: RunningStack) -> None:
    """``python -m dbt_cloud_gate doctor`` against the running stack, on this machine (the worker's): nothing fails,
    the worker's heartbeat, the subscription and the receiver included."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_")}
    env.update(PREFECT_API_URL=stack.info["api_url"], DBT_CLOUD_GATE_HOME=str(ROOT))
    doctor = [sys.executable, "-m", "dbt_cloud_gate", "doctor", "--json"]
    done = subprocess.run(
        doctor, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    status = {check["name"]: check["status"] for check in json.loads(done.stdout)["checks"]}
    for name in ("variables", "credentials-block", "snowflake-block", "worker", "job-schedule", "webhook-receiver"):
        assert status[name] == "ok", done.stdout
    assert status["webhook-subscription"] == "ok" and DEMO_TOKEN not in done.stdout


def check_https(stack: RunningStack) -> bytes:
    """The emulator also answers on https, to clients given the CA file the stack printed: dbt-cloud-cli with the
    environment docs/deploying.md shows, and a plain HTTP call. Returns the CA certificate."""
    https, ca = stack.info["emulator_https_url"], stack.info["emulator_ca_file"]
    assert https in stack.console() and f"REQUESTS_CA_BUNDLE={ca}" in stack.console()
    auth = {"Authorization": f"Token {DEMO_TOKEN}"}
    jobs = httpx.get(f"{https}/api/v2/accounts/{DEMO_ACCOUNT_ID}/jobs/", headers=auth, verify=ca, timeout=10)
    assert [job["id"] for job in jobs.json()["data"]] == [101, 102, 103]
    env = {
        **os.environ,
        "DBT_CLOUD_HOST": https.removeprefix("https://"),
        "DBT_CLOUD_ACCOUNT_ID": str(DEMO_ACCOUNT_ID),
        "DBT_CLOUD_API_TOKEN": DEMO_TOKEN,
        "REQUESTS_CA_BUNDLE": ca,
    }
    cli = [sys.executable, "-c", "from dbt_cloud.cli import dbt_cloud; dbt_cloud()", "job", "get", "--job-id", "101"]
    done = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout)["data"]["name"] == "Nightly build"
    return Path(ca).read_bytes()


def test_stack_deploys_runs_stops_and_starts_again_on_the_same_state(tmp_path: Path) -> None:
    state = tmp_path / "stack"
    first = RunningStack(state, fresh=True)  # a new database, migrated at start, as a user's first start
    try:
        # A second stack on the same state refuses at once (one server per database).
        twin = subprocess.run(
            [sys.executable, "-m", "dbt_cloud_gate.stack", "--state-dir", str(state), "--port", "0"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
        assert twin.returncode == 1 and "already runs" in twin.stdout
        check_webhooks(first)
        check_doctor(first)
        authority = check_https(first)

        with first.client() as client:
            deployed = {name: str(client.read_deployment_by_name(name).id) for name in DEPLOYMENTS}
            assert deployed == first.info["deployments"]
            assert client.read_work_pool(WORK_POOL).type == "process"
            assert client.read_variable_by_name("dbt_cloud_credentials_block").value == CREDENTIALS_BLOCK
            assert client.read_variable_by_name("snowflake_connector_block").value == SNOWFLAKE_BLOCK
            targets = client.read_variable_by_name(TARGETS_VARIABLE).value
            assert [t["target_table"] for t in targets] == [t.target_table for t in DEMO_TARGETS]
            etl = client.create_flow_run_from_deployment(
                deployed["dbt-cloud-etl/nightly-etl"], parameters={"wait": {"poll_interval_seconds": 0.2}}
            )
            done = wait_state(client, etl.id, {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"})
            assert done.state.type.value == "COMPLETED", (state / "worker.log").read_text()[-6000:]
            # The receiver's events end a webhook wait (a 120 s safety net: polling alone would not be done yet).
            hooked = client.create_flow_run_from_deployment(
                deployed["dbt-cloud-job/dbt-cloud-job"], parameters={"wait": {"webhooks": True}}
            )
            done = wait_state(client, hooked.id, {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}, timeout=100)
            assert done.state.type.value == "COMPLETED", (state / "worker.log").read_text()[-6000:]
            assert "the poll after a wake-up saw it end" in (state / "worker.log").read_text()
            # A run still in flight when the stack stops: its process goes too.
            job = client.create_flow_run_from_deployment(
                deployed["dbt-cloud-job/dbt-cloud-job"], parameters={"wait": {"poll_interval_seconds": 0.2}}
            )
            wait_state(client, job.id, {"RUNNING"})
        loaded = rows(first.info, "SELECT COUNT(*) FROM ANALYTICS.MARTS.ORDERS")
        assert loaded == [(3,)]
        assert rows(first.info, "SELECT COUNT(*) FROM ANALYTICS.MARTS.DBT_CLOUD_GATE_AUDIT") == [(2,)]
        engines = [
            p for p in descendants(first.process.pid) if b"prefect.engine" in Path(f"/proc/{p[0]}/cmdline").read_bytes()
        ]
        assert engines, "no flow run process under the worker"
        assert first.stop(signal.SIGINT) == []
    finally:
        if first.process.poll() is None:
            first.process.kill()

    # Right after the stop, on the same port: the connections the stopped server left in TIME_WAIT do not count.
    port = int(first.info["ui_url"].rsplit(":", 1)[1])
    second = RunningStack(state, port=port)
    try:
        assert second.info["ui_url"] == first.info["ui_url"]
        assert second.info["deployments"] == deployed  # updated, not created anew
        check_webhooks(second)  # a new subscription on the fresh emulator; the old one's secret dropped
        assert check_https(second) == authority  # the certificate made on the first start is kept
        assert second.info["webhook_subscription"] != first.info["webhook_subscription"]
        with second.client() as client:
            assert [pool.name for pool in client.read_work_pools()].count(WORK_POOL) == 1
            names = [doc.name for doc in client.read_block_documents()]
            assert names.count(CREDENTIALS_BLOCK) == 1 and names.count(SNOWFLAKE_BLOCK) == 1
            assert client.read_flow_run(etl.id).state.type.value == "COMPLETED"  # the server's database was kept
        assert rows(second.info, "SELECT COUNT(*) FROM ANALYTICS.MARTS.ORDERS") == loaded  # fakesnow's data too
        check_children_are_restarted(second)
        # Closing the terminal (SIGHUP) stops everything, as Ctrl-C does (SIGTERM takes the same path).
        assert second.stop(signal.SIGHUP) == []
    finally:
        if second.process.poll() is None:
            second.process.kill()
