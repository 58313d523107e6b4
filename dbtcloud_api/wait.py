"""Waiting for a run to reach a terminal status: the poll loop, shared by sync and async callers.

:class:`RunWatcher` is the whole decision logic (what to ask for, how long to sleep, when to give up, what to
log); :func:`wait_for_run` and :func:`await_run` only send and sleep. Deadlines are on a monotonic clock and
count the time spent in requests, not only in sleeps.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from dbtcloud_api.client import DEFAULT_RUN_INCLUDES, AsyncDbtCloudClient, DbtCloudClient
from dbtcloud_api.errors import (
    DbtCloudError,
    DbtCloudRateLimitError,
    DbtCloudResponseError,
    DbtCloudServerError,
    DbtCloudTransportError,
)
from dbtcloud_api.models import ModelResult, Run, RunStatus, parse_run_results
from dbtcloud_api.polling import FixedInterval

logger = logging.getLogger("dbtcloud_api.wait")

# Errors a poll can hit that say nothing about the run: keep waiting until the deadline.
TRANSIENT_POLL_ERRORS = (DbtCloudServerError, DbtCloudTransportError, DbtCloudRateLimitError, DbtCloudResponseError)


class PollSchedule(Protocol):
    """Decides how long to wait before the next poll of a run that is not finished."""

    def next_interval(self, run: Run, elapsed: float) -> float:
        """Seconds until the next poll, given the run as last seen and the seconds waited so far."""
        ...


class WaitTimedOut(DbtCloudError):
    """The run reached no terminal status before the deadline; ``run`` is the last state seen (or ``None``)."""

    def __init__(self, message: str, *, run_id: int, run: Run | None, waited_seconds: float) -> None:
        super().__init__(message)
        self.run_id = run_id
        self.run = run
        self.waited_seconds = waited_seconds


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
    ) -> None:
        if max_wait_seconds <= 0:
            raise ValueError(f"max_wait_seconds must be positive, got {max_wait_seconds}")
        self.run_id = run_id
        self.schedule = schedule
        self.log = log
        self.clock = clock
        self.started = clock()
        self.deadline = self.started + max_wait_seconds
        self.max_wait_seconds = max_wait_seconds
        self.not_found_grace_seconds = not_found_grace_seconds
        self.last: Run | None = None
        self.polls = 0
        self.poll_errors = 0
        self._steps_seen: dict[int, int | None] = {}
        self._unknown_warned: set[int] = set()

    def elapsed(self) -> float:
        """Seconds since the wait began."""
        return self.clock() - self.started

    def includes(self) -> tuple[str, ...]:
        """What to ask for with the next poll: step progress only while the run is running."""
        if self.last is not None and self.last.status == RunStatus.RUNNING:
            return ("run_steps",)
        return ()

    def grace(self) -> float:
        """404 grace left for this poll (a run triggered moments ago may not be readable yet)."""
        return max(0.0, self.not_found_grace_seconds - self.elapsed())

    def on_run(self, run: Run) -> bool:
        """Record a poll's answer; True when the run is finished."""
        self.polls += 1
        previous = self.last
        self.last = run
        if previous is None or previous.status != run.status:
            self._log_status(run, previous)
        self._log_steps(run)
        return run.is_terminal

    def on_error(self, exc: DbtCloudError) -> None:
        """A poll failed after the client's own retries: keep waiting if it says nothing about the run."""
        if not isinstance(exc, TRANSIENT_POLL_ERRORS):
            raise exc
        self.poll_errors += 1
        self.log.warning("Polling run %s failed (%s); will try again until the deadline.", self.run_id, exc)

    def next_delay(self) -> float:
        """Seconds to sleep before the next poll; raises :class:`WaitTimedOut` past the deadline."""
        remaining = self.deadline - self.clock()
        if remaining <= 0:
            status = self.last.status_label if self.last else "never read"
            raise WaitTimedOut(
                f"Run {self.run_id} reached no terminal status within {self.max_wait_seconds:g} s "
                f"(last status: {status}).",
                run_id=self.run_id,
                run=self.last,
                waited_seconds=self.elapsed(),
            )
        interval = self.schedule.next_interval(self.last, self.elapsed()) if self.last else 1.0
        return max(0.0, min(interval, remaining))

    def needs_final_read(self, run: Run) -> bool:
        """Whether the terminal run should be read once more with its steps, job and trigger."""
        return run.job is None or run.trigger is None or not run.run_steps

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
        self.log.info("dbt Cloud run %s is %s%s after %.1f s.", self.run_id, run.status_label, was, self.elapsed())

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
) -> Run:
    """Poll ``run_id`` until it is finished; returns it with steps, job and trigger. Raises ``WaitTimedOut``."""
    watcher = RunWatcher(
        run_id,
        max_wait_seconds=max_wait_seconds,
        schedule=schedule or FixedInterval(30),
        not_found_grace_seconds=not_found_grace_seconds,
        log=log,
    )
    while True:
        try:
            run = client.get_run(run_id, watcher.includes(), not_found_grace_seconds=watcher.grace())
        except DbtCloudError as exc:
            watcher.on_error(exc)
        else:
            if watcher.on_run(run):
                if watcher.needs_final_read(run):
                    try:
                        run = client.get_run(run_id, DEFAULT_RUN_INCLUDES)
                    except TRANSIENT_POLL_ERRORS as exc:
                        log.warning("Could not read run %s's steps after it finished: %s", run_id, exc)
                return run
        sleep(watcher.next_delay())


