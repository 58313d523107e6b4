"""How a task waits for runs, apart from the tasks themselves: the wait on one run (and its per-model results)
on one connection, the webhook wake-ups, cancelling at the deadline or on Prefect
cancellation, and the words for where a run stood at the deadline."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from prefect.client.orchestration import get_client
from prefect.exceptions import TerminationSignal
from prefect.runtime import flow_run as runtime_flow_run

from dbt_cloud_gate.dbtcloud_api import (
    DbtCloudError,
    ModelResult,
    Run,
)
from dbt_cloud_gate.dbtcloud_api.client import DbtCloudClient, request_deadline
from dbt_cloud_gate.dbtcloud_api.polling import FixedInterval, make_schedule
from dbt_cloud_gate.dbtcloud_api.wait import (
    AFTER_WAIT_SECONDS,
    LATE_READ_SECONDS,
    PollSchedule,
    WaitTimedOut,
    first_poll_delay,
    wait_for_run,
)
from dbt_cloud_gate.keys import flow_runs_upwards
from dbt_cloud_gate.settings import WaitSettings
from dbt_cloud_gate.starting import read_recent_runs
from dbt_cloud_gate.waiter import RunEventWaiter, webhook_waiter


def deadline_description(exc: WaitTimedOut) -> str:
    """Where the run stood when the wait's deadline passed ("still queued after 600 s, never started", "running
    for 540 s"), as the wait recorded it, whatever was done to the run after (a cancel)."""
    return exc.description or describe_run_at(exc.run, exc.waited_seconds)


def describe_run_at(run: Run | None, waited_seconds: float, now: datetime | None = None) -> str:
    """Where ``run`` (as last read) stood after a wait of ``waited_seconds``: queued, never started, or running."""
    now = now or datetime.now(UTC)
    if run is None:
        return f"never read in {waited_seconds:.0f} s of waiting"
    if run.started_at is None:
        since = (now - run.created_at).total_seconds() if run.created_at else waited_seconds
        return f"still {run.status_label.lower()} after {since:.0f} s, never started"
    return f"running for {(now - run.started_at).total_seconds():.0f} s (started at {run.started_at.isoformat()})"


def first_poll_with_history(
    client: DbtCloudClient,
    job_id: int,
    run_id: int,
    delay: float,
    deadline: float,
    log: logging.Logger | logging.LoggerAdapter[Any],
) -> tuple[list[float], Run | None]:
    """After ``delay`` seconds, one read of the job's newest runs: the poll schedule's history (its newest
    successes) and the first poll of ``run_id`` (moments after its trigger, the newest run of its job), in one
    request where a history read and a poll took two. Returns the history and the run as that page showed it
    (None when it is not in the page); a failed read is logged and leaves an empty history (fixed polling).
    ``deadline`` (``time.monotonic()``): the wait's own; the read ends by it, and within AFTER_WAIT_SECONDS."""
    if delay > 0:
        time.sleep(delay)
    try:
        with request_deadline(min(time.monotonic() + AFTER_WAIT_SECONDS, deadline)):
            recent = read_recent_runs(client, job_id)
    except DbtCloudError as exc:
        log.warning("Could not read job %s's history (%s); polling at a fixed interval.", job_id, exc)
        return [], None
    run = next((run for run in recent.runs if run.id == run_id), None)
    if run is not None:
        log.info("dbt Cloud run %s: %s (read with the job's recent runs).", run_id, run.status_label)
    return recent.history_seconds(), run


def _schedule_and_first_poll(
    client: DbtCloudClient,
    run_id: int,
    log: logging.Logger | logging.LoggerAdapter[Any],
    wait: WaitSettings,
    *,
    job_id: int | None,
    history_seconds: list[float] | None,
    just_triggered: bool,
) -> tuple[PollSchedule, float | None, Run | None]:
    """The poll schedule of ``wait``, around ``history_seconds`` or, when nothing read them before the trigger, the
    history that the first poll's list carries (:func:`first_poll_with_history`). Returns the schedule, the delay
    to the watcher's first poll and the run as that list showed it (``None, None``: no list was read, and the
    watcher's first poll comes as the schedule says)."""
    began = time.monotonic()
    history = list(history_seconds or [])
    searched = history_seconds is None and wait.adaptive_polling and job_id is not None
    seen: Run | None = None
    if searched:
        assert job_id is not None
        # Due when a schedule without history polls first (its early part's 10 s; a job quicker than that is
        # seen at that read), never past half the wait's budget, so that a read of the run still fits.
        due = first_poll_delay(make_schedule([], wait.poll_interval_seconds)) if just_triggered else 0.0
        deadline = began + wait.max_wait_seconds
        history, seen = first_poll_with_history(
            client, job_id, run_id, min(due, wait.max_wait_seconds / 2), deadline, log
        )
    schedule = make_schedule(history, wait.poll_interval_seconds, adaptive=wait.adaptive_polling)
    log.info("Polling dbt Cloud run %s: %r.", run_id, schedule)
    if not searched:
        return schedule, None, None
    # The next poll as the schedule says after that read; at once when it did not show the run in flight (not in
    # the page, or already finished: the watcher's read carries the steps).
    if seen is None or seen.is_terminal:
        return schedule, 0.0, seen
    return schedule, schedule.next_interval(seen, time.monotonic() - began), seen


@dataclass(frozen=True)
class FinishedRun:
    """A finished run, as the poll that saw its end read it (steps and trigger included), and its per-model
    results merged over every step that can build models."""

    run: Run
    models: list[ModelResult]


