"""An async Prefect flow that can also be called like a sync one.

Prefect joins a sync flow's heartbeat thread when the flow ends, and that thread sleeps in one-second steps: a
sync flow returns 0 to 1 s (0.5 s on average) after its last statement whenever flow heartbeats are on
(``PREFECT_FLOWS_HEARTBEAT_FREQUENCY``, 180 s by default in Prefect 3.9). An async flow does not wait for it.
For a flow whose job is to notice the end of a dbt Cloud run quickly, that second is most of the lag.

An async flow returns a coroutine to every caller, though, and a script or a sync parent flow cannot await it.
:class:`SyncCallableFlow` follows Prefect's convention for async code instead: an async caller awaits it (its
loop is never blocked), and a sync caller gets the value, as from a sync flow. A ``timeout_seconds`` of the flow
or of its caller is not enforced by Prefect while blocking work runs inside: :func:`flow_deadline` tells the
flow when it must be done.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any, TypeVar

from prefect import Flow
from prefect.context import AsyncClientContext, FlowRunContext
from prefect.utilities.asyncutils import run_coro_as_sync

from dbt_cloud_gate.settings import regroup

__all__ = ["GateFlow", "SyncCallableFlow", "flow_deadline", "gate_flow", "sync_callable_flow"]

# The wall-clock time (time.time()) by which the flow that called this one times out, if it has a timeout.
_CALLER_DEADLINE: ContextVar[float | None] = ContextVar("dcg_caller_deadline", default=None)


def _deadline_of(context: FlowRunContext | None) -> float | None:
    if context is None or context.flow is None or not context.flow.timeout_seconds:
        return None
    return context.start_time.timestamp() + float(context.flow.timeout_seconds)


def flow_deadline() -> float | None:
    """When the current flow run, or the flow that called it, times out (``time.time()``), or None.

    Prefect enforces an async flow's ``timeout_seconds`` only when the flow awaits: blocking work inside it (a
    sync task's wait) runs to its end first, and a sync parent's timeout cannot reach a call that runs on a
    thread of its own. A flow that blocks reads this and ends its own waits before it.
    """
    deadlines = [d for d in (_deadline_of(FlowRunContext.get()), _CALLER_DEADLINE.get()) if d is not None]
    return min(deadlines) if deadlines else None


F = TypeVar("F", bound=Callable[..., Any])


class GateFlow(Flow[Any, Any]):
    """A Prefect ``Flow`` that still takes the flat parameter names of the previous release from Python callers,
    moving each into its settings group with a ``DeprecationWarning`` (see ``dbt_cloud_gate.settings.regroup``)."""

    def _regrouped(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        return regroup(self.name, set(self.parameters.properties), kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """As ``Flow.__call__``, after moving legacy flat parameters into their groups."""
        return super().__call__(*args, **self._regrouped(kwargs))

    def with_options(self, **options: Any) -> GateFlow:
        """As ``Flow.with_options`` (which builds a plain ``Flow``), keeping this class."""
        new = super().with_options(**options)
        new.__class__ = type(self)
        return new  # type: ignore[return-value]


class SyncCallableFlow(GateFlow):
    """A Prefect ``Flow`` around an async function, called as Prefect's convention for async code has it.

    In an async context (an async parent flow, a running event loop) the call returns an awaitable:
    ``await run_dbt_cloud_job(...)`` never blocks the caller's loop, and ``asyncio.gather`` runs several at once.
    Anywhere else (a script, a sync parent flow, a sync task) the call returns the value (or the state, with
    ``return_state=True``), as from a sync flow.
    """

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """The value (sync caller) or an awaitable of it (async caller); see the class docstring."""
        # What bounds the caller bounds this call too (its own timeout, and its caller's).
        deadline = flow_deadline()
        kwargs = self._regrouped(kwargs)
        if _in_async_context():
            return self._awaitable(deadline, args, kwargs)
        return self._call_here(deadline, args, kwargs)

    def _call_here(self, deadline: float | None, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        token = _CALLER_DEADLINE.set(deadline)
        try:
            result = Flow.__call__(self, *args, **kwargs)
            if asyncio.iscoroutine(result):
                # A thread and loop of its own: on Prefect's shared loop, calls from several threads would queue.
                return run_coro_as_sync(result, force_new_thread=True)
            return result
        finally:
            _CALLER_DEADLINE.reset(token)

    async def _awaitable(self, deadline: float | None, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Run the flow on a thread of its own and await its end. On the caller's loop, the flow's sync tasks (a
        wait of minutes) would block that loop: gathered calls would run one after another. A thread per call,
        not a pool: a pool's few workers would queue the tenth of ten gathered waits. The caller's context (its
        flow run, so that this one is its subflow) goes with it."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Any] = loop.create_future()
        context = contextvars.copy_context()

        def settle(value: Any, error: BaseException | None) -> None:
            if done.done():  # the caller stopped waiting (cancelled): nobody to tell
                return
            if error is not None:
                done.set_exception(error)
            else:
                done.set_result(value)

        def call() -> Any:
            # The caller's async Prefect client is bound to the caller's loop; Prefect before 3.2 would reuse it
            # on this thread's loop ("bound to a different event loop"). This thread makes its own.
            AsyncClientContext.__var__.set(None)  # type: ignore[arg-type]
            return self._call_here(deadline, args, kwargs)

        def work() -> None:
            try:
                value = context.run(call)
            except BaseException as error:  # handed to the awaiting caller, as a direct call would raise it
                loop.call_soon_threadsafe(settle, None, error)
            else:
                loop.call_soon_threadsafe(settle, value, None)

        threading.Thread(target=work, name=f"flow-{self.name}", daemon=True).start()
        return await done


def _in_async_context() -> bool:
    """True when the caller runs on an event loop of this thread (an async flow, task or function)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def gate_flow(**options: Any) -> Callable[[Callable[..., Any]], GateFlow]:
    """``@flow(**options)`` for our flows: an async function becomes a :class:`SyncCallableFlow`, a sync one a
    :class:`GateFlow`."""

    def decorate(fn: Callable[..., Any]) -> GateFlow:
        return SyncCallableFlow(fn, **options) if asyncio.iscoroutinefunction(fn) else GateFlow(fn, **options)

    return decorate


def sync_callable_flow(**options: Any) -> Callable[[Callable[..., Any]], SyncCallableFlow]:
    """``@flow(**options)`` for an async function, returning a :class:`SyncCallableFlow`."""

    def decorate(fn: Callable[..., Any]) -> SyncCallableFlow:
        if not asyncio.iscoroutinefunction(fn):
            raise TypeError(f"sync_callable_flow wraps an async function; {fn.__name__} is not one.")
        return SyncCallableFlow(fn, **options)

    return decorate
