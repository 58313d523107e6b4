"""``SyncCallableFlow``: an async flow (no wait for Prefect's heartbeat thread at its end) that async callers
await and sync callers call plainly; ``GateFlow``: the flat parameters of the previous release, regrouped."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Awaitable, Iterable
from typing import TypeVar

import pytest
from prefect import flow, task
from prefect.client.orchestration import get_client
from prefect.context import get_run_context
from prefect.settings import PREFECT_CLIENT_MAX_RETRIES, temporary_settings

from dbt_cloud_gate import DbtCloudCredentials, DbtCloudRunResult, WaitSettings, run_dbt_cloud_job
from dbt_cloud_gate.dbtcloud_api.emulator import Emulator, EmulatorServer, JobSpec
from dbt_cloud_gate.dbtcloud_api.openapi import SpecValidator
from dbt_cloud_gate.sync_flow import SyncCallableFlow, sync_callable_flow
from tests.conftest import ACCOUNT, TOKEN

T = TypeVar("T")

pytestmark = pytest.mark.usefixtures("prefect_harness")


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
        return str(get_run_context().flow_run.id), await whoami()  # type: ignore[union-attr]

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


ARRIVED: list[float] = []
_ARRIVED_LOCK = threading.Lock()


@sync_callable_flow(name="rendezvous")
async def rendezvous(expected: int) -> int:
    """Wait, without blocking the loop, until ``expected`` rendezvous calls are running at once; raise after 60 s.

    Counted under a thread lock and polled, so that it proves overlap wherever the calls run (one loop or several).
    Calls that ran one after another would never all be present: the first would time out."""
    with _ARRIVED_LOCK:
        ARRIVED.append(time.monotonic())
    deadline = time.monotonic() + 60.0
    while True:
        with _ARRIVED_LOCK:
            if len(ARRIVED) >= expected:
                return len(ARRIVED)
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(ARRIVED)} of {expected} calls were running after 60 s")
        await asyncio.sleep(0.05)


# A loop blocked by a wait stops for the whole wait (a 12 s run; a rendezvous would never complete); a loaded 2-core
# machine can delay a tick by a second or two, which is not a block.
LOOP_GAP_SECONDS = 4.0


def most_at_once(spans: list[tuple[float, float]]) -> int:
    """The largest number of spans that cover one instant."""
    return max(sum(1 for a, b in spans if a <= start < b) for start, _ in spans)


async def gather_ticking(awaitables: Iterable[Awaitable[T]], ticks: list[float]) -> list[T]:
    """Gather ``awaitables`` while a ticker on this loop appends the time to ``ticks`` every 0.1 s."""

    async def ticker() -> None:
        while True:
            ticks.append(time.monotonic())
            await asyncio.sleep(0.1)

    ticking = asyncio.create_task(ticker())
    try:
        return list(await asyncio.gather(*awaitables))
    finally:
        ticking.cancel()


def test_an_async_parent_awaits_and_gathers_without_blocking_its_loop() -> None:
    """Four subflows gathered in one async parent all run at once (each waits until all four are running, which
    calls awaited one after another never are), and a ticker on the parent's loop keeps ticking meanwhile: the call
    never blocks the caller's loop. A rendezvous, not timed naps: on a loaded machine each subflow's start-up takes
    seconds, which timed naps could not tell from waiting in turn."""
    ticks: list[float] = []
    ARRIVED.clear()

    @flow
    async def parent() -> list[int]:
        return await gather_ticking((rendezvous(4) for _ in range(4)), ticks)

    counts = asyncio.run(parent())
    assert len(ARRIVED) == 4 and all(count >= 4 for count in counts), counts
    gaps = [b - a for a, b in itertools.pairwise(ticks)]
    assert len(ticks) >= 5 and max(gaps) < LOOP_GAP_SECONDS, f"the parent's loop was blocked for {max(gaps):.1f} s"


def test_a_sync_caller_inside_an_async_program_still_gets_the_value() -> None:
    """A sync task run from an async parent runs on a worker thread with no loop: it calls plainly."""

    @task
    def sync_step() -> float:
        return held(0.01)

    @flow
    async def parent() -> float:
        return sync_step()

    assert asyncio.run(parent()) == 0.01


def test_flat_parameters_of_the_previous_release_are_regrouped_with_a_warning() -> None:
    from dbt_cloud_gate.settings import WaitSettings, regroup

    kwargs = {"poll_interval_seconds": 5, "wait": WaitSettings(max_wait_seconds=60), "job_id": 1}
    with pytest.warns(DeprecationWarning, match=r"wait=WaitSettings\(poll_interval_seconds=...\)"):
        regrouped = regroup("dbt-cloud-job", {"job_id", "wait"}, kwargs)
    assert regrouped == {"job_id": 1, "wait": WaitSettings(poll_interval_seconds=5, max_wait_seconds=60)}
    with pytest.raises(ValueError, match="poll_interval_seconds"):
        regroup("dbt-cloud-job", {"wait"}, {"poll_interval_seconds": float("nan")})
    # A name the flow still takes itself is left alone.
    assert regroup("x", {"run_id", "wait"}, {"run_id": 7}) == {"run_id": 7}


@pytest.mark.slow
def test_ten_dbt_cloud_waits_gathered_in_an_async_parent_overlap(spec_validator: SpecValidator) -> None:
    """Ten ``run_dbt_cloud_job`` subflows on the emulator, gathered in one async parent: the dbt runs overlap (at least five
    at once, and the wall less than ten runs) and a ticker on the parent's loop keeps ticking. Runs of
    12 s, so that the subflows' own start-up (a few CPU seconds each on a loaded 2-core machine) cannot hide
    whether they wait one after another."""
    run_seconds = 12.0
    jobs = [
        JobSpec(id=100 + n, name=f"j{n}", queue_seconds=0.05, start_seconds=0.05, run_seconds=run_seconds)
        for n in range(10)
    ]
    server = EmulatorServer(Emulator(jobs, account_id=ACCOUNT, token=TOKEN, validator=spec_validator))
    ticks: list[float] = []
    with server:
        credentials = DbtCloudCredentials(account_id=ACCOUNT, api_token=TOKEN, access_url=server.url)

        @flow
        async def parent() -> list[DbtCloudRunResult]:
            wait = WaitSettings(poll_interval_seconds=0.2)
            return await gather_ticking((run_dbt_cloud_job(job.id, credentials, wait=wait) for job in jobs), ticks)

        started = time.monotonic()
        # Ten flow runs created at once can find the test server's SQLite locked (503, which the client retries).
        with temporary_settings({PREFECT_CLIENT_MAX_RETRIES: 12}):
            results = asyncio.run(parent())
        wall = time.monotonic() - started
        runs = [server.emulator.runs[result.run_id] for result in results]
    assert [r.status for r in results] == ["Success"] * 10 and sorted(r.job_id for r in results) == [j.id for j in jobs]
    spans = [(run.started, run.finished) for run in runs]
    assert most_at_once(spans) >= 5, f"the dbt runs ran one after another: {spans}"
    # Waits awaited one after another would take at least the sum of the runs; the margin is the subflows' start-up,
    # which a loaded 2-core machine stretches (75 s seen), so the overlap above is the proof and this the bound.
    assert wall < 10 * run_seconds, f"ten {run_seconds} s runs took {wall:.1f} s"
    gaps = [b - a for a, b in itertools.pairwise(ticks)]
    assert len(ticks) >= 20 and max(gaps) < LOOP_GAP_SECONDS, f"the parent's loop was blocked for {max(gaps):.1f} s"