def wait_in_task(
    client: DbtCloudClient,
    run_id: int,
    log: logging.Logger | logging.LoggerAdapter[Any],
    wait: WaitSettings,
    *,
    schedule: PollSchedule | None = None,
    job_id: int | None = None,
    history_seconds: list[float] | None = None,
    just_triggered: bool = False,
    with_job: bool = False,
) -> Run:
    """The body of the wait tasks: build the schedule, wait, and on the way out cancel as the settings say.
    ``with_job``: every read carries the run's job (its own schedule, when nothing read it before the trigger).

    Polling around the job's history that nothing read before the trigger (``history_seconds`` None): the job's
    newest runs are read once, when the first poll is due, and that one request is both the history and the first
    poll (see :func:`first_poll_with_history`)."""
    waker = webhook_waker(wait, log)
    if schedule is None and waker is not None:
        # The run's event ends the wait; polling is the safety net (cancellations, lost deliveries).
        schedule = FixedInterval(wait.fallback_poll_seconds)
        log.info(
            "Waiting for dbt Cloud run %s on webhook events; polling every %g s as a safety net.",
            run_id,
            wait.fallback_poll_seconds,
        )
    began = time.monotonic()
    first_delay: float | None = None
    seen: Run | None = None
    try:
        if schedule is None:
            schedule, first_delay, seen = _schedule_and_first_poll(
                client, run_id, log, wait, job_id=job_id, history_seconds=history_seconds, just_triggered=just_triggered
            )
        if first_delay is None:
            first_delay = first_poll_delay(schedule) if just_triggered else 0.0
        # The read above counts against the deadline; a run it saw finished gets its final read whatever is left.
        budget = wait.max_wait_seconds - (time.monotonic() - began)
        if seen is not None and seen.is_terminal:
            budget = max(budget, LATE_READ_SECONDS)
        return wait_for_run(
            client,
            run_id,
            max_wait_seconds=max(budget, 0.001),
            schedule=schedule,
            not_found_grace_seconds=client.retry.not_found_grace_seconds,
            log=log,
            job_id=job_id,
            first_poll_delay_seconds=first_delay,
            waker=waker,
            with_job=with_job,
        )
    except TerminationSignal:
        # The Prefect flow run is being cancelled (or its process stopped). The runner's on_cancellation hook
        # may be skipped when the process exits quickly, so cancel the dbt Cloud run here too; a stop that is
        # not a cancellation leaves it running, for a retry to resume.
        if prefect_cancellation_requested():
            cancel_quietly(client, [run_id], log)
        raise
    except WaitTimedOut as exc:
        if wait.on_timeout == "cancel":
            try:
                # Bounded: a server that misbehaved until the deadline must not hold the cancel for minutes.
                with request_deadline(time.monotonic() + AFTER_WAIT_SECONDS):
                    exc.run = client.cancel_run(run_id)
                log.warning(
                    "Deadline of %g s passed (%s): cancelled dbt Cloud run %s.",
                    wait.max_wait_seconds,
                    deadline_description(exc),
                    run_id,
                )
            except DbtCloudError as cancel_error:
                log.error("Deadline passed, and cancelling dbt Cloud run %s failed: %s", run_id, cancel_error)
        else:
            log.warning("Deadline of %g s passed: dbt Cloud run %s left running.", wait.max_wait_seconds, run_id)
        raise


def subscribe_before_trigger(wait: WaitSettings, log: logging.Logger | logging.LoggerAdapter[Any]) -> WaitSettings:
    """Open the process-wide webhook subscription before anything is triggered, so that no run's event passes
    unseen (the wait tasks reuse it); ``wait`` with webhooks off when no Prefect server makes it work."""
    if wait.webhooks and webhook_waiter(log) is None:
        return wait.model_copy(update={"webhooks": False})
    return wait


def webhook_waker(wait: WaitSettings, log: logging.Logger | logging.LoggerAdapter[Any]) -> RunEventWaiter | None:
    """The process-wide webhook waiter when ``wait.webhooks`` is on and a Prefect server makes it work, else
    ``None`` (the reason logged: the wait then polls as without webhooks)."""
    return webhook_waiter(log) if wait.webhooks else None


@dataclass
class RunWaitOutcome:
    """How the wait for one run of a fan-out ended.

    ``run`` is the run as last read (after the cancel, for one cancelled at the deadline); ``deadline`` says where
    it stood when the deadline passed; ``error`` is what stopped the wait otherwise; ``models`` its merged results.
    """

    run_id: int
    run: Run | None
    timed_out: bool = False
    deadline: str | None = None
    error: DbtCloudError | None = None
    models: list[ModelResult] = field(default_factory=list)


def prefect_cancellation_requested() -> bool:
    """Whether this task's flow run, or a flow run above it, is being cancelled in Prefect (Cancelling or
    Cancelled): cancelling a deployed ETL flow run stops the process that runs its in-process subflows, whose own
    state is still Running."""
    flow_run_id = runtime_flow_run.get_id()
    if not flow_run_id:
        return False
    try:
        with get_client(sync_client=True) as prefect:
            return any(
                run.state is not None and (run.state.is_cancelling() or run.state.is_cancelled())
                for run, _ in flow_runs_upwards(prefect, flow_run_id)
            )
    except Exception:  # no API at hand: do not guess
        return False


def cancel_quietly(
    client: DbtCloudClient, run_ids: list[int], log: logging.Logger | logging.LoggerAdapter[Any]
) -> None:
    for run_id in run_ids:
        try:
            run = client.get_run(run_id, ())
            if not run.is_terminal:
                client.cancel_run(run_id)
                log.warning("Prefect flow run cancelled: cancelled dbt Cloud run %s.", run_id)
        except DbtCloudError as exc:
            log.error("Prefect flow run cancelled, but dbt Cloud run %s could not be cancelled: %s", run_id, exc)


T = TypeVar("T")


def run_async(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from sync code, in a fresh thread when this one already runs a loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()
