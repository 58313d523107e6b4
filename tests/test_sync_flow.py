"""``SyncCallableFlow``: an async flow (no wait for Prefect's heartbeat thread at its end) that every caller
calls like a sync one."""

from __future__ import annotations

import asyncio
import threading

import pytest
from prefect import flow, task
from prefect.client.orchestration import get_client
from prefect.context import get_run_context

from dbt_cloud_gate.sync_flow import SyncCallableFlow, sync_callable_flow


@task
def echo(value: float) -> float:
    return value


@sync_callable_flow(name="held")
async def held(value: float) -> float:
    return echo(value)


@sync_callable_flow(name="whoami")
async def whoami() -> str:
    return str(get_run_context().flow_run.id)  # type: ignore[union-attr]


def test_every_caller_gets_the_value_and_subflows_link_to_their_parent() -> None:
    @flow
    def sync_parent() -> tuple[str, str]:
        return str(get_run_context().flow_run.id), whoami()  # type: ignore[union-attr]

    @flow
    async def async_parent() -> tuple[str, str]:
        return str(get_run_context().flow_run.id), whoami()  # type: ignore[union-attr]

    assert isinstance(whoami(), str)  # plain sync code, no loop
    for call in (sync_parent, lambda: asyncio.run(async_parent())):
        parent_id, child_id = call()
        with get_client(sync_client=True) as client:
            child = client.read_flow_run(child_id)  # type: ignore[arg-type]
            assert child.parent_task_run_id is not None
            assert str(client.read_task_run(child.parent_task_run_id).flow_run_id) == parent_id
    state = held.with_options(retries=1)(0.01, return_state=True)
    assert isinstance(held.with_options(retries=1), SyncCallableFlow) and state.is_completed()


_BARRIER = threading.Barrier(2, timeout=60)


@task
def meet() -> bool:
    _BARRIER.wait()  # returns only when the other call's task is running too
    return True


@sync_callable_flow(name="meeting")
async def meeting() -> bool:
    return meet()


def test_calls_from_several_threads_run_at_once() -> None:
    """Each call runs on a loop of its own: on one shared loop, the first call's blocking task would hold the
    second back, and neither would ever pass the barrier that needs both."""
    results: list[bool] = []
    threads = [threading.Thread(target=lambda: results.append(meeting())) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [True, True] and not _BARRIER.broken


def test_only_async_functions_are_wrapped() -> None:
    def plain() -> None:
        return None

    with pytest.raises(TypeError, match="async"):
        sync_callable_flow(name="plain")(plain)
