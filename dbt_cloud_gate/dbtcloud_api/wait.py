"""Waiting for a run to reach a terminal status: the poll loop, shared by sync and async callers.

:class:`RunWatcher` (in ``_watcher``) is the whole decision logic (what to ask for, how long to sleep, when to
give up, what to log), and :meth:`RunWatcher.steps` the whole wait, written once as a generator of steps;
:func:`wait_for_run` and :func:`await_run` only read and sleep. Deadlines are on a monotonic clock and
count the time spent in requests, not only in sleeps: every request of the wait runs inside
``request_deadline``, so the wait ends within seconds of ``max_wait_seconds`` whatever the server does.

A finished run is returned only if it can be trusted: it is the run asked for (the client checks its ID,
account and job), and a Success carries its ``finished_at`` (downstream steps' watermark). A Success read
without it is read again for a short while (``finished_at_grace_seconds``), then the wait fails with
:class:`DbtCloudMissingFinishedAtError`.

A :class:`Waker` (optional) replaces the sleep between polls with a sleep that may end early for the run, e.g.
when a dbt Cloud webhook says it finished: the wait then polls at once, and that one GET decides the outcome (a
webhook never supplies ``finished_at``). A woken poll that still sees the run unfinished just continues the
schedule, so a wake-up can at most cost one extra request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypedDict, Unpack

from dbt_cloud_gate.dbtcloud_api._exchange import Exchange, Send
from dbt_cloud_gate.dbtcloud_api._watcher import (
    FINISHED_AT_GRACE_SECONDS,
    LATE_READ_SECONDS,
    MAX_WAIT_SECONDS,
    TRANSIENT_POLL_ERRORS,
    PollSchedule,
    RunWatcher,
    WaitStep,
    Waker,
    logger,
)
from dbt_cloud_gate.dbtcloud_api.client import AsyncDbtCloudClient, DbtCloudClient, check_id, request_deadline
from dbt_cloud_gate.dbtcloud_api.errors import DbtCloudError, WaitTimedOut
from dbt_cloud_gate.dbtcloud_api.models import ModelResult, Run
from dbt_cloud_gate.dbtcloud_api.results import aread_model_results, has_model_results
from dbt_cloud_gate.dbtcloud_api.types import check_seconds

__all__ = [
    "FINISHED_AT_GRACE_SECONDS",
    "LATE_READ_SECONDS",
    "TRANSIENT_POLL_ERRORS",
    "PollSchedule",
    "RunWatcher",
    "WaitOptions",
    "WaitOutcome",
    "WaitTimedOut",
    "Waker",
    "await_run",
    "await_runs",
    "first_poll_delay",
    "wait_for_run",
]


def first_poll_delay(schedule: PollSchedule) -> float:
    """Seconds from a trigger to the first poll under ``schedule``: its ``first_interval()`` when it has one (the
    trigger's answer already said "queued", so polling at once only costs a request), else 0."""
    first = getattr(schedule, "first_interval", None)
    return float(first()) if callable(first) else 0.0


class _Sleep:
    """A :class:`Waker` that is a plain sleep, never woken: the pause of a wait without a waker."""

    def __init__(self, sleep: Callable[[float], None] = time.sleep) -> None:
        self._sleep = sleep

    def wait(self, run_id: int, seconds: float) -> bool:
        """Sleep ``seconds`` with the sync sleep given."""
        self._sleep(seconds)
        return False

    async def await_wake(self, run_id: int, seconds: float) -> bool:
        """Sleep ``seconds`` on the event loop."""
        await asyncio.sleep(seconds)
        return False


class WaitOptions(TypedDict, total=False):
    """How one wait goes (:func:`wait_for_run`, :func:`await_run`): the :class:`RunWatcher` settings, each one
    left out taking the watcher's default (a 2-hour deadline, a poll every 30 s, no grace, the wait's logger)."""

    max_wait_seconds: float
    schedule: PollSchedule | None
    not_found_grace_seconds: float
    log: logging.Logger | logging.LoggerAdapter[Any]
    job_id: int | None
    finished_at_grace_seconds: float
    first_poll_delay_seconds: float
    with_job: bool


def wait_for_run(
    client: DbtCloudClient,
    run_id: int,
    *,
    sleep: Callable[[float], None] = time.sleep,
    waker: Waker | None = None,
    **options: Unpack[WaitOptions],
) -> Run:
    """Poll ``run_id`` until it is finished; returns it with its steps and trigger.

    ``first_poll_delay_seconds`` (see :func:`first_poll_delay`) spares the poll right after a trigger. With a
    ``waker``, every sleep (the first one too) is ``waker.wait``: a wake-up means a poll at once. Every read
    must be that run (of ``job_id`` when given). Raises ``WaitTimedOut`` within seconds of
    ``max_wait_seconds``, whatever the server does; ``DbtCloudMissingFinishedAtError`` for a Success that
    keeps coming without ``finished_at``; a ``DbtCloudResponseError`` for answers that are not dbt Cloud's.
    """
    wait = Exchange[WaitStep, Run | bool, Run](RunWatcher(run_id, **options).steps(_Sleep(sleep), waker))
    for step in wait:
        wait.reply(_read(client, step) if isinstance(step, Send) else step.waker.wait(run_id, step.seconds))
    return wait.answer


def _read(client: DbtCloudClient, step: Send) -> Run | DbtCloudError:
    """One read of the run by the step's deadline; a failure goes back to the wait, which judges it."""
    try:
        with request_deadline(step.deadline):
            return client.get_run(**step.arguments)
    except DbtCloudError as exc:
        return exc


async def await_run(
    client: AsyncDbtCloudClient, run_id: int, *, waker: Waker | None = None, **options: Unpack[WaitOptions]
) -> Run:
    """The asyncio twin of :func:`wait_for_run` (many waits can share one event loop, and one ``waker``)."""
    wait = Exchange[WaitStep, Run | bool, Run](RunWatcher(run_id, **options).steps(_Sleep(), waker))
    for step in wait:
        wait.reply(
            await (_aread(client, step) if isinstance(step, Send) else step.waker.await_wake(run_id, step.seconds))
        )
    return wait.answer


async def _aread(client: AsyncDbtCloudClient, step: Send) -> Run | DbtCloudError:
    """The asyncio twin of :func:`_read`."""
    with request_deadline(step.deadline):
        try:
            return await client.get_run(**step.arguments)
        except DbtCloudError as exc:
            return exc


@dataclass
class WaitOutcome:
    """How the wait for one run ended: the run as last seen, or a deadline, or an error that stopped the wait.

    After a deadline, ``timeout`` is the :class:`WaitTimedOut` that says where the run stood then (``run`` is the
    run as last seen, after the cancel when there was one).
    """

    run_id: int
    run: Run | None
    timed_out: bool = False
    error: DbtCloudError | None = None
    models: list[ModelResult] = field(default_factory=list)
    detected_at: float | None = None  # wall-clock time of the poll that saw the terminal status
    timeout: WaitTimedOut | None = None


# How long the cancel after a deadline, and the results read after a finish, may take.
AFTER_WAIT_SECONDS = 30.0


async def await_runs(
    client: AsyncDbtCloudClient,
    run_ids: Sequence[int],
    *,
    schedules: Callable[[int], PollSchedule],
    max_wait_seconds: float = MAX_WAIT_SECONDS,
    on_timeout: str = "cancel",
    fetch_results: bool = True,
    not_found_grace_seconds: float = 0.0,
    log: logging.Logger | logging.LoggerAdapter[Any] = logger,
    job_ids: Mapping[int, int] | None = None,
    finished_at_grace_seconds: float = FINISHED_AT_GRACE_SECONDS,
    waker: Waker | None = None,
    after_trigger: bool = False,
) -> list[WaitOutcome]:
    """Wait for many runs on one event loop (no thread per run); one outcome per run, in order, never raising.

    One ``waker``, when given, serves every run's sleeps (see :func:`await_run`). ``after_trigger``: the runs were
    just triggered, so each is first read after its schedule's first interval (:func:`first_poll_delay`), not at
    once.

    ``schedules(run_id)`` gives each run its poll schedule; ``job_ids`` (run ID → job ID), when given, is checked
    against every read. Runs past the deadline are cancelled unless ``on_timeout="leave"``; finished runs with
    artifacts get their per-model results. Arguments are checked before any request (``ValueError``).
    """
    for run_id in run_ids:
        check_id("run_id", run_id)
    for job_id in (job_ids or {}).values():
        check_id("job_id", job_id)
    check_seconds("max_wait_seconds", max_wait_seconds)
    if on_timeout not in ("cancel", "leave"):
        raise ValueError(f"on_timeout must be 'cancel' or 'leave', got {on_timeout!r}")

    async def one(run_id: int) -> WaitOutcome:
        schedule = schedules(run_id)
        try:
            run = await await_run(
                client,
                run_id,
                max_wait_seconds=max_wait_seconds,
                schedule=schedule,
                first_poll_delay_seconds=first_poll_delay(schedule) if after_trigger else 0.0,
                not_found_grace_seconds=not_found_grace_seconds,
                log=log,
                job_id=(job_ids or {}).get(run_id),
                finished_at_grace_seconds=finished_at_grace_seconds,
                waker=waker,
            )
        except WaitTimedOut as exc:
            outcome = WaitOutcome(run_id, exc.run, timed_out=True, timeout=exc)
            log.warning("%s", exc)
            if on_timeout == "cancel":
                try:
                    with request_deadline(time.monotonic() + AFTER_WAIT_SECONDS):
                        outcome.run = await client.cancel_run(run_id)
                except DbtCloudError as cancel_error:
                    log.error("Deadline passed, and cancelling dbt Cloud run %s failed: %s", run_id, cancel_error)
            return outcome
        except DbtCloudError as exc:
            return WaitOutcome(run_id, None, error=exc)
        outcome = WaitOutcome(run_id, run, detected_at=time.time())
        if fetch_results and has_model_results(run):
            # Every step that can build models, not only the last one (dbt Cloud's default: often a `dbt test`).
            with request_deadline(time.monotonic() + AFTER_WAIT_SECONDS):
                outcome.models = await aread_model_results(client, run_id, run, log)
        return outcome

    return list(await asyncio.gather(*(one(run_id) for run_id in run_ids)))
