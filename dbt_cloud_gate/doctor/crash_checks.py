"""The doctor's check that a flow run which loses its process ends (:mod:`dbt_cloud_gate.automations`): the
automation on the server; the deployments' heartbeats and watch tag, as deployed on the server (as ``prefect.yaml``
writes them when nothing is deployed yet); and a Prefect that sends flow-run heartbeats from a thread of their own.
"""

from __future__ import annotations

import prefect
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import WorkPoolFilter, WorkPoolFilterName

from dbt_cloud_gate.automations import HEARTBEAT_SECONDS, WATCH_TAG, automation_problem
from dbt_cloud_gate.doctor.core import Doctor, Verdict, fail, ok, warn
from dbt_cloud_gate.doctor.prefect_checks import run_async

__all__ = ["HEARTBEATS_FROM", "check_crash_automation"]

_ENV = "PREFECT_FLOWS_HEARTBEAT_FREQUENCY"

# From this Prefect release on, every flow run, async ones included, sends heartbeats from a thread of its own.
HEARTBEATS_FROM = (3, 6, 24)


async def _problem() -> tuple[str, str] | None:
    async with get_client() as client:
        return await automation_problem(client)


def _watched(tags: list[str], heartbeat: object) -> bool:
    return WATCH_TAG in tags and str(heartbeat).strip() == str(HEARTBEAT_SECONDS)


async def _deployed(pools: list[str]) -> dict[str, bool]:
    """The deployments on the server in ``pools``: whether each is watched (tag and heartbeat interval)."""
    async with get_client() as client:
        found = await client.read_deployments(
            work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=pools)), limit=200
        )
    return {d.name: _watched(list(d.tags), ((d.job_variables or {}).get("env") or {}).get(_ENV)) for d in found}


def _unwatched(doctor: Doctor) -> tuple[list[str], str]:
    """The deployments that are not watched, and where they were read (the server, else prefect.yaml)."""
    project = doctor.facts.project
    if project is None:
        return [], "prefect.yaml"
    deployed = run_async(_deployed(project.work_pools)) if project.work_pools else {}
    names = {d.name for d in project.deployments}
    on_server = {name: watched for name, watched in deployed.items() if name in names}
    if on_server:
        return sorted(name for name, watched in on_server.items() if not watched), "the server"
    return [d.name for d in project.deployments if not _watched(d.tags, d.heartbeat)], "prefect.yaml"


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("+")[0].split(".")[:3] if part.isdigit())


def check_crash_automation(doctor: Doctor) -> Verdict:
    """The automation exists as dbt-cloud-gate builds it; every deployment sends heartbeats and carries the tag."""
    problem = run_async(_problem())
    if problem is not None:
        return fail(*problem)
    unwatched, where = _unwatched(doctor)
    if unwatched:
        return fail(
            f"deployment(s) {', '.join(unwatched)} ({where}) lack the tag {WATCH_TAG!r} or flow-run heartbeats "
            f"every {HEARTBEAT_SECONDS} s: a run of theirs whose process dies stays Running and holds its slot.",
            f"give each the tag {WATCH_TAG!r} and `job_variables: {{env: {{{_ENV}: "
            f'"{HEARTBEAT_SECONDS}"}}}}` in its work_pool, as the shipped prefect.yaml does, then `prefect deploy`.',
        )
    if _version(prefect.__version__) < HEARTBEATS_FROM:
        return warn(
            f"Prefect {prefect.__version__} where the doctor runs: before 3.6.24 an async flow's heartbeats could "
            "be starved by a busy event loop, and before 3.6 a worker's flow runs send none, so the automation "
            "could crash a healthy run or miss a lost one.",
            "upgrade Prefect on the worker's machine to 3.6.24 or newer (run the doctor there to check it).",
        )
    return ok(f"the automation is installed, and every deployment sends heartbeats every {HEARTBEAT_SECONDS} s.")
