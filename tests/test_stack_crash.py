"""A flow run that loses its process while nothing can report it ends Crashed, frees the deployment's only
concurrency slot, and its retry finds the dbt Cloud run it had started instead of triggering a second.

On the local stack as a user runs it (``prefect deploy --all`` installs the automation through prefect.yaml's build
step): the nightly-etl flow run, its dbt run in flight, loses its process, its worker and the Prefect server at
once (a machine lost). The stack starts the server and the worker again; nobody is left who knows the run, so only
the heartbeat automation can end it.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from prefect.states import AwaitingRetry

from dbt_cloud_gate.automations import AUTOMATION_NAME, SILENCE_SECONDS, WATCH_TAG
from dbt_cloud_gate.stack.services import descendants
from tests.test_stack import RunningStack, child, processes_using, rows, wait_console, wait_state

pytestmark = pytest.mark.slow

ETL = "dbt-cloud-etl/nightly-etl"
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def emulator_runs(stack: RunningStack, before: set[int] | None = None) -> list[dict[str, Any]]:
    """The runs of job 101 on the emulator, oldest first; with ``before``, only those not in it."""
    answer = httpx.get(f"{stack.info['emulator_url']}/_emulator/runs", timeout=10)
    runs = [run for run in answer.json()["data"] if run["job_definition_id"] == 101]
    return [run for run in runs if run["id"] not in (before or set())]


def set_run_seconds(stack: RunningStack, seconds: float) -> None:
    answer = httpx.post(f"{stack.info['emulator_url']}/_emulator/jobs/101", json={"run_seconds": seconds}, timeout=10)
    assert answer.status_code == 200, answer.text


def wait_heartbeat(stack: RunningStack, flow_run_id: Any, timeout: float = 60) -> None:
    """Until the server has stored a heartbeat of the flow run (the trigger's window starts at one)."""
    query = {
        "filter": {
            "event": {"name": ["prefect.flow-run.heartbeat"]},
            "resource": {"id": [f"prefect.flow-run.{flow_run_id}"]},
        }
    }
    deadline = time.monotonic() + timeout
    while not httpx.post(f"{stack.info['api_url']}/events/filter", json=query, timeout=10).json()["events"]:
        assert time.monotonic() < deadline, "no heartbeat of the flow run was stored"
        time.sleep(0.5)


def engine_of(stack: RunningStack) -> tuple[int, int]:
    """The one flow-run process under the stack's worker."""
    (found,) = [
        p for p in descendants(stack.process.pid) if b"prefect.engine" in Path(f"/proc/{p[0]}/cmdline").read_bytes()
    ]
    return found


def client_run_in_flight(stack: RunningStack) -> Any:
    """A dbt-cloud-job flow run, Running under the worker (its process must go with the stack)."""
    set_run_seconds(stack, 60)
    with stack.client() as client:
        job = client.create_flow_run_from_deployment(stack.info["deployments"]["dbt-cloud-job/dbt-cloud-job"])
        wait_state(client, job.id, {"RUNNING"})
    engine_of(stack)
    return job


def test_a_run_that_loses_its_process_ends_crashed_frees_its_slot_and_its_retry_reuses_the_dbt_run(
    tmp_path: Path,
) -> None:
    stack = RunningStack(tmp_path / "stack")
    try:
        with stack.client() as client:
            [automation] = client.read_automations_by_name(AUTOMATION_NAME)  # installed by prefect deploy
            assert automation.enabled
            deployment = client.read_deployment_by_name(ETL)
            limit = deployment.global_concurrency_limit
            assert WATCH_TAG in deployment.tags and limit is not None and limit.limit == 1
            set_run_seconds(stack, 45)  # the dbt run is still in flight when the process goes
            before = {run["id"] for run in emulator_runs(stack)}  # the job's history
            etl = client.create_flow_run_from_deployment(
                stack.info["deployments"][ETL], parameters={"wait": {"poll_interval_seconds": 1}}
            )
            wait_state(client, etl.id, {"RUNNING"})
            deadline = time.monotonic() + 60
            while not emulator_runs(stack, before):
                assert time.monotonic() < deadline, "the ETL run triggered nothing"
                time.sleep(0.3)
            wait_heartbeat(stack, etl.id)
        [dbt_run] = emulator_runs(stack, before)

        # A machine lost: the flow run's process, its worker and the server at once.
        lost = [engine_of(stack), child(stack, b"worker\x00start"), child(stack, b"server\x00start")]
        for pid, _ in lost:
            os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()
        wait_console(stack, "The Prefect server runs again.")
        wait_console(stack, "The worker runs again.")

        with stack.client() as client:
            crashed = wait_state(client, etl.id, FINAL, timeout=SILENCE_SECONDS + 150)
            silent_for = time.monotonic() - killed_at
            assert crashed.state.type.value == "CRASHED", crashed.state
            assert AUTOMATION_NAME in (crashed.state.message or ""), crashed.state.message  # not another path
            # Its subflow (the dbt Cloud job) shared the process: it is watched too, and ends as well.
            [subflow] = [run for run in client.read_flow_runs() if run.parent_task_run_id is not None]
            assert WATCH_TAG in subflow.tags
            assert wait_state(client, subflow.id, FINAL, timeout=60).state.type.value == "CRASHED"

            # Prefect's Retry of the crashed run: it gets the deployment's only slot, finds its dbt run through its
            # key (no second trigger), and loads up to that run's finished_at.
            client.set_flow_run_state(etl.id, AwaitingRetry(), force=True)
            retried = wait_state(client, etl.id, {"COMPLETED", "FAILED", "CANCELLED"}, timeout=180)
            assert retried.state.type.value == "COMPLETED", stack.console()
            assert [run["id"] for run in emulator_runs(stack, before)] == [dbt_run["id"]]
            assert rows(stack.info, "SELECT COUNT(*) FROM ANALYTICS.MARTS.ORDERS") == [(3,)]

            # And the deployment's next run starts and loads.
            set_run_seconds(stack, 3)
            following = client.create_flow_run_from_deployment(
                stack.info["deployments"][ETL], parameters={"wait": {"poll_interval_seconds": 0.5}}
            )
            done = wait_state(client, following.id, FINAL, timeout=180)
            assert done.state.type.value == "COMPLETED", stack.console()
            assert len(emulator_runs(stack, before)) == 2
        print(f"crashed {silent_for:.0f} s after the kill (window {SILENCE_SECONDS} s)")

        # The stack process itself killed: its guardian stops every process it started (each in a session of its
        # own, so nothing else would), the worker's flow runs included, and removes its stack.json.
        job = client_run_in_flight(stack)
        os.kill(stack.process.pid, signal.SIGKILL)
        stack.process.wait(timeout=10)
        deadline = time.monotonic() + 60
        while processes_using(stack.state) or (stack.state / "stack.json").exists():
            assert time.monotonic() < deadline, f"left running: {processes_using(stack.state)}"
            time.sleep(0.2)
        assert job
    finally:
        if stack.process.poll() is None:
            stack.process.kill()
