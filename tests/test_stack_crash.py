"""A flow run that loses its process while nothing can report it ends Crashed, frees the deployment's only
concurrency slot, and its retry finds the dbt Cloud run it had started instead of triggering a second; a healthy
watched run that outlives the automation's window and the server's restart is left alone; and a SIGKILL of the
stack itself leaves nothing running.

On the local stack as a user runs it (``prefect deploy --all`` installs the automation through prefect.yaml's build
step): the nightly-etl flow run, its dbt run in flight, loses its process, its worker and the Prefect server at
once (a machine lost). The stack starts the server and the worker again; nobody is left who knows the run, so only
the heartbeat automation can end it.
"""

from __future__ import annotations

import os
import signal
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from prefect.states import AwaitingRetry

from dbt_cloud_gate.automations import (
    AUTOMATION_NAME,
    HEARTBEAT_SECONDS,
    MIN_SILENCE_SECONDS,
    SILENCE_SECONDS,
    WATCH_TAG,
    WINDOW_VARIABLE,
)
from dbt_cloud_gate.stack.processes import holds_environment
from dbt_cloud_gate.stack.services import alive, descendants
from tests.stack_helpers import RunningStack, child, processes_using, rows, wait_console, wait_state

pytestmark = pytest.mark.slow

ETL = "dbt-cloud-etl/nightly-etl"
# The narrowest window a workspace may choose (three heartbeats) rather than the default SILENCE_SECONDS: the same
# automation and the same tolerance of a lost heartbeat, 150 s sooner. The test's healthy run outlives it all the same.
WINDOW = MIN_SILENCE_SECONDS
assert WINDOW < SILENCE_SECONDS
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def emulator_runs(stack: RunningStack, before: set[int] | None = None) -> list[dict[str, Any]]:
    """The runs of job 101 on the emulator, oldest first; with ``before``, only those not in it."""
    answer = httpx.get(f"{stack.info['emulator_url']}/_emulator/runs", timeout=10)
    runs = [run for run in answer.json()["data"] if run["job_definition_id"] == 101]
    return [run for run in runs if run["id"] not in (before or set())]


def set_run_seconds(stack: RunningStack, seconds: float, job_id: int = 101) -> None:
    url = f"{stack.info['emulator_url']}/_emulator/jobs/{job_id}"
    answer = httpx.post(url, json={"run_seconds": seconds}, timeout=10)
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


def processes_of(stack: RunningStack, flow_run_id: Any) -> list[tuple[int, int]]:
    """The processes below the stack that run flow run ``flow_run_id`` (Prefect's workspace supervisor, if any,
    and the engine): the worker gives each its ID in PREFECT__FLOW_RUN_ID."""
    below = descendants(stack.process.pid)
    found = [p for p in below if holds_environment(p[0], "PREFECT__FLOW_RUN_ID", str(flow_run_id))]
    assert found, f"no process of flow run {flow_run_id} below the stack"
    return found


def subflow_of(client: Any, flow_run_id: Any) -> Any:
    """The one subflow run of flow run ``flow_run_id``."""
    runs = [run for run in client.read_flow_runs() if run.parent_task_run_id is not None]
    (found,) = [run for run in runs if client.read_task_run(run.parent_task_run_id).flow_run_id == flow_run_id]
    return found


def test_a_run_that_loses_its_process_ends_crashed_frees_its_slot_and_its_retry_reuses_the_dbt_run(
    tmp_path: Path,
) -> None:
    stack = RunningStack(tmp_path / "stack", env={WINDOW_VARIABLE: str(WINDOW)})
    try:
        with stack.client() as client:
            # A healthy watched run that lasts longer than the automation's window, through the server's restart.
            set_run_seconds(stack, 6 * WINDOW, job_id=103)  # still in flight at the test's end
            healthy = client.create_flow_run_from_deployment(
                stack.info["deployments"]["dbt-cloud-job/dbt-cloud-job"],
                parameters={"job_id": 103, "start": {"if_running": "reuse"}},
            )
            wait_state(client, healthy.id, {"RUNNING"})
            [automation] = client.read_automations_by_name(AUTOMATION_NAME)  # installed by prefect deploy
            assert automation.enabled and automation.trigger.within == timedelta(seconds=WINDOW)
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

        # A machine lost: the flow run's processes, its worker and the server at once.
        lost = [*processes_of(stack, etl.id), child(stack, b"worker\x00start"), child(stack, b"server\x00start")]
        for signum in (signal.SIGSTOP, signal.SIGKILL):  # frozen first: none may report another's death
            for pid, _ in lost:
                os.kill(pid, signum)
        killed_at = time.monotonic()
        wait_console(stack, "The Prefect server runs again.")
        wait_console(stack, "The worker runs again.")

        with stack.client() as client:
            crashed = wait_state(client, etl.id, FINAL, timeout=WINDOW + 150)
            silent_for = time.monotonic() - killed_at
            assert crashed.state.type.value == "CRASHED", crashed.state
            # Not before the window: the last heartbeat came at most one interval before the kill.
            assert silent_for >= WINDOW - HEARTBEAT_SECONDS, silent_for
            assert AUTOMATION_NAME in (crashed.state.message or ""), crashed.state.message  # not another path
            # Its subflow (the dbt Cloud job) shared the process: it is watched too, and ends as well.
            subflow = subflow_of(client, etl.id)
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

            # The healthy run sent heartbeats all along (its process went on when the worker above it was killed):
            # still Running, never Crashed, though it outlived the window and the server's restart.
            states = [state.type.value for state in client.read_flow_run_states(healthy.id)]
            assert states[-1] == "RUNNING" and "CRASHED" not in states, states
        print(f"crashed {silent_for:.0f} s after the kill (window {WINDOW} s)")
        in_flight = processes_of(stack, healthy.id)

        # The stack process itself killed: its guardian stops every process it started (each in a session of its
        # own, so nothing else would), the healthy run's included, and removes its stack.json.
        os.kill(stack.process.pid, signal.SIGKILL)
        stack.process.wait(timeout=10)
        deadline = time.monotonic() + 60
        log = stack.state / "guardian.log"
        while processes_using(stack.state) or "runs any more" not in (log.read_text() if log.exists() else ""):
            assert time.monotonic() < deadline, f"left running: {processes_using(stack.state)}"
            time.sleep(0.2)
        assert not any(alive(p) for p in in_flight)
        assert "nothing of that stack runs any more" in log.read_text()
        deadline = time.monotonic() + 10
        while (stack.state / "stack.json").exists():  # removed right after that line
            assert time.monotonic() < deadline, "the killed stack's stack.json is left"
            time.sleep(0.1)
    finally:
        if stack.process.poll() is None:
            stack.process.kill()
