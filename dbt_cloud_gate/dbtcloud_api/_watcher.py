"""The decisions of a wait for one run, with no I/O: :class:`RunWatcher`, and the wait as a generator of steps.

:meth:`RunWatcher.steps` is the whole wait, written once: it yields ``Send`` (read the run by a deadline)
and :class:`Pause` (sleep on a :class:`Waker`, which may end early, or on a plain sleep), and is sent what each
gave (or thrown the error a read raised). :mod:`.wait`'s ``wait_for_run`` and ``await_run`` drive it: they only
read and sleep.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from dbt_cloud_gate.dbtcloud_api._config import DEFAULT_RUN_INCLUDES
from dbt_cloud_gate.dbtcloud_api._exchange import Send, Sleep
from dbt_cloud_gate.dbtcloud_api.errors import (
    DbtCloudError,
    DbtCloudMissingFinishedAtError,
    DbtCloudRateLimitError,
    DbtCloudServerError,
    DbtCloudTransportError,
    WaitTimedOut,
)
from dbt_cloud_gate.dbtcloud_api.models import Run, RunStatus
from dbt_cloud_gate.dbtcloud_api.polling import FixedInterval
from dbt_cloud_gate.dbtcloud_api.types import check_id, check_seconds

__all__ = [
    "FINISHED_AT_GRACE_SECONDS",
    "LATE_READ_SECONDS",
    "TRANSIENT_POLL_ERRORS",
    "Pause",
    "PollSchedule",
    "RunWatcher",
    "Send",
    "WaitStep",
    "Waker",
]

# The wait's log, whichever module of it speaks.
logger = logging.getLogger("dbt_cloud_gate.dbtcloud_api.wait")

# Errors a poll can hit that say nothing about the run: keep waiting until the deadline. An answer that is not
# dbt Cloud's (DbtCloudResponseError) is not among them: the client retried it a few times already, and waiting
# through it would end as a time-out that hides the real problem.
TRANSIENT_POLL_ERRORS = (DbtCloudServerError, DbtCloudTransportError, DbtCloudRateLimitError)
# How long a Success without finished_at is read again before the wait fails, and how long a read after the
# deadline may take (the final read of a run seen finished, the re-reads for finished_at).
FINISHED_AT_GRACE_SECONDS = 30.0
LATE_READ_SECONDS = 5.0
# A wait given no deadline or schedule: two hours, a poll every 30 s.
MAX_WAIT_SECONDS = 7200.0
POLL_INTERVAL_SECONDS = 30.0


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


@dataclass(frozen=True)
class Pause(Sleep):
    """Sleep up to ``seconds`` on ``waker`` (the caller's, or a plain sleep's); answer whether it was woken."""

    waker: Waker


# A Send is a read of the run: ``client.get_run(**arguments)`` inside ``request_deadline(deadline)``.
WaitStep = Send | Pause


class RunWatcher:
    """The state of one wait: feed it each poll's outcome; it answers with the delay to the next poll."""

    def __init__(
        self,
        run_id: int,
        *,
        max_wait_seconds: float = MAX_WAIT_SECONDS,
        schedule: PollSchedule | None = None,
        not_found_grace_seconds: float = 0.0,
        log: logging.Logger | logging.LoggerAdapter[Any] = logger,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        finished_at_grace_seconds: float = FINISHED_AT_GRACE_SECONDS,
        first_poll_delay_seconds: float = 0.0,
        job_id: int | None = None,
        with_job: bool = False,
    ) -> None:
        # Refuse what would wait forever or poll with no delay, or read another job's run, before any request.
        self.job_id = None if job_id is None else check_id("job_id", job_id)
        self.run_id = check_id("run_id", run_id)
        self.first_poll_delay_seconds = check_seconds(
            "first_poll_delay_seconds", first_poll_delay_seconds, allow_zero=True
        )
        self.max_wait_seconds = check_seconds("max_wait_seconds", max_wait_seconds)
        self.not_found_grace_seconds = check_seconds(
            "not_found_grace_seconds", not_found_grace_seconds, allow_zero=True
        )
        self.finished_at_grace_seconds = check_seconds(
            "finished_at_grace_seconds", finished_at_grace_seconds, allow_zero=True
        )
        if schedule is None:
            schedule = FixedInterval(POLL_INTERVAL_SECONDS)
        if not callable(getattr(schedule, "next_interval", None)):
            raise ValueError(f"schedule must have a next_interval(run, elapsed) method, got {schedule!r}")
        self.schedule = schedule
        self.with_job = with_job
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
        nothing until it runs. ``with_job``: the job too (its own schedule, when nothing read it before)."""
        return ("run_steps", "trigger", "job") if self.with_job else ("run_steps", "trigger")

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

    # -- the wait, written once ----------------------------------------------------------------------------

    def steps(self, sleeper: Waker, waker: Waker | None = None) -> Generator[WaitStep, Any, Run]:
        """The whole wait as steps for a driver; returns the finished run (see :mod:`.wait`).

        Each poll's read is sent back (or its ``DbtCloudError`` thrown in); a :class:`Pause` is answered with
        whether it was woken. ``sleeper`` is a plain sleep (never woken): between polls without a ``waker``,
        and between the re-reads of a finished run. Every read must be this run (of ``job_id`` when given).
        """
        yield from self._pause(self.first_delay(), sleeper, waker)
        while True:
            try:
                run = yield Send(self._read_arguments(self.includes(), self.grace()), self.request_deadline())
            except DbtCloudError as exc:
                self.on_error(exc)
            else:
                if self.on_run(run):
                    return (yield from self._finish(run, sleeper))
            yield from self._pause(self.next_delay(), sleeper, waker)

    def _read_arguments(self, includes: Sequence[str], grace: float | None) -> dict[str, Any]:
        """``client.get_run``'s arguments for a read of this run (``grace``: the 404 grace, ``None`` on re-reads)."""
        return {
            "run_id": self.run_id,
            "include_related": includes,
            "not_found_grace_seconds": grace,
            "job_id": self.job_id,
        }

    def _pause(self, seconds: float, sleeper: Waker, waker: Waker | None) -> Generator[WaitStep, Any, None]:
        """The sleep between polls: a plain one, or on the waker (none when no time is left)."""
        if waker is None:
            yield Pause(seconds, sleeper)
        elif seconds > 0 and (yield Pause(seconds, waker)):
            self.on_wake()

    def _finish(self, run: Run, sleeper: Waker) -> Generator[WaitStep, Any, Run]:
        """The finished run, read once more with its steps if needed, and with ``finished_at`` if a Success."""
        final_read = self.needs_final_read(run)
        while final_read or self.lacks_watermark(run):
            if not final_read:
                yield Pause(self.next_watermark_read(run), sleeper)
            final_read = False
            try:
                reread = yield Send(self._read_arguments(DEFAULT_RUN_INCLUDES, None), self.late_request_deadline())
            except TRANSIENT_POLL_ERRORS as exc:
                self.log.warning("Could not read run %s again after it finished: %s", self.run_id, exc)
            else:
                run = self.on_reread(run, reread)
        return run
