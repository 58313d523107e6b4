"""The emulator's model of dbt Cloud: jobs, runs moving through their statuses on the wall clock, faults.

Pure logic, no sockets: :class:`Emulator.handle` takes a request and returns what to answer (or to drop
the connection); :mod:`dbtcloud_api.emulator.server` puts it on loopback HTTP.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
import re
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, unquote, urlsplit

from dbt_cloud_gate.dbtcloud_api.emulator.faults import fires, spent
from dbt_cloud_gate.dbtcloud_api.emulator.webhooks import WebhookHub
from dbt_cloud_gate.dbtcloud_api.models import BUILDING_COMMANDS, RunStatus, RunStep, format_timestamp
from dbt_cloud_gate.dbtcloud_api.openapi import SpecValidator

Outcome = Literal["success", "error", "cancelled"]
FaultKind = Literal["429", "5xx", "status", "drop", "slow", "not_found_fresh", "lost_response"]

MAX_CAUSE = 255
_ID_BASES = itertools.count(0, 100_000)
SETUP_STEPS = ("Clone git repository", "Create profile from connection", "Invoke dbt with `dbt deps`")
_OUTCOME_STATUS = {"success": RunStatus.SUCCESS, "error": RunStatus.ERROR, "cancelled": RunStatus.CANCELLED}


def dbt_command(command: str) -> str | None:
    """The dbt sub-command of a step command (``dbt run --select x`` → ``run``), as dbt Cloud's step name says."""
    return RunStep(name=f"Invoke dbt with `{command}`").dbt_command


@dataclass
class StepSpec:
    """One command step of a job and the ``run_results.json`` it leaves (served with ``?step=<index>``).

    ``models``: the models the step builds; default: the job's ``models`` for a building command (``dbt run``,
    ``build``, ``seed``, ``snapshot``...), none otherwise. ``tests``: the tests it runs (after its models);
    default for ``dbt test``: ``not_null_<model>_id`` for each of the job's models, none otherwise.
    ``artifacts``: whether the step leaves a ``run_results.json`` at all; default: every dbt command but ``deps``.
    """

    command: str
    models: list[str] | None = None
    tests: list[str] | None = None
    artifacts: bool | None = None

    @classmethod
    def coerce(cls, value: StepSpec | str | dict[str, Any]) -> StepSpec:
        """A step from a ``StepSpec``, a bare command, or a jobs-file entry (unknown keys are an error)."""
        if isinstance(value, StepSpec):
            return value
        if isinstance(value, str):
            return cls(command=value)
        unknown = set(value) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown step setting(s) {sorted(unknown)}; known: {sorted(cls.__dataclass_fields__)}")
        return cls(**value)

    def built_models(self, job_models: list[str]) -> list[str]:
        """The models this step builds."""
        if self.models is not None:
            return list(self.models)
        return list(job_models) if dbt_command(self.command) in BUILDING_COMMANDS else []

    def run_tests(self, job_models: list[str]) -> list[str]:
        """The tests this step runs."""
        if self.tests is not None:
            return list(self.tests)
        if dbt_command(self.command) == "test":
            return [f"not_null_{model.split('.')[0]}_id" for model in job_models]
        return []

    def leaves_artifacts(self) -> bool:
        """Whether the step leaves a ``run_results.json``."""
        if self.artifacts is not None:
            return self.artifacts
        return dbt_command(self.command) not in (None, "deps")


@dataclass
class JobSpec:
    """A job the emulator knows, with how its runs behave.

    ``steps`` describes each command step (see :class:`StepSpec`); when given, ``execute_steps`` is their commands.
    Without it, each of ``execute_steps`` builds the job's ``models`` if its command builds anything.
    """

    id: int
    name: str = "dbt build"
    project_id: int = 1
    environment_id: int = 1
    description: str = ""
    execute_steps: list[str] = field(default_factory=lambda: ["dbt build"])
    schedule_enabled: bool = False
    cron: str = "0 6 * * *"
    queue_seconds: float = 0.2
    start_seconds: float = 0.2
    run_seconds: float = 1.0
    outcome: Outcome = "success"
    # Outcomes of successive runs (cycled); overrides ``outcome`` when set.
    outcomes: list[Outcome] | None = None
    retry_outcome: Outcome = "success"
    models: list[str] = field(default_factory=lambda: ["stg_orders", "orders"])
    failing_model: str | None = None
    # Durations (seconds, start to finish) of past successful runs created at start-up.
    history_seconds: list[float] = field(default_factory=list)
    steps: list[StepSpec] | None = None
    # A server fault: a successful run is served with ``finished_at`` null (no watermark).
    finished_at_missing: bool = False

    def __post_init__(self) -> None:
        if self.steps is not None:
            self.steps = [StepSpec.coerce(step) for step in self.steps]
            self.execute_steps = [step.command for step in self.steps]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobSpec:
        """Build from a jobs-file entry; unknown keys are an error, not silently ignored."""
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown job setting(s) {sorted(unknown)}; known: {sorted(known)}")
        return cls(**data)


