"""What the flow runs of a work pool tell about its workers' environment: the latest finished runs that failed at
``prefect.yaml``'s pull step because a variable (``DBT_CLOUD_GATE_HOME``) was unset where the worker runs.

A worker's environment cannot be read through Prefect's API; a pull step that failed for want of it says so in the
flow run's state message (``dbt_cloud_gate.deploy_steps``) or, with an older shell pull step, in its logs. Only runs
newer than the pool's latest completed one count: a worker fixed since then is not blamed."""

from __future__ import annotations

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
    LogFilter,
    LogFilterFlowRunId,
    WorkPoolFilter,
    WorkPoolFilterName,
)
from prefect.client.schemas.objects import StateType
from prefect.client.schemas.sorting import FlowRunSort

from dbt_cloud_gate.deploy_steps import checkout_reason

__all__ = ["pull_step_failures"]

# How many of a pool's latest finished flow runs are read (and their first log lines).
RECENT_RUNS = 10
LOG_LINES = 200


async def pull_step_failures(pools: list[str], variable: str) -> list[str]:
    """The latest finished flow runs of ``pools`` (newer than the latest completed one) whose logs say the pull
    step found ``variable`` unset, as ``name (state)``."""
    if not pools:
        return []
    finished = FlowRunFilterStateType(any_=[StateType.COMPLETED, StateType.FAILED, StateType.CRASHED])
    found: list[str] = []
    async with get_client() as client:
        runs = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=finished)),
            work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=pools)),
            sort=FlowRunSort.END_TIME_DESC,
            limit=RECENT_RUNS,
        )
        for run in runs:
            if run.state is None or run.state.type is StateType.COMPLETED:
                break
            said = run.state.message or ""
            if not (variable in said and "worker" in said):  # not our pull step's verdict: an older one's log?
                logs = await client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])), limit=LOG_LINES)
                said = next((log.message for log in logs if variable in log.message and "not set" in log.message), "")
            # Quoted as it is: unset, not a folder, not a checkout; an older shell step's log line whole.
            reason = checkout_reason(said) or (said.strip().splitlines() or [""])[-1]
            if reason:
                found.append(f"{run.name} ({run.state.type.value.lower()}: {reason[:200]})")
    return found
