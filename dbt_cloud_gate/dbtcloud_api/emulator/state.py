"""The emulator's in-memory account: jobs, runs moving through their statuses on the wall clock, and their plan.

Pure logic, no sockets and no HTTP: :class:`AccountState` creates, plans, cancels and retries runs.
:class:`~dbt_cloud_gate.dbtcloud_api.emulator.routes.Emulator` answers requests over it, and
:mod:`~dbt_cloud_gate.dbtcloud_api.emulator.server` puts that on loopback HTTP.

Who watches runs (the webhook hub) plugs in as a :class:`RunSink`, a protocol owned here: this module imports
nothing from :mod:`.webhooks`, so the two no longer import each other.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from dbt_cloud_gate.dbtcloud_api.emulator.plan import freshness_fails
from dbt_cloud_gate.dbtcloud_api.emulator.render import job_object
from dbt_cloud_gate.dbtcloud_api.emulator.specs import (
    MAX_CAUSE,
    SETUP_STEPS,
    Fault,
    FaultKind,
    JobSpec,
    Outcome,
    RecordedRequest,
    RunRecord,
    StepSpec,
    dbt_command,
)

__all__ = [
    "MAX_CAUSE",
    "SETUP_STEPS",
    "AccountState",
    "Fault",
    "FaultKind",
    "JobSpec",
    "Outcome",
    "RecordedRequest",
    "RunRecord",
    "RunSink",
    "StepSpec",
    "dbt_command",
]

# Each emulator in a process numbers its runs from its own base, so that IDs never repeat across tests.
_ID_BASES = itertools.count(0, 100_000)


class RunSink(Protocol):
    """What hears about runs: a new run to watch, and a re-planned schedule (both called with the state's lock)."""

    def track(self, run: RunRecord) -> None:
        """Watch a new run for its transitions."""

    def wake(self) -> None:
        """Runs were created or re-planned: look again now."""


class _NoSink:
    """The sink before one is plugged in: nobody listens."""

    def track(self, run: RunRecord) -> None:
        """Ignore the run."""

    def wake(self) -> None:
        """Nothing to wake."""


class AccountState:
    """One dbt Cloud account's jobs and runs, in memory; every method is thread-safe (one re-entrant lock).

    A job runs one run at a time: a new run queues behind the job's previous one, as in dbt Cloud.
    """

    def __init__(
        self,
        *,
        account_id: int = 1,
        clock: Callable[[], float] = time.time,
        first_run_id: int | None = None,
    ) -> None:
        self.account_id = account_id
        self.clock = clock
        self._lock = threading.RLock()
        self.jobs: dict[int, JobSpec] = {}
        self.job_objects: dict[int, dict[str, Any]] = {}
        self.runs: dict[int, RunRecord] = {}
        self._by_job: dict[int, list[RunRecord]] = {}
        self.trigger_count: dict[int, int] = {}
        base = next(_ID_BASES) if first_run_id is None else first_run_id - 70_000_001
        self._next_run_id = 70_000_001 + base
        self._next_trigger_id = 90_000_001 + base
        self._job_runs: dict[int, int] = {}
        self.sink: RunSink = _NoSink()

    @property
    def lock(self) -> threading.RLock:
        """The lock every change to the state holds (re-entrant)."""
        return self._lock

    # -- set-up -------------------------------------------------------------------------------------

    def add_job(self, spec: JobSpec) -> None:
        """Register a job (and create its past successful runs from ``history_seconds``)."""
        with self._lock:
            self.jobs[spec.id] = spec
            now = self.clock()
            self.job_objects[spec.id] = job_object(spec, self.account_id, now)
            start = now - 3600.0 * (len(spec.history_seconds) + 1)
            for index, seconds in enumerate(spec.history_seconds):
                created = start + 3600.0 * index
                run = self._new_run(spec, f"History run {index + 1}", {}, created, "success", history=True)
                run.dequeued, run.started = created + 1.0, created + 2.0
                run.finished = run.started + seconds

    @staticmethod
    def read_jobs_file(path: str | Path) -> list[JobSpec]:
        """The jobs of a JSON file: ``{"jobs": [{...JobSpec fields...}]}`` or a list."""
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        entries = data.get("jobs", []) if isinstance(data, dict) else data
        return [JobSpec.from_dict(entry) for entry in entries]

    def set_job(self, job_id: int, **changes: Any) -> None:
        """Change how a job's future runs behave (``outcome``, ``run_seconds``, ``stale_sources``...), checked as a
        new job would be; the job object shows the checkboxes (``generate_docs``, ``run_generate_sources``)."""
        with self._lock:
            spec = self.jobs[job_id]
            for name in changes:
                if name not in JobSpec.__dataclass_fields__:
                    raise ValueError(f"unknown job setting {name!r}")
            changed = dataclasses.replace(spec, **changes)  # ValueError when the result is not a valid job
            for name in JobSpec.__dataclass_fields__:
                setattr(spec, name, getattr(changed, name))
            job = self.job_objects[job_id]
            job["generate_docs"], job["run_generate_sources"] = spec.generate_docs, spec.run_generate_sources

    def runs_of(self, job_id: int) -> list[RunRecord]:
        """Runs of one job, oldest first (including the history runs)."""
        with self._lock:
            return list(self._by_job.get(job_id, []))

    def runs_for(self, job_id: int | None) -> list[RunRecord]:
        """Runs of one job, or of every job when ``job_id`` is ``None``, in ID order."""
        with self._lock:
            return list(self.runs.values()) if job_id is None else list(self._by_job.get(job_id, []))

    def cancel(self, run_id: int) -> None:
        """Cancel a run from outside (as a user would in the dbt Cloud UI)."""
        with self._lock:
            self.cancel_run(self.runs[run_id], self.clock())

    # -- run life cycle ----------------------------------------------------------------------------

    def trigger(self, spec: JobSpec, cause: str, overrides: dict[str, Any], now: float) -> RunRecord:
        """A triggered run of ``spec``: counted, with the job's next outcome."""
        with self._lock:
            self.trigger_count[spec.id] = self.trigger_count.get(spec.id, 0) + 1
            return self._new_run(spec, cause, overrides, now, self._next_outcome(spec))

    def retry(self, run: RunRecord, now: float) -> RunRecord:
        """A retry of a failed run from its point of failure: counted as a trigger, with the job's retry outcome."""
        with self._lock:
            spec = self.jobs[run.job_id]
            self.trigger_count[spec.id] = self.trigger_count.get(spec.id, 0) + 1
            retry = self._new_run(spec, f"Retry of run {run.id}", dict(run.overrides), now, spec.retry_outcome)
            retry.retry_of = run.id
            return retry

    def cancel_run(self, run: RunRecord, now: float) -> None:
        """Cancel ``run`` at ``now`` (nothing if it is over) and let the job's next run move up."""
        with self._lock:
            if run.status_at(now).is_terminal:
                return
            run.cancelled_at = now
            self.replan(run.job_id, now)

    def replan(self, job_id: int, now: float) -> None:
        """Lay out the job's runs one at a time: a run waits for the previous one to end (as in dbt Cloud)."""
        slot_free = 0.0
        for run in self._by_job.get(job_id, []):  # in creation order, which is ID order
            if run.cancelled_at is not None and run.cancelled_at <= now and run.dequeued > run.cancelled_at:
                continue  # cancelled while queued: never held the slot
            if run.dequeued and run.dequeued <= now:
                slot_free = max(slot_free, run.end())
                continue
            run.dequeued = max(run.created + run.queue_s, slot_free, now if run.dequeued else 0.0)
            run.started = run.dequeued + run.start_s
            run.finished = run.started + run.run_s
            slot_free = run.end() if run.cancelled_at is not None else run.finished
        self.sink.wake()

    def _new_run(
        self, spec: JobSpec, cause: str, overrides: dict[str, Any], now: float, outcome: Outcome, history: bool = False
    ) -> RunRecord:
        steps = list(overrides.get("steps_override") or self.job_objects[spec.id]["execute_steps"])
        docs = overrides.get("generate_docs_override")
        # Past runs (``history``) saw fresh sources; a listed `dbt source freshness` fails on a stale one.
        stale = {} if history else dict(spec.stale_sources)
        if outcome == "success" and freshness_fails(steps, stale):
            outcome = "error"
        run = RunRecord(
            id=self._next_run_id,
            job_id=spec.id,
            trigger_id=self._next_trigger_id,
            cause=cause,
            overrides=overrides,
            created=now,
            outcome=outcome,
            steps=steps,
            queue_s=spec.queue_seconds,
            start_s=spec.start_seconds,
            run_s=spec.run_seconds,
            freshness=spec.run_generate_sources,
            docs=spec.generate_docs if docs is None else bool(docs),
            stale_sources=stale,
        )
        self._next_run_id += 1
        self._next_trigger_id += 1
        self.runs[run.id] = run
        self._by_job.setdefault(spec.id, []).append(run)
        self.replan(spec.id, now)
        self.sink.track(run)
        return run

    def _next_outcome(self, spec: JobSpec) -> Outcome:
        count = self._job_runs.get(spec.id, 0)
        self._job_runs[spec.id] = count + 1
        if spec.outcomes:
            return spec.outcomes[count % len(spec.outcomes)]
        return spec.outcome
