"""The idempotency key a trigger carries in its cause, tied to the root flow run and the path of subflows below
it: ``[dcg:<root flow run id>[.<subflow path digest>]:<job id>[:n]]``. A retry of the flow, of its parent or of any
ancestor finds the run carrying its key instead of starting another."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.objects import FlowRun, TaskRun
from prefect.context import FlowRunContext
from prefect.runtime import flow_run as runtime_flow_run

from dbt_cloud_gate.dbtcloud_api.client import MAX_CAUSE_LENGTH

IDEMPOTENCY_PREFIX = "dcg:"

_LOG = logging.getLogger(__name__)


def key_scope(flow_run_id: str | UUID | None = None, client: SyncPrefectClient | None = None) -> str:
    """The part of the idempotency key that names where in a Prefect run tree a trigger happens.

    The ROOT flow run's ID (kept by a retry of the root), plus, for a subflow, a digest of the path from the
    root down to it. Each hop is the name of the task run that tracks the subflow in its parent
    (``dbt-cloud-job-0``, ``dbt-cloud-job-1`` for the second call): Prefect numbers them in call order,
    and a retry of the parent numbers them again the same way. A subflow called inside a task gets a random
    tracking key from Prefect; its hop is then the flow's name and its parameters (a pipeline's job and targets).
    So a retry of the flow, of its parent, or of any ancestor finds the runs started before, and two calls of one
    job in one parent get two scopes; two calls with equal parameters from tasks of one flow run share one.
    Outside a flow run the scope is unique to this call (``adhoc-<uuid>``).
    """
    return run_tree_scope(flow_run_id, client).scope


@dataclass(frozen=True)
class RunTreeScope:
    """:func:`key_scope`'s answer, and what the same walk up the run tree proved: ``first_attempt`` is True only
    when no earlier attempt anywhere in the tree can have triggered a run carrying a key of this scope."""

    scope: str
    first_attempt: bool = False


def runs_as_own_flow_run(body: Callable[..., Any]) -> bool:
    """Whether the current flow run is the flow whose function is ``body`` (not ``body`` called through ``.fn`` in
    a caller's flow run, whose key scope, and whose first attempt, it would share)."""
    context = FlowRunContext.get()
    return context is not None and context.flow is not None and context.flow.fn is body


def run_tree_scope(flow_run_id: str | UUID | None = None, client: SyncPrefectClient | None = None) -> RunTreeScope:
    """:func:`key_scope`, with whether this is the tree's first attempt at this place (no extra request).

    ``first_attempt`` holds when the flow run and every flow run above it entered Running once (``run_count``
    1: a retry of any of them, a deployment's re-run of a flow run, a process rescheduled after a crash each
    count again), none was ever paused or suspended (a resumed flow run re-runs from the top without counting,
    but keeps its pause keys), none was rescheduled, and every hop is numbered in call order (a subflow called
    from a task shares its scope with an equal call, and a retried task re-runs it with a new flow run). In any
    doubt (an unreadable tree, a depth past the limit) it is False: the caller searches for the key.
    """
    owner = flow_run_id or runtime_flow_run.get_id()
    if not owner:
        return RunTreeScope(f"adhoc-{uuid.uuid4()}")
    if client is None:
        try:
            with get_client(sync_client=True) as own:
                return run_tree_scope(owner, own)
        except Exception as exc:  # no Prefect API at hand: this flow run's own retries still find the run
            _LOG.warning("Could not read the Prefect run tree (%s); keying dbt Cloud runs on flow run %s.", exc, owner)
            return RunTreeScope(str(owner))
    hops: list[str] = []
    first = True
    reached_root = False
    for current, tracking in flow_runs_upwards(client, owner):
        first = first and _entered_running_once(current)
        if tracking is not None:
            hops.append(_hop_name(tracking, current.parameters or {}))
            first = first and _in_call_order(tracking)
        reached_root = tracking is None
    first = first and reached_root
    if not hops:
        return RunTreeScope(str(current.id), first)
    digest = hashlib.sha256("/".join(reversed(hops)).encode()).hexdigest()[:12]
    return RunTreeScope(f"{current.id}.{digest}", first)


def _entered_running_once(flow_run: FlowRun) -> bool:
    """Whether ``flow_run`` runs its first and only attempt: Running entered once, never paused, suspended or
    rescheduled (Prefect does not count a resume from a suspension as a new run; its pause keys stay)."""
    policy = flow_run.empirical_policy
    return flow_run.run_count == 1 and not policy.pause_keys and not policy.resuming and policy.retry_type is None


# A run tree deeper than this is not a real one: the walk up stops there.
MAX_RUN_TREE_DEPTH = 32


def flow_runs_upwards(client: SyncPrefectClient, flow_run_id: str | UUID) -> Iterator[tuple[FlowRun, TaskRun | None]]:
    """The flow run, then each flow run above it up to the root, each with the task run that tracks it in its
    parent (None for the top one)."""
    current = client.read_flow_run(UUID(str(flow_run_id)))
    for _ in range(MAX_RUN_TREE_DEPTH):
        tracking = client.read_task_run(current.parent_task_run_id) if current.parent_task_run_id else None
        yield current, tracking
        if tracking is None or tracking.flow_run_id is None:
            return
        current = client.read_flow_run(tracking.flow_run_id)


def _in_call_order(tracking: TaskRun) -> bool:
    """Whether a subflow call's key is its call order in the parent flow run, which a retry of the parent
    reproduces. Not for a call from a task: Prefect 3.2+ keys it with a UUID, and before 3.2 with the next number,
    which a retried task never reproduces; either way its tracking task run names the calling task as a parent."""
    return str(tracking.dynamic_key).isdigit() and not (tracking.task_inputs or {}).get("__parents__")


def _hop_name(tracking: TaskRun, parameters: dict[str, Any]) -> str:
    """A name for one subflow call that a retry of its parent reproduces."""
    if _in_call_order(tracking):
        return tracking.name
    flow_name = tracking.name.removesuffix(f"-{tracking.dynamic_key}")
    arguments = json.dumps(parameters, sort_keys=True, default=str)
    return f"{flow_name}({hashlib.sha256(arguments.encode()).hexdigest()[:16]})"


def idempotency_key(job_id: int, scope: str | None = None, occurrence: int = 1) -> str:
    """The marker put in a run's cause: ties a dbt Cloud run to the place in a Prefect run tree that started it.

    ``[dcg:<scope>:<job_id>]``, or ``[dcg:<scope>:<job_id>:<n>]`` for the n-th trigger of one job by one flow run
    (a fan-out that lists a job twice). ``scope`` defaults to :func:`key_scope` of the current flow run.
    """
    suffix = f":{occurrence}" if occurrence > 1 else ""
    return f"{key_marker(job_id, scope or key_scope())}{suffix}]"


def key_marker(job_id: int, scope: str) -> str:
    """The text every key of ``job_id`` in ``scope`` starts with (a search string for ``find_runs_by_cause``)."""
    return f"[{IDEMPOTENCY_PREFIX}{scope}:{job_id}"


def carries_scope_key(cause: str | None, job_id: int, scope: str) -> bool:
    """Whether ``cause`` carries a key :func:`idempotency_key` makes for ``job_id`` in ``scope`` (any occurrence;
    not job 110's when asked for job 11)."""
    return re.search(re.escape(key_marker(job_id, scope)) + r"(?::\d+)?\]", cause or "") is not None


def cause_with_attempt(cause: str, key: str, attempt: int) -> str:
    """``cause`` with ``key`` marked as its ``attempt``-th run (``[dcg:...]+2``), cut to dbt Cloud's 255 chars."""
    marked = f"{key}+{attempt}"
    text = cause.replace(key, "").rstrip()
    room = MAX_CAUSE_LENGTH - len(marked) - 1
    return f"{text[:room].rstrip()} {marked}".lstrip()


def cause_with_key(cause: str | None, key: str) -> str:
    """``cause`` (default: the flow run's name) with ``key`` appended, within dbt Cloud's 255 characters."""
    text = (cause or "").strip() or f"Triggered by Prefect flow run {runtime_flow_run.get_name() or 'outside a flow'}"
    room = MAX_CAUSE_LENGTH - len(key) - 1
    if len(text) > room:
        logging.getLogger("dbt_cloud_gate.dbtcloud_api").warning(
            "The run cause is %d characters; it was cut to %d to leave room for the %d-character idempotency key "
            "within dbt Cloud's %d.",
            len(text),
            room,
            len(key),
            MAX_CAUSE_LENGTH,
        )
        text = text[:room]
    return f"{text} {key}"