@dataclass
class Fault:
    """A fault to inject into matching requests.

    ``kind``: ``429`` (with ``retry_after`` as the header value, or none), ``5xx`` (``status`` with an HTML body),
    ``status`` (any ``status`` code in the dbt Cloud error envelope, e.g. a 403 after a token was revoked),
    ``drop`` (close the connection, request not processed), ``slow`` (answer after ``delay`` seconds),
    ``not_found_fresh`` (404 for a run younger than ``fresh_seconds``), ``lost_response`` (process the request,
    then drop the connection: a trigger whose run is created but whose answer is lost).
    ``skip`` lets the first matching requests through untouched (fault the second search, not the first).
    """

    kind: FaultKind
    method: str | None = None
    path: str | None = None
    job_id: int | None = None
    times: int | None = None
    probability: float = 1.0
    retry_after: str | None = None
    status: int = 503
    delay: float = 0.0
    fresh_seconds: float = 1.0
    skip: int = 0
    hits: int = 0
    skipped: int = 0

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Fault:
        """Build from JSON (the admin endpoint and the CLI)."""
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown fault setting(s) {sorted(unknown)}")
        return cls(**data)


@dataclass
class RecordedRequest:
    """A request the emulator received (the token is never kept, only the auth scheme)."""

    method: str
    path: str
    query: dict[str, list[str]]
    body: Any
    auth_scheme: str | None
    at: float
    status: int | None = None
    fault: str | None = None
    spec_problems: list[str] = field(default_factory=list)


@dataclass
class Reply:
    """What to send back: a response, a response after a delay, or a dropped connection."""

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    drop: bool = False


@dataclass
class _Run:
    id: int
    job_id: int
    trigger_id: int
    cause: str
    overrides: dict[str, Any]
    created: float
    outcome: Outcome
    steps: list[str]
    queue_s: float
    start_s: float
    run_s: float
    dequeued: float = 0.0
    started: float = 0.0
    finished: float = 0.0
    cancelled_at: float | None = None
    retry_of: int | None = None

    def status_at(self, now: float) -> RunStatus:
        if self.cancelled_at is not None and now >= self.cancelled_at:
            return RunStatus.CANCELLED
        if now >= self.finished:
            return _OUTCOME_STATUS[self.outcome]
        if now >= self.started:
            return RunStatus.RUNNING
        if now >= self.dequeued:
            return RunStatus.STARTING
        return RunStatus.QUEUED

    def end(self) -> float:
        return self.cancelled_at if self.cancelled_at is not None else self.finished


