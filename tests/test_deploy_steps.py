"""prefect.yaml's pull steps as Prefect runs them in a flow-run process: the checkout comes from that process's own
DBT_CLOUD_GATE_HOME; when it is missing or wrong the flow run ends Crashed with the reason as its state message."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.deployments.steps.core import StepExecutionError, run_steps
from prefect.states import Pending

from dbt_cloud_gate.deploy_steps import HOME_VARIABLE, checkout_reason
from dbt_cloud_gate.stack.services import ROOT
from tests.prefect_compat import load_deploy_configs_and_actions

pytestmark = pytest.mark.usefixtures("prefect_harness")


def pull_steps() -> list[dict[str, Any]]:
    _, actions = load_deploy_configs_and_actions(ROOT / "prefect.yaml")
    return list(actions["pull"])


def test_the_checkout_comes_from_the_environment_of_the_flow_run_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)  # run_steps changes the working directory; monkeypatch puts it back
    (tmp_path / "flows").mkdir()
    monkeypatch.setenv(HOME_VARIABLE, str(tmp_path))
    asyncio.run(run_steps(pull_steps(), {}))
    assert Path.cwd() == tmp_path


@flow
def _deployed() -> None:
    """Stands for a deployed flow whose process the worker started."""


@pytest.mark.parametrize(
    ("home", "says"),
    [
        (None, "DBT_CLOUD_GATE_HOME is not set in the worker environment"),
        ("/no/such/checkout", "DBT_CLOUD_GATE_HOME=/no/such/checkout is not a folder on the worker's machine"),
        ("EMPTY", "has no flows/ folder, so it is not a dbt-cloud-gate checkout"),
    ],
)
def test_a_missing_or_wrong_checkout_crashes_the_flow_run_with_its_reason_and_fix(
    home: str | None, says: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)
    with get_client(sync_client=True) as client:
        flow_run = client.create_flow_run(_deployed)
        client.set_flow_run_state(flow_run.id, Pending())  # as the worker leaves it before starting the process
    monkeypatch.setenv("PREFECT__FLOW_RUN_ID", str(flow_run.id))
    if home is None:
        monkeypatch.delenv(HOME_VARIABLE, raising=False)
    else:
        monkeypatch.setenv(HOME_VARIABLE, str(tmp_path) if home == "EMPTY" else home)
    with pytest.raises(StepExecutionError) as failed:
        asyncio.run(run_steps(pull_steps(), {}))
    # The flow run's log shows the step's error; its state message, in the UI's run list, the same reason and fix.
    assert says in str(failed.value.__cause__) and "prefect worker start" in str(failed.value.__cause__)
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(flow_run.id).state
    assert state is not None and state.type.value == "CRASHED"
    assert state.message == str(failed.value.__cause__) and "docs/deploying.md" in state.message
    # What the doctor reads back from that message (its check of the worker's environment): the reason alone.
    reason = checkout_reason(state.message)
    assert reason is not None and says in reason and "prefect worker start" not in reason
    assert Path.cwd() == ROOT  # nothing half-done: the working directory was not changed


def test_a_message_that_is_not_the_pull_steps_has_no_checkout_reason() -> None:
    assert checkout_reason("Flow run crashed: exited with non-zero status code 1") is None
    assert checkout_reason("") is None
