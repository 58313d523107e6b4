"""Cancelling a Prefect flow run cancels the dbt Cloud runs it started: the ``on_cancellation`` hooks and what
they need (the credentials and key scope a flow run used, kept in this process; the runs found by their key).

Hooks run outside the flow run's context and must never raise: they log through ``flow_run_logger``.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId
from prefect.client.schemas.objects import FlowRun, State
from prefect.flows import Flow
from prefect.logging.loggers import flow_run_logger
from prefect.runtime import flow_run as runtime_flow_run

from dbt_cloud_gate.blocks.dbt_cloud import DbtCloudCredentials, resolve_credentials
from dbt_cloud_gate.dbtcloud_api import DbtCloudConfigError
from dbt_cloud_gate.keys import carries_scope_key, key_marker, key_scope

# What a flow run needs to cancel its dbt Cloud runs, kept in this process: the stored parameters hold a block
# instance's token masked, so the on_cancellation hook reads it here first (bounded: the newest flow runs only).
_CANCEL_CONTEXT: OrderedDict[str, tuple[DbtCloudCredentials, str]] = OrderedDict()


_CANCEL_CONTEXT_LOCK = threading.Lock()


_CANCEL_CONTEXT_SIZE = 1024


def remember_for_cancellation(credentials: DbtCloudCredentials, scope: str) -> None:
    """Keep the resolved credentials and the key scope of the current flow run for its cancellation hook."""
    flow_run_id = runtime_flow_run.get_id()
    if not flow_run_id:
        return
    with _CANCEL_CONTEXT_LOCK:
        _CANCEL_CONTEXT[str(flow_run_id)] = (credentials, scope)
        _CANCEL_CONTEXT.move_to_end(str(flow_run_id))
        while len(_CANCEL_CONTEXT) > _CANCEL_CONTEXT_SIZE:
            _CANCEL_CONTEXT.popitem(last=False)


def _is_masked(token: object) -> bool:
    return isinstance(token, str) and bool(token) and set(token) == {"*"}


def credentials_of_flow_run(flow_run: FlowRun) -> DbtCloudCredentials:
    """The credentials a flow run used, however they were passed: kept in this process, a saved block (by its
    document ID or name, also when given as an instance whose stored token is masked), or the environment."""
    with _CANCEL_CONTEXT_LOCK:
        kept = _CANCEL_CONTEXT.get(str(flow_run.id))
    if kept is not None:
        return kept[0]
    reference = (flow_run.parameters or {}).get("credentials")
    if not isinstance(reference, dict):
        return resolve_credentials(reference)
    if not _is_masked(reference.get("api_token")):
        return DbtCloudCredentials.model_validate(reference)
    document_id = reference.get("_block_document_id")
    name = reference.get("_block_document_name")
    if document_id:
        loaded = DbtCloudCredentials.load_from_ref(str(document_id), _sync=True)  # type: ignore[call-arg]
        if isinstance(loaded, DbtCloudCredentials):
            return loaded
    if name:
        return resolve_credentials(str(name))
    raise DbtCloudConfigError(
        "The flow run was given an unsaved DbtCloudCredentials block and runs in another process: its stored "
        "parameters hold the token masked. Save the block and pass it, or its name, so a cancellation can reach "
        "the dbt Cloud run."
    )


def cancel_runs_of_flow_run(flow: Flow[..., Any], flow_run: FlowRun, job_ids: list[int]) -> None:
    """Cancel the unfinished dbt Cloud runs a Prefect flow run started (found by the key in their cause)."""
    log = flow_run_logger(flow_run, flow)
    try:
        with _CANCEL_CONTEXT_LOCK:
            kept = _CANCEL_CONTEXT.get(str(flow_run.id))
        scope = kept[1] if kept is not None else key_scope(flow_run.id)
        creds = credentials_of_flow_run(flow_run)
        with creds.get_client() as client:
            for job_id in sorted(set(job_ids)):
                for run in client.find_runs_by_cause(job_id, key_marker(job_id, scope), max_runs=100):
                    cause = run.trigger.cause if run.trigger else None
                    if carries_scope_key(cause, job_id, scope) and not run.is_terminal:
                        client.cancel_run(run.id)
                        log.warning("Prefect flow run cancelled: cancelled dbt Cloud run %s of job %s.", run.id, job_id)
    except Exception as exc:  # a hook must not raise; say why the dbt Cloud run may still be running
        log.error("Prefect flow run cancelled, but the dbt Cloud runs could not be cancelled: %s", exc)


def cancel_runs_below(flow: Flow[..., Any], flow_run: FlowRun, state: State[Any]) -> None:
    """An ``on_cancellation`` hook for flows that call ``run_dbt_cloud_job`` as a subflow (the ETL flows):
    cancelling the Prefect flow run cancels the dbt Cloud runs its subflows started. The process running an
    in-process subflow is stopped with its parent, so the subflow's own hook may never run."""
    log = flow_run_logger(flow_run, flow)
    try:
        with get_client(sync_client=True) as prefect:
            pending, seen = [flow_run.id], 0
            while pending and seen < 1000:  # bounded: a run tree, not a graph
                parent = pending.pop()
                children = prefect.read_flow_runs(
                    flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent]))
                )
                seen += len(children)
                for child in children:
                    job_id = (child.parameters or {}).get("job_id")
                    if isinstance(job_id, int) and child.state is not None and not child.state.is_final():
                        cancel_runs_of_flow_run(flow, child, [job_id])
                    pending.append(child.id)
    except Exception as exc:  # a hook must not raise; say why dbt Cloud runs may still be running
        log.error("Prefect flow run cancelled, but its dbt Cloud runs could not be looked up: %s", exc)


def cancel_own_runs(flow: Flow[..., Any], flow_run: FlowRun, state: State[Any]) -> None:
    """Cancelling the Prefect flow run cancels the dbt Cloud run it started."""
    job_id = (flow_run.parameters or {}).get("job_id")
    if isinstance(job_id, int):
        cancel_runs_of_flow_run(flow, flow_run, [job_id])
