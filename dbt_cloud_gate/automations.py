"""Flow runs whose process is gone end ``Crashed``, and free their concurrency slots.

A flow run whose process dies together with the Prefect server (a machine lost, a kill of both) has nobody left to
report its end: without help it stays Running for good, and with a deployment's ``concurrency_limit: 1`` it holds
the only slot, so every later run of the deployment waits in AwaitingConcurrencySlot. Prefect's documented answer
(docs.prefect.io, "Detect zombie flows") is flow-run heartbeats plus an automation: a flow run that sent a heartbeat
and then, within a window, neither another one nor a final state, is set ``Crashed``, which releases its slot. A
later attempt of the same flow run (Prefect's Retry) finds the dbt Cloud run it had started through its idempotency
key (:mod:`dbt_cloud_gate.keys`) instead of triggering a second.

Scope: the automation watches only flow runs tagged :data:`WATCH_TAG`. Prefect's own heartbeat interval is 180 s by
default, and a narrower window on every flow run of the workspace would crash healthy ones; the deployments of
``prefect.yaml`` carry the tag and set ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` to :data:`HEARTBEAT_SECONDS`, and our
flows pass the tag on to the subflows they call (:func:`watched_subflows`), which share their process. Flow runs emit
heartbeats from their own process from Prefect 3.6 on (before it, only ``flow.serve`` runners did), and an async
flow's from a thread of their own from 3.6.24 (before it, a busy event loop starved them): on an older worker the
automation is installed but never fires, or could fire on a busy async flow.

Installed by ``prefect deploy`` (a build step of ``prefect.yaml``: :func:`install_crash_automation`), by the local
stack, and checked by the doctor (:func:`automation_problem`). Prefect-side; it never touches dbt Cloud.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

from prefect import tags
from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.objects import StateType
from prefect.events.actions import ChangeFlowRunState
from prefect.events.schemas.automations import Automation, AutomationCore, EventTrigger, Posture
from prefect.events.schemas.events import ResourceSpecification
from prefect.exceptions import PrefectHTTPStatusError
from prefect.runtime import flow_run as runtime_flow_run
from prefect.utilities.asyncutils import run_coro_as_sync

__all__ = [
    "AUTOMATION_NAME",
    "HEARTBEAT_SECONDS",
    "MIN_SILENCE_SECONDS",
    "SILENCE_SECONDS",
    "WATCH_TAG",
    "WINDOW_VARIABLE",
    "automation_problem",
    "crash_automation",
    "ensure_crash_automation",
    "install_crash_automation",
    "silence_seconds_setting",
    "watched_subflows",
]

# The tag that puts a flow run under the automation's watch: its process sends a heartbeat every HEARTBEAT_SECONDS.
WATCH_TAG = "heartbeat-watched"
# What prefect.yaml's deployments set as PREFECT_FLOWS_HEARTBEAT_FREQUENCY (Prefect's minimum is 30).
HEARTBEAT_SECONDS = 30
# Eight heartbeats missed: the process is gone. Not tighter: a false Crashed frees the slot of a run that goes on
# (two loads could then overlap), while a late one only delays the next run; a server restart or an events
# connection that reconnects within this window costs nothing. A busy process still beats (its own thread).
SILENCE_SECONDS = 8 * HEARTBEAT_SECONDS
# A workspace may choose its own window (a setting of where the automation is installed): not under three
# heartbeats, so that one late or lost heartbeat never crashes a healthy run.
MIN_SILENCE_SECONDS = 3 * HEARTBEAT_SECONDS
WINDOW_VARIABLE = "DBT_CLOUD_GATE_CRASH_WINDOW_SECONDS"
AUTOMATION_NAME = "dbt-cloud-gate: crash flow runs whose heartbeats stopped"

# Any event of the flow run closes the window, not only a heartbeat or a final state: between the attempts of a
# flow-level retry (AwaitingRetry), or while it is Paused, a flow run sends no heartbeat; its next heartbeat opens
# a new window.
_ANY_FLOW_RUN_EVENT = "prefect.flow-run.*"
_LOG = logging.getLogger(__name__)


def silence_seconds_setting() -> float:
    """The window the automation is installed (and checked) with: :data:`WINDOW_VARIABLE` where it is set, else
    :data:`SILENCE_SECONDS`. Raises ``ValueError`` naming the variable when it is not a number of seconds of at least
    :data:`MIN_SILENCE_SECONDS`."""
    raw = os.environ.get(WINDOW_VARIABLE, "").strip()
    if not raw:
        return float(SILENCE_SECONDS)
    try:
        seconds = float(raw)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds >= MIN_SILENCE_SECONDS):
        raise ValueError(
            f"{WINDOW_VARIABLE}={raw!r} is not a window the automation can use: give a number of seconds of at "
            f"least {MIN_SILENCE_SECONDS} (three heartbeats), or unset it for the default {SILENCE_SECONDS}."
        )
    return seconds


def crash_automation(silence_seconds: float = SILENCE_SECONDS) -> AutomationCore:
    """The automation: a flow run tagged :data:`WATCH_TAG` that sent a heartbeat, then neither another heartbeat nor
    a final state within ``silence_seconds``, is set Crashed."""
    message = (
        f"No heartbeat for {silence_seconds:g} s: the flow run's process is gone (its machine, its worker or a kill "
        f"ended it while nothing could report it). Set Crashed by the automation {AUTOMATION_NAME!r}, which frees "
        "its concurrency slot. A dbt Cloud run it started goes on in dbt Cloud; a retry of this flow run finds that "
        "run through its idempotency key instead of triggering another."
    )
    return AutomationCore(
        name=AUTOMATION_NAME,
        description=(
            f"Installed by dbt-cloud-gate (prefect deploy, the local stack). Flow runs tagged {WATCH_TAG!r} send "
            f"a heartbeat every {HEARTBEAT_SECONDS} s; one silent for {silence_seconds:g} s has lost its process "
            "and is set Crashed, which releases its concurrency slot. Untagged flow runs are never touched."
        ),
        enabled=True,
        trigger=EventTrigger(
            match=ResourceSpecification({"prefect.resource.id": "prefect.flow-run.*"}),
            match_related=ResourceSpecification(
                {"prefect.resource.role": "tag", "prefect.resource.id": f"prefect.tag.{WATCH_TAG}"}
            ),
            after={"prefect.flow-run.heartbeat"},
            expect={_ANY_FLOW_RUN_EVENT},
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=silence_seconds),
        ),
        actions=[ChangeFlowRunState(state=StateType.CRASHED, name="Crashed", message=message)],
    )


def _same(found: Automation, wanted: AutomationCore) -> bool:
    """Whether a saved automation already is ``wanted`` (compared as the API stores them; ``enabled`` apart)."""
    fields = {"description", "trigger", "actions"}  # python mode: the sets of event names stay sets
    return found.model_dump(include=fields) == wanted.model_dump(include=fields)


async def ensure_crash_automation(client: PrefectClient, silence_seconds: float = SILENCE_SECONDS) -> str:
    """Create the automation, or bring the one saved under :data:`AUTOMATION_NAME` up to date; returns what was done
    (``created``, ``updated``, ``unchanged``, or ``disabled`` when someone disabled it: it is left disabled, its
    definition brought up to date, and the doctor reports it). Copies of it under the same name (two deploys at
    once) are removed: that name is ours. Nothing else is touched."""
    wanted = crash_automation(silence_seconds)
    found = await client.read_automations_by_name(AUTOMATION_NAME)
    if not found:
        await client.create_automation(wanted)
        return "created"
    keep = next((automation for automation in found if _same(automation, wanted)), found[0])
    for copy in found:
        if copy.id != keep.id:
            await client.delete_automation(copy.id)
    if not keep.enabled:  # an operator's choice (an incident, a migration): a deploy does not overrule it
        wanted = wanted.model_copy(update={"enabled": False})
    if not _same(keep, wanted):
        await client.update_automation(keep.id, wanted)
        return "updated" if keep.enabled else "disabled"
    return "unchanged" if keep.enabled else "disabled"


def install_crash_automation(**_: Any) -> dict[str, str]:
    """A ``prefect.yaml`` build step: make sure the automation exists on the server ``prefect deploy`` talks to,
    with the window of :func:`silence_seconds_setting` (checked before the server is called).

    Returns ``{"automation": what was done}`` (a step's outputs are a dict). A server that refuses (a deploy
    token without the right to manage automations) does not fail the deploy: it is reported, and the doctor's
    ``crash-automation`` check fails until someone allowed installs it (``python -m dbt_cloud_gate.automations``).
    """

    silence_seconds = silence_seconds_setting()

    async def ensure() -> str:
        async with get_client() as client:
            return await ensure_crash_automation(client, silence_seconds)

    try:
        done = run_coro_as_sync(ensure())
    except PrefectHTTPStatusError as exc:
        if exc.response.status_code not in (401, 403):
            raise
        done = f"not installed (the server answered {exc.response.status_code})"
        _LOG.warning("The automation %r was %s: runs whose process dies stay Running.", AUTOMATION_NAME, done)
    assert done is not None
    return {"automation": done}


async def automation_problem(client: PrefectClient) -> tuple[str, str] | None:
    """What is wrong with the automation on this server (missing, disabled, changed) and the fix, or None when it is
    as :func:`crash_automation` builds it."""
    try:
        silence_seconds = silence_seconds_setting()
    except ValueError as exc:
        return str(exc), f"fix or unset {WINDOW_VARIABLE} where `prefect deploy` and the doctor run."
    found = await client.read_automations_by_name(AUTOMATION_NAME)
    fix = "run `prefect deploy --all` (its build step installs it) or `python -m dbt_cloud_gate.automations`."
    if not found:
        return f"the automation {AUTOMATION_NAME!r} is missing: a flow run whose process dies stays Running.", fix
    if not found[0].enabled:
        return f"the automation {AUTOMATION_NAME!r} is disabled.", "enable it in the UI (Automations), or " + fix
    if not _same(found[0], crash_automation(silence_seconds)):
        return f"the automation {AUTOMATION_NAME!r} differs from dbt-cloud-gate's.", fix
    return None


@contextlib.contextmanager
def watched_subflows() -> Iterator[None]:
    """Inside a flow run tagged :data:`WATCH_TAG`: subflows called here carry the tag too, so that they are watched
    like their parent (they run in its process, at its heartbeat interval). Prefect does not pass a deployment's
    tags on to subflows. Elsewhere: nothing."""
    if WATCH_TAG in (runtime_flow_run.tags or []):
        with tags(WATCH_TAG):
            yield
    else:
        yield


def main() -> int:
    """``python -m dbt_cloud_gate.automations``: install the automation on the server of PREFECT_API_URL."""
    done = install_crash_automation()["automation"]
    print(f"{AUTOMATION_NAME!r}: {done}.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
