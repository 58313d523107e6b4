"""The pull step of ``prefect.yaml``: the worker's own ``DBT_CLOUD_GATE_HOME`` names the checkout a flow run runs in.

Why a step of ours and not a shell one: when the variable is missing, a shell step fails the flow-run process before
the flow starts, and Prefect's worker then marks the run Crashed with a generic "exited with non-zero status code";
the reason was only in the worker's terminal. This step puts the reason, and the fix, into the flow run's state
message, where the UI shows it, before failing the same way.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from prefect.client.orchestration import get_client
from prefect.states import Crashed

__all__ = ["HOME_VARIABLE", "WORKER_FIX", "checkout_directory", "checkout_problem"]

HOME_VARIABLE = "DBT_CLOUD_GATE_HOME"
# How a worker gets it, for every message that names the fix.
WORKER_FIX = (
    f"`{HOME_VARIABLE}=/path/to/dbt-cloud-gate prefect worker start --pool dbt-cloud-gate` (the checkout holding "
    "prefect.yaml and flows/, with `pip install -e .` done there)"
)

_LOG = logging.getLogger(__name__)


def checkout_problem(value: str | None) -> str | None:
    """What is wrong with ``value`` as the checkout a flow run needs (the folder with ``flows/``), or None."""
    how = f"set it in the worker's environment and start the worker again: {WORKER_FIX} (docs/deploying.md)"
    if not value or not value.strip():
        return f"{HOME_VARIABLE} is not set in the worker environment: {how}."
    home = Path(value.strip())
    if not home.is_dir():
        return f"{HOME_VARIABLE}={value} is not a folder on the worker's machine: {how}."
    if not (home / "flows").is_dir():
        return f"{HOME_VARIABLE}={value} has no flows/ folder, so it is not a dbt-cloud-gate checkout: {how}."
    return None


def _crash_this_flow_run(message: str) -> None:
    """Put ``message`` into the state of the flow run this process was started for (best effort: the step fails
    either way, and the worker then marks the run Crashed itself)."""
    flow_run_id = os.environ.get("PREFECT__FLOW_RUN_ID")
    if not flow_run_id:
        return
    try:
        with get_client(sync_client=True) as client:
            client.set_flow_run_state(flow_run_id, Crashed(message=message))
    except Exception:  # the API unreachable: the worker's own Crashed state remains
        _LOG.warning("Could not set the flow run's state to Crashed with its reason.", exc_info=True)


def checkout_directory(**_: object) -> dict[str, str]:
    """A ``prefect.yaml`` pull step: ``{"directory": <the checkout>}`` from the environment of the flow-run process
    (the worker's). A missing or wrong value crashes the flow run with the reason and the fix as its state message,
    then raises ``RuntimeError`` with the same text."""
    value = os.environ.get(HOME_VARIABLE)
    problem = checkout_problem(value)
    if problem is not None:
        _crash_this_flow_run(problem)
        raise RuntimeError(problem)
    assert value is not None
    return {"directory": str(Path(value.strip()).resolve())}
