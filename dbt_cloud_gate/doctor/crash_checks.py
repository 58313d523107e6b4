"""The doctor's check that a flow run which loses its process ends (:mod:`dbt_cloud_gate.automations`): the
automation on the server, the deployments' heartbeats and watch tag in ``prefect.yaml``, and a Prefect that sends
flow-run heartbeats."""

from __future__ import annotations

import prefect
from prefect.client.orchestration import get_client

from dbt_cloud_gate.automations import HEARTBEAT_SECONDS, WATCH_TAG, automation_problem
from dbt_cloud_gate.doctor.core import Doctor, Verdict, fail, ok, warn
from dbt_cloud_gate.doctor.prefect_checks import run_async

__all__ = ["check_crash_automation"]

# Flow runs send heartbeats from their own process from this Prefect release on.
HEARTBEATS_FROM = (3, 6)


async def _problem() -> tuple[str, str] | None:
    async with get_client() as client:
        return await automation_problem(client)


def _unwatched(doctor: Doctor) -> list[str]:
    project = doctor.facts.project
    if project is None:
        return []
    return [
        d.name
        for d in project.deployments
        if WATCH_TAG not in d.tags or d.heartbeat is None or d.heartbeat.strip() != str(HEARTBEAT_SECONDS)
    ]


def check_crash_automation(doctor: Doctor) -> Verdict:
    """The automation exists as dbt-cloud-gate builds it; every deployment sends heartbeats and carries the tag."""
    problem = run_async(_problem())
    if problem is not None:
        return fail(*problem)
    unwatched = _unwatched(doctor)
    if unwatched:
        return fail(
            f"deployment(s) {', '.join(unwatched)} lack the tag {WATCH_TAG!r} or flow-run heartbeats every "
            f"{HEARTBEAT_SECONDS} s: a run of theirs whose process dies stays Running and holds its slot.",
            f"give each the tag {WATCH_TAG!r} and `job_variables: {{env: {{PREFECT_FLOWS_HEARTBEAT_FREQUENCY: "
            f'"{HEARTBEAT_SECONDS}"}}}}` in its work_pool, as the shipped prefect.yaml does, then `prefect deploy`.',
        )
    version = tuple(int(part) for part in prefect.__version__.split(".")[:2] if part.isdigit())
    if version < HEARTBEATS_FROM:
        return warn(
            f"Prefect {prefect.__version__} here: flow runs send heartbeats from Prefect 3.6 on, so the automation "
            "cannot see a lost process on a worker running this release.",
            "upgrade Prefect on the worker's machine to 3.6 or newer.",
        )
    return ok(f"the automation is installed, and every deployment sends heartbeats every {HEARTBEAT_SECONDS} s.")
