"""An async Prefect flow that can also be called like a sync one.

Prefect joins a sync flow's heartbeat thread when the flow ends, and that thread sleeps in one-second steps: a
sync flow returns 0 to 1 s (0.5 s on average) after its last statement whenever flow heartbeats are on
(``PREFECT_FLOWS_HEARTBEAT_FREQUENCY``, 180 s by default in Prefect 3.9). An async flow does not wait for it.
For a flow whose job is to notice the end of a dbt Cloud run quickly, that second is most of the lag.

An async flow returns a coroutine to its caller, though, and users call ``run_dbt_cloud_job(...)`` as a sync
function from scripts, sync flows and async flows alike. :class:`SyncCallableFlow` keeps that contract: whoever
calls it gets the value (or the state, with ``return_state=True``), as from a sync flow; only the flow engine
runs it as async. Called from an async parent it blocks that parent's event loop while it runs, exactly as a
sync subflow does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

from prefect import Flow
from prefect.utilities.asyncutils import run_coro_as_sync

__all__ = ["SyncCallableFlow", "sync_callable_flow"]

F = TypeVar("F", bound=Callable[..., Any])


class SyncCallableFlow(Flow[Any, Any]):
    """A Prefect ``Flow`` around an async function that a plain sync caller can call and get the value from."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """As ``Flow.__call__`` of a sync flow: the value (or the state), never a coroutine, whoever calls."""
        result = super().__call__(*args, **kwargs)
        if asyncio.iscoroutine(result):
            # A thread and loop of its own: on Prefect's shared loop, calls from several threads would queue.
            return run_coro_as_sync(result, force_new_thread=True)
        return result

    def with_options(self, **options: Any) -> SyncCallableFlow:
        """As ``Flow.with_options`` (which builds a plain ``Flow``), keeping this class."""
        new = super().with_options(**options)
        new.__class__ = SyncCallableFlow
        return new  # type: ignore[return-value]


def sync_callable_flow(**options: Any) -> Callable[[Callable[..., Any]], SyncCallableFlow]:
    """``@flow(**options)`` for an async function, returning a :class:`SyncCallableFlow`."""

    def decorate(fn: Callable[..., Any]) -> SyncCallableFlow:
        if not asyncio.iscoroutinefunction(fn):
            raise TypeError(f"sync_callable_flow wraps an async function; {fn.__name__} is not one.")
        return SyncCallableFlow(fn, **options)

    return decorate
