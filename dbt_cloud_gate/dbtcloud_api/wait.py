"""Waiting for a run to reach a terminal status: the poll loop, shared by sync and async callers.

:class:`RunWatcher` is the whole decision logic (what to ask for, how long to sleep, when to give up, what to
log); :func:`wait_for_run` and :func:`await_run` only send and sleep. Deadlines are on a monotonic clock and
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
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from dbt_cloud_gate.dbtcloud_api.client import (
    DEFAULT_RUN_INCLUDES,
    AsyncDbtCloudClient,
    DbtCloudClient,
    check_id,
    request_deadline,
)
from dbt_cloud_gate.dbtcloud_api.errors import (
    DbtCloudError,
    DbtCloudMissingFinishedAtError,
    DbtCloudRateLimitError,
    DbtCloudServerError,
    DbtCloudTransportError,
    WaitTimedOut,
)
from dbt_cloud_gate.dbtcloud_api.models import ModelResult, Run, RunStatus
from dbt_cloud_gate.dbtcloud_api.polling import FixedInterval, check_interval
from dbt_cloud_gate.dbtcloud_api.results import aread_model_results, has_model_results

logger = logging.getLogger("dbt_cloud_gate.dbtcloud_api.wait")

__all__ = [
    "TRANSIENT_POLL_ERRORS",
    "PollSchedule",
    "RunWatcher",
    "WaitOutcome",
    "WaitTimedOut",
    "Waker",
    "await_run",
    "await_runs",
    "check_wait_settings",
    "first_poll_delay",
    "wait_for_run",
]

# Errors a poll can hit that say nothing about the run: keep waiting until the deadline. An answer that is not
# dbt Cloud's (DbtCloudResponseError) is not among them: the client retried it a few times already, and waiting
# through it would end as a time-out that hides the real problem.
TRANSIENT_POLL_ERRORS = (DbtCloudServerError, DbtCloudTransportError, DbtCloudRateLimitError)
# How long a Success without finished_at is read again before the wait fails, and how long a read after the
# deadline may take (the final read of a run seen finished, the re-reads for finished_at).
FINISHED_AT_GRACE_SECONDS = 30.0
LATE_READ_SECONDS = 5.0


def _check_wait_seconds(name: str, value: object, *, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number of seconds, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'0 or more' if allow_zero else 'positive'}, got {value!r}")
    return float(value)


def check_wait_settings(
    max_wait_seconds: float, poll_interval_seconds: float | None = None, on_timeout: str | None = None
) -> None:
    """Refuse wait settings that would wait forever or poll flat out (NaN, infinity, 0, negative), or an unknown
    ``on_timeout``, with a ``ValueError`` naming the setting. Call it before triggering anything."""
    _check_wait_seconds("max_wait_seconds", max_wait_seconds)
    if poll_interval_seconds is not None:
        check_interval("poll_interval_seconds", poll_interval_seconds)
    if on_timeout is not None and on_timeout not in ("cancel", "leave"):
        raise ValueError(f"on_timeout must be 'cancel' or 'leave', got {on_timeout!r}")


class PollSchedule(Protocol):
    """Decides how long to wait before the next poll of a run that is not finished."""

    def next_interval(self, run: Run, elapsed: float) -> float:
        """Seconds until the next poll, given the run as last seen and the seconds waited so far."""
        ...


class Waker(Protocol):
    """A sleep that may end early for one run: what the wait does between polls instead of ``sleep``.

    Both methods sleep up to ``seconds`` and return ``True`` as soon as a wake-up for ``run_id`` arrives (or one
    arrived while no wait for that run was sleeping, and was not handed out since), ``False`` when the time ran
    out. A wake-up is handed out once: a poll that follows it and still sees the run unfinished sleeps again.
    """

    def wait(self, run_id: int, seconds: float) -> bool:
        """Block up to ``seconds``; ``True`` if woken for ``run_id``."""
        ...

    async def await_wake(self, run_id: int, seconds: float) -> bool:
        """The asyncio twin of :meth:`wait`."""
        ...


def first_poll_delay(schedule: PollSchedule) -> float:
    """Seconds from a trigger to the first poll under ``schedule``: its ``first_interval()`` when it has one (the
    trigger's answer already said "queued", so polling at once only costs a request), else 0."""
    first = getattr(schedule, "first_interval", None)
    return float(first()) if callable(first) else 0.0


class RunWatcher:
    """The state of one wait: feed it each poll's outcome; it answers with the delay to the next poll."""

    def __init__(
        self,
        run_id: int,
        *,
        max_wait_seconds: float,
        schedule: PollSchedule,
        not_found_grace_seconds: float = 0.0,
        log: logging.Logger | logging.LoggerAdapter[Any] = logger,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        finished_at_grace_seconds: float = FINISHED_AT_GRACE_SECONDS,
        first_poll_delay_seconds: float = 0.0,
    ) -> None:
        # Refuse what would wait forever or poll with no delay, before any request.
        self.run_id = check_id("run_id", run_id)
        self.first_poll_delay_seconds = _check_wait_seconds(
            "first_poll_delay_seconds", first_poll_delay_seconds, allow_zero=True
        )
        self.max_wait_seconds = _check_wait_seconds("max_wait_seconds", max_wait_seconds)
        self.not_found_grace_seconds = _check_wait_seconds(
            "not_found_grace_seconds", not_found_grace_seconds, allow_zero=True
        )
        self.finished_at_grace_seconds = _check_wait_seconds(
            "finished_at_grace_seconds", finished_at_grace_seconds, allow_zero=True
        )
        if not callable(getattr(schedule, "next_interval", None)):
            raise ValueError(f"schedule must have a next_interval(run, elapsed) method, got {schedule!r}")
        self.schedule = schedule
        self.log = log
        self.clock = clock
        self.wall_clock = wall_clock
        self.started = clock()
        self.deadline = self.started + self.max_wait_seconds
        self.last: Run | None = None
        self.last_error: DbtCloudError | None = None
        self.polls = 0
        self.poll_errors = 0
        self.wakes = 0  # wake-ups (a Waker's) that cut a sleep short
        self.woken = False  # the next poll follows a wake-up
        self.ended_by_wake = False  # the poll that saw the end followed a wake-up
        self._steps_seen: dict[int, int | None] = {}
        self._unknown_warned: set[int] = set()
        self._watermark_first = 0.0
        self._watermark_until: float | None = None
        self._watermark_reads = 0

    def first_delay(self) -> float:
        """Seconds to sleep before the first poll (after a trigger; 0 for a run that may be finished already)."""
        return max(0.0, min(self.first_poll_delay_seconds, self.deadline - self.clock()))

    def elapsed(self) -> float:
        """Seconds since the wait began."""
        return self.clock() - self.started

    def request_deadline(self) -> float:
        """The wait's deadline as a ``time.monotonic()`` time, for ``request_deadline`` around each poll."""
        return time.monotonic() + (self.deadline - self.clock())

    def late_request_deadline(self) -> float:
        """The deadline of a read made once the run is seen finished: the wait's, or a few seconds from now."""
        return time.monotonic() + max(self.deadline - self.clock(), LATE_READ_SECONDS)

    def includes(self) -> tuple[str, ...]:
        """What to ask for with every poll: the steps and the trigger (its cause), so that whichever poll sees the
        end carries what the result needs and no re-read follows. A queued run has no steps yet: asking costs
        nothing until it runs."""
        return ("run_steps", "trigger")

    def grace(self) -> float:
        """404 grace left for this poll (a run triggered moments ago may not be readable yet)."""
        return max(0.0, self.not_found_grace_seconds - self.elapsed())

    def on_run(self, run: Run) -> bool:
        """Record a poll's answer; True when the run is finished."""
        self.polls += 1
        previous = self.last
        self.last = run
        woken, self.woken = self.woken, False
        if previous is None or previous.status != run.status:
            self._log_status(run, previous)
        self._log_steps(run)
        if woken and run.is_terminal:
            self.ended_by_wake = True
            self.log.info("dbt Cloud run %s: the poll after a wake-up saw it end (%s).", self.run_id, run.status_label)
        elif woken:
            # A started event, a reordered delivery, or a reconnect: the schedule simply goes on.
            self.log.debug("dbt Cloud run %s: woken, but still %s; polling on schedule.", self.run_id, run.status_label)
        return run.is_terminal

    def on_wake(self) -> None:
        """A wake-up cut the sleep short: the next poll is at once (one GET decides; a wake-up is only a hint)."""
        self.wakes += 1
        self.woken = True

    def on_error(self, exc: DbtCloudError) -> None:
        """A poll failed after the client's own retries: keep waiting if it says nothing about the run."""
        self.woken = False
        if not isinstance(exc, TRANSIENT_POLL_ERRORS):
            raise exc
        self.poll_errors += 1
        self.last_error = exc
        self.log.warning("Polling run %s failed (%s); will try again until the deadline.", self.run_id, exc)

    def next_delay(self) -> float:
        """Seconds to sleep before the next poll; raises :class:`WaitTimedOut` past the deadline."""
        remaining = self.deadline - self.clock()
        if remaining <= 0:
            raise self.timed_out()
        interval = self.schedule.next_interval(self.last, self.elapsed()) if self.last else 1.0
        if isinstance(interval, bool) or not isinstance(interval, int | float) or not math.isfinite(interval):
            raise ValueError(f"The poll schedule {self.schedule!r} gave {interval!r} s: not a finite delay.")
        return max(0.0, min(interval, remaining))

    def timed_out(self) -> WaitTimedOut:
        """The error for a deadline that passed now: it says where the run stood (queued, starting, running)."""
        waited = self.elapsed()
        phase, state = self._deadline_state(waited)
        return WaitTimedOut(
            f"dbt Cloud run {self.run_id} {state}: no terminal status within the deadline of "
            f"{self.max_wait_seconds:g} s (waited {waited:.0f} s).",
            run_id=self.run_id,
            run=self.last,
            waited_seconds=waited,
            phase=phase,
            max_wait_seconds=self.max_wait_seconds,
            status_at_deadline=self.last.status_label if self.last is not None else None,
            description=state,
        )

    def _since(self, moment: datetime | None, fallback: float) -> float:
        if moment is None:
            return fallback
        seconds = self.wall_clock() - moment.timestamp()
        return seconds if seconds >= 0 else fallback  # a clock skewed behind dbt Cloud's: trust the wait's own

    def _deadline_state(self, waited: float) -> tuple[str, str]:
        """The phase, and a phrase for where the run stood ("still queued after 600 s, never started")."""
        run = self.last
        if run is None:
            why = f": {self.last_error}" if self.last_error is not None else ""
            return "never-read", f"never read in {waited:.0f} s of waiting (every poll failed{why})"
        status = run.known_status
        if status is RunStatus.QUEUED:
            return "queued", f"still queued after {self._since(run.created_at, waited):.0f} s, never started"
        if status is RunStatus.STARTING:
            since = self._since(run.dequeued_at or run.created_at, waited)
            return "starting", f"still starting after {since:.0f} s: out of the queue, but dbt never began"
        if status is RunStatus.RUNNING:
            if run.started_at is None:
                return "running", f"running (start time unknown) after {waited:.0f} s of waiting"
            running = self._since(run.started_at, waited)
            started = run.started_at.astimezone(UTC).isoformat(timespec="seconds")
            return "running", f"running for {running:.0f} s (started at {started})"
        return "unknown", f"in status {run.status_label} after {waited:.0f} s of waiting"

    def lacks_watermark(self, run: Run) -> bool:
        """Whether ``run`` is a Success without ``finished_at``: it must be read again before it is returned."""
        return run.status == RunStatus.SUCCESS and run.finished_at is None

    def next_watermark_read(self, run: Run) -> float:
        """Seconds until the next read of a Success without ``finished_at``; raises once the grace is spent.

        Re-reads for ``finished_at_grace_seconds`` from the first such answer, ending at the wait's deadline
        unless that leaves less than a few seconds (a run seen finished at the deadline still gets a re-read).
        """
        now = self.clock()
        if self._watermark_until is None:
            self._watermark_first = now
            self._watermark_until = min(
                now + self.finished_at_grace_seconds, max(self.deadline, now + LATE_READ_SECONDS)
            )
            self.log.warning(
                "dbt Cloud run %s reports Success without finished_at; reading it again for up to %.0f s.",
                self.run_id,
                self._watermark_until - now,
            )
        delay = min(2.0 ** min(self._watermark_reads, 4), 8.0)  # 1, 2, 4, 8, 8... seconds
        if now + delay > self._watermark_until:
            raise DbtCloudMissingFinishedAtError(
                f"dbt Cloud run {self.run_id} succeeded, but dbt Cloud gave no finished_at (read "
                f"{self._watermark_reads + 1} time(s) over {now - self._watermark_first:.0f} s), so no watermark can be set for downstream loads: nothing was loaded. Run the flow again "
                "once dbt Cloud shows the run's finish time.",
                run_id=self.run_id,
                run=run,
            )
        self._watermark_reads += 1
        return delay

    def on_reread(self, finished: Run, run: Run) -> Run:
        """The run to keep after reading a finished run again: the new read, unless it is not finished."""
        if not run.is_terminal:
            self.log.warning(
                "dbt Cloud run %s read as %s after it was seen %s; keeping the finished state.",
                self.run_id,
                run.status_label,
                finished.status_label,
            )
            return finished
        return run

    def needs_final_read(self, run: Run) -> bool:
        """Whether the terminal run must be read once more: it lacks its trigger, or it ran and its steps were not
        asked for (it ended between a poll that saw it queued and this one). A run that never started has none."""
        return run.trigger is None or (not run.run_steps and run.started_at is not None)

    def _log_status(self, run: Run, previous: Run | None) -> None:
        if run.known_status is None:
            code = int(run.status)
            if code not in self._unknown_warned:
                self._unknown_warned.add(code)
                self.log.warning(
                    "Run %s has status code %s, unknown to this client; treating it as %s (is_complete=%s).",
                    self.run_id,
                    code,
                    "finished" if run.is_terminal else "not finished",
                    run.is_complete,
                )
            return
        was = f" (was {previous.status_label})" if previous is not None else ""
        # The wait's own time, named as such; the run's time in dbt Cloud apart, once it is known.
        took = ""
        if run.is_terminal and run.started_at is not None and run.finished_at is not None:
            took = f"; the run took {(run.finished_at - run.started_at).total_seconds():.1f} s in dbt Cloud"
        self.log.info(
            "dbt Cloud run %s is %s%s, %.1f s into this wait%s.",
            self.run_id,
            run.status_label,
            was,
            self.elapsed(),
            took,
        )

    def _log_steps(self, run: Run) -> None:
        for step in sorted(run.run_steps, key=lambda s: s.index):
            seen = self._steps_seen.get(step.index, -1)
            if seen == step.status:
                continue
            self._steps_seen[step.index] = step.status
            try:
                label = RunStatus(step.status).label if step.status is not None else "unknown"
            except ValueError:
                label = f"status {step.status}"
            self.log.info("dbt Cloud run %s step %s: %s — %s", self.run_id, step.index, step.name, label)


def wait_for_run(
    client: DbtCloudClient,
    run_id: int,
    *,
    max_wait_seconds: float = 7200,
    schedule: PollSchedule | None = None,
    not_found_grace_seconds: float = 0.0,
    log: logging.Logger | logging.LoggerAdapter[Any] = logger,
    sleep: Callable[[float], None] = time.sleep,
    job_id: int | None = None,
    finished_at_grace_seconds: float = FINISHED_AT_GRACE_SECONDS,
    first_poll_delay_seconds: float = 0.0,
    waker: Waker | None = None,
) -> Run:
    """Poll ``run_id`` until it is finished; returns it with its steps and trigger.

    ``first_poll_delay_seconds`` (see :func:`first_poll_delay`) spares the poll right after a trigger. With a
    ``waker``, every sleep (the first one too) is ``waker.wait``: a wake-up means a poll at once. Every read
    must be that run (of ``job_id`` when given). Raises ``WaitTimedOut`` within seconds of
    ``max_wait_seconds``, whatever the server does; ``DbtCloudMissingFinishedAtError`` for a Success that
    keeps coming without ``finished_at``; a ``DbtCloudResponseError`` for answers that are not dbt Cloud's.
    """
    if job_id is not None:
        check_id("job_id", job_id)
    watcher = RunWatcher(
        run_id,
        max_wait_seconds=max_wait_seconds,
        schedule=schedule or FixedInterval(30),
        not_found_grace_seconds=not_found_grace_seconds,
        log=log,
        finished_at_grace_seconds=finished_at_grace_seconds,
        first_poll_delay_seconds=first_poll_delay_seconds,
    )

    def pause(seconds: float) -> None:
        if waker is None:
            sleep(seconds)
        elif seconds > 0 and waker.wait(run_id, seconds):
            watcher.on_wake()

    pause(watcher.first_delay())
    while True:
        try:
            with request_deadline(watcher.request_deadline()):
                run = client.get_run(run_id, watcher.includes(), not_found_grace_seconds=watcher.grace(), job_id=job_id)
        except DbtCloudError as exc:
            watcher.on_error(exc)
        else:
            if watcher.on_run(run):
                return _finish_sync(client, watcher, run, job_id, sleep)
        pause(watcher.next_delay())


def _finish_sync(
    client: DbtCloudClient, watcher: RunWatcher, run: Run, job_id: int | None, sleep: Callable[[float], None]
) -> Run:
    """The finished run, read once more with its steps if needed, and with ``finished_at`` if a Success."""
    final_read = watcher.needs_final_read(run)
    while final_read or watcher.lacks_watermark(run):
        if not final_read:
            sleep(watcher.next_watermark_read(run))
        final_read = False
        try:
            with request_deadline(watcher.late_request_deadline()):
                run = watcher.on_reread(run, client.get_run(watcher.run_id, DEFAULT_RUN_INCLUDES, job_id=job_id))
        except TRANSIENT_POLL_ERRORS as exc:
            watcher.log.warning("Could not read run %s again after it finished: %s", watcher.run_id, exc)
    return run


async def await_run(
    client: AsyncDbtCloudClient,
    run_id: int,
    *,
    max_wait_seconds: float = 7200,
    schedule: PollSchedule | None = None,
    not_found_grace_seconds: float = 0.0,
    log: logging.Logger | logging.LoggerAdapter[Any] = logger,
    job_id: int | None = None,
    finished_at_grace_seconds: float = FINISHED_AT_GRACE_SECONDS,
    first_poll_delay_seconds: float = 0.0,
    waker: Waker | None = None,
) -> Run:
    """The asyncio twin of :func:`wait_for_run` (many waits can share one event loop, and one ``waker``)."""
    if job_id is not None:
        check_id("job_id", job_id)
    watcher = RunWatcher(
        run_id,
        max_wait_seconds=max_wait_seconds,
        schedule=schedule or FixedInterval(30),
        not_found_grace_seconds=not_found_grace_seconds,
        log=log,
        finished_at_grace_seconds=finished_at_grace_seconds,
        first_poll_delay_seconds=first_poll_delay_seconds,
    )

    async def pause(seconds: float) -> None:
        if waker is None:
            await asyncio.sleep(seconds)
        elif seconds > 0 and await waker.await_wake(run_id, seconds):
            watcher.on_wake()

    await pause(watcher.first_delay())
    while True:
        try:
            with request_deadline(watcher.request_deadline()):
                run = await client.get_run(
                    run_id, watcher.includes(), not_found_grace_seconds=watcher.grace(), job_id=job_id
                )
        except DbtCloudError as exc:
            watcher.on_error(exc)
        else:
            if watcher.on_run(run):
                return await _finish_async(client, watcher, run, job_id)
        await pause(watcher.next_delay())


async def _finish_async(client: AsyncDbtCloudClient, watcher: RunWatcher, run: Run, job_id: int | None) -> Run:
    """The asyncio twin of :func:`_finish_sync`."""
    final_read = watcher.needs_final_read(run)
    while final_read or watcher.lacks_watermark(run):
        if not final_read:
            await asyncio.sleep(watcher.next_watermark_read(run))
        final_read = False
        try:
            with request_deadline(watcher.late_request_deadline()):
                run = watcher.on_reread(run, await client.get_run(watcher.run_id, DEFAULT_RUN_INCLUDES, job_id=job_id))
        except TRANSIENT_POLL_ERRORS as exc:
            watcher.log.warning("Could not read run %s again after it finished: %s", watcher.run_id, exc)
    return run


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
    max_wait_seconds: float = 7200,
    on_timeout: str = "cancel",
    fetch_results: bool = True,
    not_found_grace_seconds: float = 0.0,
    log: logging.Logger | logging.LoggerAdapter[Any] = logger,
    job_ids: Mapping[int, int] | None = None,
    finished_at_grace_seconds: float = FINISHED_AT_GRACE_SECONDS,
    waker: Waker | None = None,
) -> list[WaitOutcome]:
    """Wait for many runs on one event loop (no thread per run); one outcome per run, in order, never raising.

    One ``waker``, when given, serves every run's sleeps (see :func:`await_run`).

    ``schedules(run_id)`` gives each run its poll schedule; ``job_ids`` (run ID → job ID), when given, is checked
    against every read. Runs past the deadline are cancelled unless ``on_timeout="leave"``; finished runs with
    artifacts get their per-model results. Arguments are checked before any request (``ValueError``).
    """
    for run_id in run_ids:
        check_id("run_id", run_id)
    for job_id in (job_ids or {}).values():
        check_id("job_id", job_id)
    check_wait_settings(max_wait_seconds, on_timeout=on_timeout)

    async def one(run_id: int) -> WaitOutcome:
        try:
            run = await await_run(
                client,
                run_id,
                max_wait_seconds=max_wait_seconds,
                schedule=schedules(run_id),
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