def _ts(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return format_timestamp(datetime.fromtimestamp(epoch, tz=UTC))


def _hms(seconds: float) -> str:
    total = max(0, int(seconds))
    return f"{total // 3600:02d}:{total % 3600 // 60:02d}:{total % 60:02d}"


def _envelope(data: Any, code: int = 200, message: str = "Success!", extra: dict[str, Any] | None = None) -> bytes:
    body: dict[str, Any] = {
        "status": {"code": code, "is_success": 200 <= code < 300, "user_message": message, "developer_message": ""},
        "data": data,
    }
    if extra is not None:
        body["extra"] = extra
    return json.dumps(body).encode()


def _error(code: int, message: str, data: Any = None) -> Reply:
    return Reply(code, _envelope(data, code, message), {"Content-Type": "application/json"})


_V3_MESSAGES = {
    400: "The request was invalid. Please double check the provided data and try again.",
    404: "Requested resource not found.",
    405: "Method not allowed.",
}

_HTML_502 = (
    "<html><head><title>{code} Bad Gateway</title></head><body><center><h1>{code} Bad Gateway</h1></center>"
    "<hr><center>nginx</center></body></html>"
)


class Emulator:
    """A stateful stand-in for one dbt Cloud account's v2 API."""

    def __init__(
        self,
        jobs: list[JobSpec] | None = None,
        *,
        account_id: int = 1,
        token: str = "emulator-token",
        validator: SpecValidator | None = None,
        rate_limit_per_minute: int | None = None,
        seed: int = 0,
        clock: Any = time.time,
        first_run_id: int | None = None,
    ) -> None:
        self.account_id = account_id
        self.token = token
        self.validator = validator
        self.rate_limit_per_minute = rate_limit_per_minute
        self.clock = clock
        self.base_url = "http://127.0.0.1"
        self._lock = threading.RLock()
        self._rng = random.Random(seed)
        self.jobs: dict[int, JobSpec] = {}
        self.job_objects: dict[int, dict[str, Any]] = {}
        self.runs: dict[int, _Run] = {}
        self._by_job: dict[int, list[_Run]] = {}
        self.requests: list[RecordedRequest] = []
        self.faults: list[Fault] = []
        self.trigger_count: dict[int, int] = {}
        # Each emulator in a process numbers its runs from its own base, so that IDs never repeat across tests.
        base = next(_ID_BASES) if first_run_id is None else first_run_id - 70_000_001
        self._next_run_id = 70_000_001 + base
        self._next_trigger_id = 90_000_001 + base
        self._job_runs: dict[int, int] = {}
        self._window: deque[float] = deque()
        # v3 webhook subscriptions and the deliveries they get (dbtcloud_api.emulator.webhooks).
        self.webhooks = WebhookHub.for_emulator(self)
        for spec in jobs or []:
            self.add_job(spec)

    # -- set-up -------------------------------------------------------------------------------------

    def add_job(self, spec: JobSpec) -> None:
        """Register a job (and create its past successful runs from ``history_seconds``)."""
        with self._lock:
            self.jobs[spec.id] = spec
            now = self.clock()
            self.job_objects[spec.id] = {
                "id": spec.id,
                "account_id": self.account_id,
                "project_id": spec.project_id,
                "environment_id": spec.environment_id,
                "name": spec.name,
                "description": spec.description,
                "dbt_version": None,
                "execute_steps": list(spec.execute_steps),
                "state": 1,
                "deferring_job_definition_id": None,
                "lifecycle_webhooks": False,
                "lifecycle_webhooks_url": None,
                "generate_docs": False,
                "run_generate_sources": False,
                "generate_sources": False,
                "run_compare_changes": False,
                "run_lint": False,
                "errors_on_lint_failure": True,
                "job_type": "scheduled",
                "triggers": {
                    "github_webhook": False,
                    "git_provider_webhook": False,
                    "custom_branch_only": True,
                    "schedule": spec.schedule_enabled,
                    "on_merge": False,
                },
                "settings": {"threads": 4, "target_name": "default"},
                "execution": {"timeout_seconds": 0},
                "schedule": {
                    "cron": spec.cron,
                    "date": {"type": "custom_cron", "cron": spec.cron},
                    "time": {"type": "every_hour", "interval": 1},
                },
                "is_deferrable": False,
                "created_at": datetime.fromtimestamp(now, tz=UTC).isoformat(),
                "updated_at": datetime.fromtimestamp(now, tz=UTC).isoformat(),
                "cron_humanized": f"Custom cron: {spec.cron}",
                "next_run": None,
                "next_run_humanized": None,
            }
            start = now - 3600.0 * (len(spec.history_seconds) + 1)
            for index, seconds in enumerate(spec.history_seconds):
                created = start + 3600.0 * index
                run = self._new_run(spec, f"History run {index + 1}", {}, created, "success")
                run.dequeued, run.started = created + 1.0, created + 2.0
                run.finished = run.started + seconds

    @classmethod
    def from_jobs_file(cls, path: str | Path, **kwargs: Any) -> Emulator:
        """An emulator with the jobs of a JSON file: ``{"jobs": [{...JobSpec fields...}]}`` or a list."""
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        entries = data.get("jobs", []) if isinstance(data, dict) else data
        return cls([JobSpec.from_dict(entry) for entry in entries], **kwargs)

    def add_fault(self, fault: Fault) -> Fault:
        """Inject ``fault`` into the requests it matches, from now on."""
        with self._lock:
            self.faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        """Remove every fault."""
        with self._lock:
            self.faults.clear()

    def set_job(self, job_id: int, **changes: Any) -> None:
        """Change how a job's future runs behave (``outcome``, ``run_seconds``...)."""
        with self._lock:
            spec = self.jobs[job_id]
            for name, value in changes.items():
                if not hasattr(spec, name):
                    raise ValueError(f"unknown job setting {name!r}")
                setattr(spec, name, value)

    def runs_of(self, job_id: int) -> list[_Run]:
        """Runs of one job, oldest first (including the history runs)."""
        with self._lock:
            return list(self._by_job.get(job_id, []))

    def cancel(self, run_id: int) -> None:
        """Cancel a run from outside (as a user would in the dbt Cloud UI)."""
        with self._lock:
            self._cancel(self.runs[run_id], self.clock())

    # -- run life cycle ----------------------------------------------------------------------------

    def _new_run(self, spec: JobSpec, cause: str, overrides: dict[str, Any], now: float, outcome: Outcome) -> _Run:
        steps = list(overrides.get("steps_override") or self.job_objects[spec.id]["execute_steps"])
        run = _Run(
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
        )
        self._next_run_id += 1
        self._next_trigger_id += 1
        self.runs[run.id] = run
        self._by_job.setdefault(spec.id, []).append(run)
        self._replan(spec.id, now)
        self.webhooks.track(run)
        return run

    def _next_outcome(self, spec: JobSpec) -> Outcome:
        count = self._job_runs.get(spec.id, 0)
        self._job_runs[spec.id] = count + 1
        if spec.outcomes:
            return spec.outcomes[count % len(spec.outcomes)]
        return spec.outcome

    def _replan(self, job_id: int, now: float) -> None:
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
        self.webhooks.wake()

    def _cancel(self, run: _Run, now: float) -> None:
        if run.status_at(now).is_terminal:
            return
        run.cancelled_at = now
        self._replan(run.job_id, now)

    # -- JSON views --------------------------------------------------------------------------------

    def _run_steps(self, run: _Run, now: float) -> list[dict[str, Any]]:
        status = run.status_at(now)
        if now < run.started and status != RunStatus.CANCELLED:
            return []
        names = list(SETUP_STEPS) + [f"Invoke dbt with `{step}`" for step in run.steps]
        span = max(run.finished - run.started, 1e-6)
        each = span / len(names)
        end_of_run = run.end()
        steps: list[dict[str, Any]] = []
        for index, name in enumerate(names, start=1):
            begin = run.started + each * (index - 1)
            finish = begin + each
            if begin > min(now, end_of_run) or (run.cancelled_at is not None and begin >= run.cancelled_at):
                break
            last = index == len(names)
            if run.cancelled_at is not None and run.cancelled_at < finish and now >= run.cancelled_at:
                step_status, finished_at = RunStatus.CANCELLED, run.cancelled_at
            elif now >= finish:
                failed = last and run.outcome == "error"
                step_status, finished_at = (RunStatus.ERROR if failed else RunStatus.SUCCESS), finish
            else:
                step_status, finished_at = RunStatus.RUNNING, None
            steps.append(
                {
                    "id": run.id * 100 + index,
                    "run_id": run.id,
                    "account_id": self.account_id,
                    "index": index,
                    "status": int(step_status),
                    "name": name,
                    "logs": self._step_logs(run, index, name, step_status),
                    "debug_logs": "",
                    "log_path": None,
                    "debug_log_path": None,
                    "status_humanized": step_status.label,
                    "started_at": _ts(begin),
                    "finished_at": _ts(finished_at),
                    "duration": _hms((finished_at or now) - begin),
                }
            )
        return steps

    def _failing_model(self, run: _Run) -> str:
        spec = self.jobs[run.job_id]
        return spec.failing_model or spec.models[-1]

    def _step_specs(self, run: _Run) -> list[StepSpec]:
        """The command steps of a run: the job's ``steps`` when the run kept the job's commands, else defaults."""
        spec = self.jobs[run.job_id]
        if spec.steps is not None and [step.command for step in spec.steps] == run.steps:
            return list(spec.steps)
        return [StepSpec(command) for command in run.steps]

    def _step_at(self, run: _Run, index: int) -> StepSpec | None:
        """The command step at a run-step index (1-based over every step, set-up steps included), if any."""
        position = index - len(SETUP_STEPS) - 1
        specs = self._step_specs(run)
        return specs[position] if 0 <= position < len(specs) else None

    def _step_nodes(self, run: _Run, step: StepSpec, last: bool) -> list[tuple[str, str, str | None]]:
        """(unique_id, status, message) of each node in the step's run_results.json."""
        spec = self.jobs[run.job_id]
        bad = self._failing_model(run) if last and run.outcome == "error" else None
        nodes: list[tuple[str, str, str | None]] = []
        state = "success"
        for model in step.built_models(spec.models):
            if model == bad:
                state = "error"
                message: str | None = (
                    f'Database Error in model {model} (models/{model}.sql)\n  column "amount" does not exist'
                )
            elif state in ("error", "skipped"):
                state, message = "skipped", "SKIP"
            else:
                message = "SELECT 100"
            nodes.append((f"model.analytics.{model}", state, message))
        for test in step.run_tests(spec.models):
            failed = bad is not None and bad in test
            digest = hashlib.sha256(test.encode()).hexdigest()[:10]
            outcome = ("fail", "Got 3 results") if failed else ("pass", None)
            nodes.append((f"test.analytics.{test}.{digest}", *outcome))
        return nodes

    def _step_logs(self, run: _Run, index: int, name: str, status: RunStatus) -> str:
        step = self._step_at(run, index)
        if step is None or not step.leaves_artifacts():
            return f"{name}\nDone.\n"
        nodes = self._step_nodes(run, step, last=status == RunStatus.ERROR)
        lines = ["Running with dbt=1.8.0", f"Found {len(nodes)} nodes"]
        if status not in (RunStatus.SUCCESS, RunStatus.ERROR):
            return "\n".join(lines) + "\n"
        counts = {"pass": 0, "error": 0, "skip": 0}
        for unique_id, state, _message in nodes:
            kind, _, rest = unique_id.partition(".")
            node = rest.split(".", 1)[1]
            if state in ("success", "pass"):
                counts["pass"] += 1
                done = f"PASS {node.rsplit('.', 1)[0]}"
                lines.append(f"OK created sql table model analytics.{node}" if kind == "model" else done)
            elif state == "skipped":
                counts["skip"] += 1
            else:
                counts["error"] += 1
                if kind == "model":
                    lines += [
                        f"ERROR creating sql table model analytics.{node}",
                        f"Database Error in model {node} (models/{node}.sql)",
                        '  column "amount" does not exist',
                    ]
                else:
                    lines.append(f"FAIL 3 {node.rsplit('.', 1)[0]}")
        lines.append(
            f"Done. PASS={counts['pass']} WARN=0 ERROR={counts['error']} SKIP={counts['skip']} TOTAL={len(nodes)}"
        )
        return "\n".join(lines) + "\n"

    def run_json(self, run: _Run, now: float, includes: set[str]) -> dict[str, Any]:
        """The run as dbt Cloud serializes it, at time ``now``."""
        status = run.status_at(now)
        terminal = status.is_terminal
        end = run.end() if terminal else None
        cancelled_queued = (
            status == RunStatus.CANCELLED and run.cancelled_at is not None and run.cancelled_at < run.dequeued
        )
        dequeued = run.dequeued if now >= run.dequeued and not cancelled_queued else None
        started = run.started if now >= run.started and (end is None or run.started < end) else None
        spec = self.jobs[run.job_id]
        reference = end if end is not None else now
        data: dict[str, Any] = {
            "id": run.id,
            "trigger_id": run.trigger_id,
            "account_id": self.account_id,
            "environment_id": spec.environment_id,
            "project_id": spec.project_id,
            "job_definition_id": run.job_id,
            "status": int(status),
            "dbt_version": "1.8.0",
            "git_branch": run.overrides.get("git_branch") or "main",
            "git_sha": run.overrides.get("git_sha") or "981c5cf1ba299e942c6c277c38c8dec9b0738dd0",
            "status_message": "Cancelled by user."
            if status == RunStatus.CANCELLED
            else (f"Database Error in model {self._failing_model(run)}" if status == RunStatus.ERROR else None),
            "owner_thread_id": None,
            "executed_by_thread_id": f"dbt-run-{run.id}-emu" if started else None,
            "deferring_run_id": None,
            "artifacts_saved": status in (RunStatus.SUCCESS, RunStatus.ERROR),
            "artifact_s3_path": f"prod/runs/{run.id}/artifacts/target"
            if status in (RunStatus.SUCCESS, RunStatus.ERROR)
            else None,
            "has_docs_generated": False,
            "has_sources_generated": False,
            "notifications_sent": terminal,
            "blocked_by": [],
            "scribe_enabled": True,
            "created_at": _ts(run.created),
            "updated_at": _ts(min(now, end) if end is not None else now),
            "dequeued_at": _ts(dequeued),
            "started_at": _ts(started),
            "finished_at": _ts(end),
            "last_checked_at": None,
            "last_heartbeat_at": None,
            "should_start_at": None,
            "trigger": None,
            "job": None,
            "environment": None,
            "run_steps": [],
            "status_humanized": status.label,
            "in_progress": not terminal,
            "is_complete": terminal,
            "is_success": status == RunStatus.SUCCESS,
            "is_error": status == RunStatus.ERROR,
            "is_cancelled": status == RunStatus.CANCELLED,
            "href": f"{self.base_url}/deploy/{self.account_id}/projects/{spec.project_id}/runs/{run.id}/",
            "duration": _hms(reference - run.created),
            "queued_duration": _hms((dequeued or reference) - run.created),
            "run_duration": _hms(reference - started if started else 0),
            "duration_humanized": f"{int(reference - run.created)} seconds",
            "queued_duration_humanized": f"{int((dequeued or reference) - run.created)} seconds",
            "run_duration_humanized": f"{int(reference - started) if started else 0} seconds",
            "created_at_humanized": "just now",
            "finished_at_humanized": "just now" if terminal else "0 minutes from now",
            "job_id": run.job_id,
            "retried_from_run_id": run.retry_of,
        }
        if status == RunStatus.SUCCESS and spec.finished_at_missing:
            data["finished_at"] = None
        if "trigger" in includes:
            trigger = {"id": run.trigger_id, "cause": run.cause, "job_definition_id": run.job_id}
            trigger.update({key: value for key, value in run.overrides.items()})
            trigger["created_at"] = _ts(run.created)
            data["trigger"] = trigger
        if "job" in includes:
            data["job"] = self.job_objects[run.job_id]
        if "run_steps" in includes:
            data["run_steps"] = self._run_steps(run, now)
        return data

    def run_results(self, run: _Run, step: int | None = None) -> dict[str, Any] | None:
        """The ``run_results.json`` a finished run's step leaves (default: the last step, as dbt Cloud serves it);
        ``None`` for a step that leaves none (set-up steps, ``dbt deps``)."""
        total = len(SETUP_STEPS) + len(run.steps)
        index = total if step is None else step
        command = self._step_at(run, index)
        if command is None or not command.leaves_artifacts():
            return None
        nodes = self._step_nodes(run, command, last=index == total)
        each = round(run.run_s / max(len(nodes), 1), 3)
        return {
            "metadata": {
                "dbt_schema_version": "https://schemas.getdbt.com/dbt/run-results/v5.json",
                "dbt_version": "1.8.0",
                "generated_at": datetime.fromtimestamp(run.finished, tz=UTC).isoformat(),
                "invocation_id": f"emulated-{run.id}-{index}",
                "env": {},
            },
            "results": [
                {
                    "status": state,
                    "timing": [],
                    "thread_id": "Thread-1",
                    "execution_time": each,
                    "adapter_response": {},
                    "message": message,
                    "failures": 3 if state == "fail" else None,
                    "unique_id": unique_id,
                }
                for unique_id, state, message in nodes
            ],
            "elapsed_time": run.run_s,
            "args": {"which": dbt_command(command.command) or "build"},
        }

    # -- request handling ----------------------------------------------------------------------------

    def handle(self, method: str, target: str, headers: dict[str, str], body: bytes) -> Reply:
        """Answer one HTTP request (thread-safe)."""
        with self._lock:
            return self._handle(method.upper(), target, {k.lower(): v for k, v in headers.items()}, body)

    def _handle(self, method: str, target: str, headers: dict[str, str], raw_body: bytes) -> Reply:
        now = self.clock()
        split = urlsplit(target)
        path = unquote(split.path)
        query = parse_qs(split.query, keep_blank_values=True)
        auth = headers.get("authorization", "")
        scheme, _, presented = auth.partition(" ")
        body: Any = None
        body_error: str | None = None
        if raw_body:
            try:
                body = json.loads(raw_body)
            except ValueError:
                body_error = "The request body is not valid JSON."
        record = RecordedRequest(method, path, query, body, scheme or None, now)
        self.requests.append(record)

        slow_delay = 0.0
        lose_response = False
        faulted = self._apply_faults(record, method, path, now)
        if faulted is not None:
            if record.fault == "drop":
                return faulted
            if record.fault == "lost_response":
                lose_response = True
            elif record.fault == "slow":
                slow_delay = faulted.delay
            else:
                record.status = faulted.status
                return faulted

        if self.rate_limit_per_minute is not None:
            while self._window and self._window[0] <= now - 60.0:
                self._window.popleft()
            if len(self._window) >= self.rate_limit_per_minute:
                wait = max(1, int(self._window[0] + 60.0 - now + 0.999))
                record.status = 429
                return Reply(
                    429,
                    _envelope(None, 429, "Too many requests."),
                    {"Content-Type": "application/json", "Retry-After": str(wait)},
                )
            self._window.append(now)

        result = self._route(record, method, path, query, headers, scheme, presented, body, body_error, raw_body, now)
        record.status = result.status
        if lose_response:
            return Reply(drop=True)
        result.delay = slow_delay
        return result

    def _apply_faults(self, record: RecordedRequest, method: str, path: str, now: float) -> Reply | None:
        job_id = self._job_of_path(path)
        for fault in self.faults:
            if spent(fault):
                continue
            if fault.method and fault.method.upper() != method:
                continue
            if fault.path and not re.search(fault.path, path):
                continue
            if fault.job_id is not None and fault.job_id != job_id:
                continue
            if fault.kind == "not_found_fresh":
                run = self._run_of_path(path)
                if run is None or now - run.created >= fault.fresh_seconds or not re.search(r"/runs/\d+/$", path):
                    continue
            if not fires(fault, self._rng):
                continue
            record.fault = fault.kind
            if fault.kind == "429":
                headers = {"Content-Type": "application/json"}
                if fault.retry_after is not None:
                    headers["Retry-After"] = fault.retry_after
                return Reply(429, _envelope(None, 429, "Too many requests."), headers)
            if fault.kind == "5xx":
                html = _HTML_502.format(code=fault.status).encode()
                return Reply(fault.status, html, {"Content-Type": "text/html"})
            if fault.kind == "not_found_fresh":
                return _error(404, "Requested resource not found.")
            if fault.kind == "status":
                return _error(fault.status, f"Injected error {fault.status}.")
            if fault.kind == "slow":
                return Reply(delay=fault.delay)
            return Reply(drop=True)  # drop, lost_response
        return None

    def _job_of_path(self, path: str) -> int | None:
        found = re.search(r"/jobs/(\d+)/", path)
        if found:
            return int(found.group(1))
        run = self._run_of_path(path)
        return run.job_id if run else None

    def _run_of_path(self, path: str) -> _Run | None:
        found = re.search(r"/runs/(\d+)/", path)
        return self.runs.get(int(found.group(1))) if found else None

    def _route(
        self,
        record: RecordedRequest,
        method: str,
        path: str,
        query: dict[str, list[str]],
        headers: dict[str, str],
        scheme: str,
        presented: str,
        body: Any,
        body_error: str | None,
        raw_body: bytes,
        now: float,
    ) -> Reply:
        if path.startswith("/_emulator/"):
            return self._admin(method, path, body)
        if scheme.lower() not in ("token", "bearer") or presented.strip() != self.token:
            return _error(401, "Invalid token.")
        if body_error:
            return _error(400, body_error)
        validator = self.webhooks.validator if path.startswith("/api/v3/") else self.validator
        if validator is not None:
            problems = validator.validate(method, path, query, body, has_body=bool(raw_body))
            record.spec_problems = problems
            if problems:
                if any(p.startswith("no operation") for p in problems):
                    return _error(404, "Requested resource not found.")
                if any(p.startswith("method ") for p in problems):
                    return _error(405, f'Method "{method}" not allowed.')
                return _error(
                    400,
                    "The request was invalid. Please double check the provided data and try again.",
                    {"__all__": problems},
                )
        version = "v3" if path.startswith("/api/v3/") else "v2"
        prefix = f"/api/{version}/accounts/{self.account_id}/"
        if not path.startswith(prefix):
            if re.match(rf"^/api/{version}/accounts/\d+/", path):
                return _error(403, "You do not have permission to access this account.")
            return _error(404, "Requested resource not found.")
        rest = path[len(prefix) :]
        if version == "v3":
            code, data, extra = self.webhooks.handle(method, rest, query, body, now)
            message = _V3_MESSAGES.get(code, "Success!" if code < 300 else "The request failed.")
            return Reply(code, _envelope(data, code, message, extra), {"Content-Type": "application/json"})
        includes = set(
            ",".join(query.get("include_related", [])).replace("[", "").replace("]", "").replace('"', "").split(",")
        )
        routes: list[tuple[str, str]] = [
            ("POST", r"jobs/(\d+)/run/"),
            ("GET", r"jobs/(\d+)/"),
            ("POST", r"jobs/(\d+)/"),
            ("GET", r"runs/"),
            ("GET", r"runs/(\d+)/"),
            ("POST", r"runs/(\d+)/cancel/"),
            ("POST", r"runs/(\d+)/retry/"),
            ("GET", r"runs/(\d+)/artifacts/"),
            ("GET", r"runs/(\d+)/artifacts/(.+)"),
        ]
        for route_method, pattern in routes:
            found = re.fullmatch(pattern, rest)
            if found and route_method == method:
                return self._dispatch(pattern, method, found.groups(), query, body, includes, now)
        return _error(404, "Requested resource not found.")

    def _dispatch(
        self,
        pattern: str,
        method: str,
        groups: tuple[str, ...],
        query: dict[str, list[str]],
        body: Any,
        includes: set[str],
        now: float,
    ) -> Reply:
        ident = int(groups[0]) if groups else 0
        if pattern == r"runs/":
            return self._list_runs(query, includes, now)
        if pattern.startswith("jobs/"):
            spec = self.jobs.get(ident)
            if spec is None:
                return _error(404, "Requested resource not found.")
            if pattern == r"jobs/(\d+)/run/":
                return self._trigger(spec, body, now)
            if method == "GET":
                return self._ok(self.job_objects[ident])
            return self._update_job(ident, body, now)
        run = self.runs.get(ident)
        if run is None:
            return _error(404, "Requested resource not found.")
        if pattern == r"runs/(\d+)/":
            return self._ok(self.run_json(run, now, includes))
        if pattern == r"runs/(\d+)/cancel/":
            self._cancel(run, now)
            return self._ok(self.run_json(run, now, includes))
        if pattern == r"runs/(\d+)/retry/":
            if run.status_at(now) != RunStatus.ERROR:
                return _error(400, f"Run {run.id} did not fail, so it cannot be retried from its point of failure.")
            spec = self.jobs[run.job_id]
            self.trigger_count[spec.id] = self.trigger_count.get(spec.id, 0) + 1
            retry = self._new_run(spec, f"Retry of run {run.id}", dict(run.overrides), now, spec.retry_outcome)
            retry.retry_of = run.id
            return self._ok(self.run_json(retry, now, includes))
        status = run.status_at(now)
        if status not in (RunStatus.SUCCESS, RunStatus.ERROR):
            return _error(404, f"No artifacts for run {run.id}: it has not completed, or was cancelled.")
        steps_asked = query.get("step") or []
        try:
            step = int(steps_asked[0]) if steps_asked else None
        except ValueError:
            return _error(400, "The request was invalid.", {"step": ["A valid integer is required."]})
        total_steps = len(SETUP_STEPS) + len(run.steps)
        if step is not None and not 1 <= step <= total_steps:
            return _error(404, f"Run {run.id} has no step {step}.")
        if pattern == r"runs/(\d+)/artifacts/":
            return self._ok(["manifest.json", "run_results.json"])
        name = groups[1]
        if name == "run_results.json":
            document = self.run_results(run, step)
            if document is None:
                return _error(404, f"Artifact {name} not found for run {run.id} step {step or total_steps}.")
        elif name == "manifest.json":
            spec = self.jobs[run.job_id]
            document = {"nodes": {f"model.analytics.{m}": {"name": m, "resource_type": "model"} for m in spec.models}}
        else:
            return _error(404, f"Artifact {name} not found for run {run.id}.")
        return Reply(200, json.dumps(document).encode(), {"Content-Type": "application/json"})

    def _ok(self, data: Any, extra: dict[str, Any] | None = None) -> Reply:
        return Reply(200, _envelope(data, extra=extra), {"Content-Type": "application/json"})

    def _trigger(self, spec: JobSpec, body: Any, now: float) -> Reply:
        if not isinstance(body, dict) or not str(body.get("cause") or "").strip():
            return _error(400, "The request was invalid.", {"cause": ["This field is required."]})
        cause = str(body["cause"])
        if len(cause) > MAX_CAUSE:
            return _error(
                400,
                "The request was invalid. Please double check the provided data and try again.",
                {"cause": [f"Ensure this field has no more than {MAX_CAUSE} characters."]},
            )
        overrides = {key: value for key, value in body.items() if key != "cause"}
        self.trigger_count[spec.id] = self.trigger_count.get(spec.id, 0) + 1
        run = self._new_run(spec, cause, overrides, now, self._next_outcome(spec))
        return self._ok(self.run_json(run, now, set()))

    def _update_job(self, job_id: int, body: Any, now: float) -> Reply:
        if not isinstance(body, dict):
            return _error(400, "The request was invalid.")
        if body.get("id") not in (None, job_id):
            return _error(400, "The job id in the body does not match the path.")
        job = self.job_objects[job_id]
        read_only = {"id", "account_id", "created_at", "updated_at", "cron_humanized", "next_run", "next_run_humanized"}
        for key, value in body.items():
            if key not in read_only:
                job[key] = value
        job["updated_at"] = datetime.fromtimestamp(now, tz=UTC).isoformat()
        spec = self.jobs[job_id]
        spec.schedule_enabled = bool(job["triggers"].get("schedule"))
        return self._ok(job)

    def _list_runs(self, query: dict[str, list[str]], includes: set[str], now: float) -> Reply:
        def one(name: str) -> str | None:
            values = query.get(name)
            return values[-1] if values else None

        limit = int(one("limit") or 100)
        offset = int(one("offset") or 0)
        if limit > 100 or limit < 1:
            return _error(
                400, "The request was invalid.", {"limit": ["Ensure this value is less than or equal to 100."]}
            )
        job = one("job_definition_id")
        runs = list(self.runs.values()) if job is None else list(self._by_job.get(int(job), []))
        status = one("status")
        if status is not None:
            runs = [run for run in runs if int(run.status_at(now)) == int(status)]
        status_in = one("status__in")
        if status_in is not None:
            wanted = {int(v) for v in status_in.strip("[]").split(",") if v.strip()}
            runs = [run for run in runs if int(run.status_at(now)) in wanted]
        order = one("order_by") or "id"
        key_name = order.lstrip("-")
        keys = {
            "id": lambda r: r.id,
            "created_at": lambda r: r.created,
            "finished_at": lambda r: r.end() if r.status_at(now).is_terminal else float("inf"),
        }
        if key_name not in keys:
            return _error(400, "The request was invalid.", {"order_by": [f"Cannot order by {key_name}."]})
        runs.sort(key=keys[key_name], reverse=order.startswith("-"))
        page = runs[offset : offset + limit]
        extra = {
            "filters": {"account_id": self.account_id, "limit": limit, "offset": offset},
            "order_by": order,
            "pagination": {"count": len(page), "total_count": len(runs)},
        }
        return self._ok([self.run_json(run, now, includes) for run in page], extra)

    # -- admin endpoints (for tests and for processes that cannot hold the emulator object) ---------

    def _admin(self, method: str, path: str, body: Any) -> Reply:
        if path.startswith("/_emulator/webhooks/"):
            code, data = self.webhooks.admin(method, path[len("/_emulator/webhooks/") :], body)
            return Reply(code, _envelope(data, code), {"Content-Type": "application/json"})
        if method == "GET" and path == "/_emulator/requests":
            return self._ok([asdict(record) for record in self.requests])
        if method == "GET" and path == "/_emulator/runs":
            now = self.clock()
            return self._ok([self.run_json(run, now, {"trigger"}) for run in self.runs.values()])
        if method == "POST" and path == "/_emulator/faults":
            try:
                fault = self.add_fault(Fault.from_dict(body or {}))
            except (TypeError, ValueError) as exc:
                return _error(400, str(exc))
            return self._ok(asdict(fault))
        if method == "DELETE" and path == "/_emulator/faults":
            self.clear_faults()
            return self._ok([])
        if method == "POST" and path.startswith("/_emulator/jobs/"):
            try:
                self.set_job(int(path.rsplit("/", 1)[-1]), **(body or {}))
            except (KeyError, ValueError) as exc:
                return _error(400, str(exc))
            return self._ok(self.job_objects[int(path.rsplit("/", 1)[-1])])
        return _error(404, "Unknown emulator admin endpoint.")


def http_date(seconds_from_now: float) -> str:
    """An HTTP date ``seconds_from_now`` in the future (for a ``Retry-After`` header)."""
    return format_datetime(datetime.fromtimestamp(time.time() + seconds_from_now, tz=UTC), usegmt=True)
