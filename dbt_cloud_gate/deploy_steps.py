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

__all__ = [
    "CHECKOUT_FIX",
    "HOME_VARIABLE",
    "WORKER_FIX",
    "checkout_directory",
    "checkout_message",
    "checkout_problem",
    "checkout_reason",
]

HOME_VARIABLE = "DBT_CLOUD_GATE_HOME"
# How a worker gets it, for every message that names the fix.
WORKER_FIX = (
    f"`{HOME_VARIABLE}=/path/to/dbt-cloud-gate prefect worker start --pool dbt-cloud-gate` (the checkout holding "
    "prefect.yaml and flows/, with `pip install -e .` done there)"
)
CHECKOUT_FIX = f"set it in the worker's environment and start the worker again: {WORKER_FIX} (docs/deploying.md)"
_FIX_SEPARATOR = ": "

_LOG = logging.getLogger(__name__)


def checkout_problem(value: str | None) -> str | None:
    """What is wrong with ``value`` as the checkout a flow run needs (the folder with ``flows/``), without the fix
    (:data:`CHECKOUT_FIX`), or None."""
    if not value or not value.strip():
        return f"{HOME_VARIABLE} is not set in the worker environment"
    home = Path(value.strip())
    if not home.is_dir():
        return f"{HOME_VARIABLE}={value} is not a folder on the worker's machine"
    if not (home / "flows").is_dir():
        return f"{HOME_VARIABLE}={value} has no flows/ folder, so it is not a dbt-cloud-gate checkout"
    return None


def checkout_message(problem: str) -> str:
    """The pull step's message for ``problem``: the problem, then :data:`CHECKOUT_FIX`."""
    return f"{problem}{_FIX_SEPARATOR}{CHECKOUT_FIX}."


def checkout_reason(message: str) -> str | None:
    """The problem a pull step's ``message`` (:func:`checkout_message`, read back from a flow run's state or
    log) names, or None when the message is not one of ours."""
    problem, separator, _ = message.partition(_FIX_SEPARATOR + CHECKOUT_FIX)
    return problem.strip().splitlines()[-1] if separator and problem.strip() else None


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
        message = checkout_message(problem)
        _crash_this_flow_run(message)
        raise RuntimeError(message)
    assert value is not None
    return {"directory": str(Path(value.strip()).resolve())}