async def await_run(
    client: AsyncDbtCloudClient,
    run_id: int,
    *,
    max_wait_seconds: float = 7200,
    schedule: PollSchedule | None = None,
    not_found_grace_seconds: float = 0.0,
    log: logging.Logger | logging.LoggerAdapter[Any] = logger,
) -> Run:
    """The asyncio twin of :func:`wait_for_run` (many waits can share one event loop)."""
    watcher = RunWatcher(
        run_id,
        max_wait_seconds=max_wait_seconds,
        schedule=schedule or FixedInterval(30),
        not_found_grace_seconds=not_found_grace_seconds,
        log=log,
    )
    while True:
        try:
            run = await client.get_run(run_id, watcher.includes(), not_found_grace_seconds=watcher.grace())
        except DbtCloudError as exc:
            watcher.on_error(exc)
        else:
            if watcher.on_run(run):
                if watcher.needs_final_read(run):
                    try:
                        run = await client.get_run(run_id, DEFAULT_RUN_INCLUDES)
                    except TRANSIENT_POLL_ERRORS as exc:
                        log.warning("Could not read run %s's steps after it finished: %s", run_id, exc)
                return run
        await asyncio.sleep(watcher.next_delay())


@dataclass
class WaitOutcome:
    """How the wait for one run ended: the run as last seen, or a deadline, or an error that stopped the wait."""

    run_id: int
    run: Run | None
    timed_out: bool = False
    error: DbtCloudError | None = None
    models: list[ModelResult] = field(default_factory=list)
    detected_at: float | None = None  # wall-clock time of the poll that saw the terminal status


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
) -> list[WaitOutcome]:
    """Wait for many runs on one event loop (no thread per run); one outcome per run, in order, never raising.

    ``schedules(run_id)`` gives each run its poll schedule. Runs past the deadline are cancelled unless
    ``on_timeout="leave"``; finished runs with artifacts get their per-model results.
    """

    async def one(run_id: int) -> WaitOutcome:
        try:
            run = await await_run(
                client,
                run_id,
                max_wait_seconds=max_wait_seconds,
                schedule=schedules(run_id),
                not_found_grace_seconds=not_found_grace_seconds,
                log=log,
            )
        except WaitTimedOut as exc:
            outcome = WaitOutcome(run_id, exc.run, timed_out=True)
            if on_timeout == "cancel":
                try:
                    outcome.run = await client.cancel_run(run_id)
                except DbtCloudError as cancel_error:
                    log.error("Deadline passed, and cancelling dbt Cloud run %s failed: %s", run_id, cancel_error)
            return outcome
        except DbtCloudError as exc:
            return WaitOutcome(run_id, None, error=exc)
        outcome = WaitOutcome(run_id, run, detected_at=time.time())
        if fetch_results and run.status in (RunStatus.SUCCESS, RunStatus.ERROR) and run.artifacts_saved is not False:
            try:
                raw = await client.get_run_artifact(run_id, "run_results.json")
                outcome.models = parse_run_results(json.loads(raw))
            except (DbtCloudError, ValueError) as exc:
                log.warning("No per-model results for dbt Cloud run %s: %s", run_id, exc)
        return outcome

    return list(await asyncio.gather(*(one(run_id) for run_id in run_ids)))
