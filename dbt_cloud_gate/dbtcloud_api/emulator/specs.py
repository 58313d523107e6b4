"""What the emulator is given and what it keeps: jobs and their steps, HTTP faults, runs, recorded requests.

Plain data with no behaviour beyond a run's status on the clock; :mod:`.state` holds them, :mod:`.render` turns
them into API objects, :mod:`.routes` answers requests with them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

from dbt_cloud_gate.dbtcloud_api.emulator.faults import CountedFault
from dbt_cloud_gate.dbtcloud_api.models import BUILDING_COMMANDS, RunStatus, RunStep

Outcome = Literal["success", "error", "cancelled"]
FaultKind = Literal["429", "5xx", "status", "drop", "slow", "not_found_fresh", "lost_response"]
# A source's status in ``sources.json`` (dbt's freshness statuses).
FreshnessStatus = Literal["pass", "warn", "error", "runtime error"]
FRESHNESS_STATUSES: tuple[FreshnessStatus, ...] = ("pass", "warn", "error", "runtime error")

MAX_CAUSE = 255
# The set-up steps dbt Cloud runs before a job's own commands (step indexes count them).
SETUP_STEPS = ("Clone git repository", "Create profile from connection", "Invoke dbt with `dbt deps`")
_OUTCOME_STATUS = {"success": RunStatus.SUCCESS, "error": RunStatus.ERROR, "cancelled": RunStatus.CANCELLED}


def reject_unknown(cls: type[Any], data: dict[str, Any], label: str, *, show_known: bool = True) -> None:
    """Refuse settings that are not fields of the dataclass ``cls`` (a typo is an error, not silently ignored)."""
    known = set(cls.__dataclass_fields__)
    unknown = set(data) - known
    if unknown:
        hint = f"; known: {sorted(known)}" if show_known else ""
        raise ValueError(f"unknown {label} setting(s) {sorted(unknown)}{hint}")


def source_of(model: str) -> str | None:
    """The source table a model reads in the emulated project: ``raw.<name>`` for a staging model ``stg_<name>``."""
    return model.removeprefix("stg_") if model.startswith("stg_") else None


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
        reject_unknown(cls, value, "step")
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
    # The job's checkboxes, as its object shows them: "Run source freshness" runs ``dbt source freshness`` as the
    # first command step (it never fails the run) and "Generate docs on run" runs ``dbt docs generate`` after the
    # commands (a trigger's ``generate_docs_override`` decides for one run).
    run_generate_sources: bool = False
    generate_docs: bool = False
    # How stale each source is when a run checks freshness, by table name: ``{"orders": "error"}`` for the source
    # ``raw.orders`` that ``stg_orders`` reads; ``warn``, ``error`` or ``runtime error``. Unlisted sources pass.
    stale_sources: dict[str, FreshnessStatus] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.steps is not None:
            self.steps = [StepSpec.coerce(step) for step in self.steps]
            self.execute_steps = [step.command for step in self.steps]
        self._check_stale_sources()

    def _check_stale_sources(self) -> None:
        """A stale source must be a source of the job, with one of dbt's freshness statuses."""
        for name, status in self.stale_sources.items():
            if status not in FRESHNESS_STATUSES:
                raise ValueError(
                    f"job {self.id}: stale_sources[{name!r}] is {status!r}; use one of "
                    f"{', '.join(FRESHNESS_STATUSES[1:])} (a source left out passes)"
                )
        sources = self.source_names()
        unknown = sorted(set(self.stale_sources) - set(sources))
        if unknown:
            raise ValueError(
                f"job {self.id}: stale_sources names {unknown}, which are not sources of the job; its sources are "
                f"{sources} (the source raw.<name> of each staging model stg_<name> in its models)"
            )

    def source_names(self) -> list[str]:
        """The job's sources by table name: the source of each staging model it builds."""
        models = [*self.models, *(model for step in self.steps or [] for model in step.models or [])]
        return list(dict.fromkeys(name for name in map(source_of, models) if name))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobSpec:
        """Build from a jobs-file entry; unknown keys are an error, not silently ignored."""
        reject_unknown(cls, data, "job")
        return cls(**data)

    def error_model(self) -> str:
        """The model a failing run fails on: ``failing_model``, else the job's last model."""
        return self.failing_model or self.models[-1]

    def error_message(self) -> str:
        """The status message of a failed run (the run object's and the webhook's)."""
        return f"Database Error in model {self.error_model()}"


@dataclass
class Fault(CountedFault):
    """A fault to inject into matching requests.

    ``kind``: ``429`` (with ``retry_after`` as the header value, or none), ``5xx`` (``status`` with an HTML body),
    ``status`` (any ``status`` code in the dbt Cloud error envelope, e.g. a 403 after a token was revoked),
    ``drop`` (close the connection, request not processed), ``slow`` (answer after ``delay`` seconds),
    ``not_found_fresh`` (404 for a run younger than ``fresh_seconds``), ``lost_response`` (process the request,
    then drop the connection: a trigger whose run is created but whose answer is lost).
    ``skip`` lets the first matching requests through untouched (fault the second search, not the first); the
    other firing settings (``job_id``, ``times``, ``probability``) are :class:`.faults.CountedFault`'s.
    """

    kind: FaultKind
    method: str | None = None
    path: str | None = None
    retry_after: str | None = None
    status: int = 503
    delay: float = 0.0
    fresh_seconds: float = 1.0

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Fault:
        """Build from JSON (the admin endpoint and the CLI)."""
        reject_unknown(cls, data, "fault", show_known=False)
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

    @property
    def kind(self) -> str:
        """What the request was, for counting: "list" (runs), "trigger", "run" (a read of one run), "artifact",
        "job" (a read of one job), or "other"."""
        if self.method == "GET" and self.path.endswith("/runs/"):
            return "list"
        if self.method == "POST" and re.search(r"/jobs/\d+/run/$", self.path):
            return "trigger"
        if self.method == "GET" and "/artifacts/" in self.path:
            return "artifact"
        if self.method == "GET" and re.search(r"/runs/\d+/$", self.path):
            return "run"
        if self.method == "GET" and re.search(r"/jobs/\d+/$", self.path):
            return "job"
        return "other"


@dataclass
class RunRecord:
    """One run as the emulator keeps it: its trigger, and when it leaves the queue, starts and ends.

    ``dequeued``/``started``/``finished`` are planned by :meth:`.state.AccountState.replan` (a job runs one run at a
    time); the status at any moment follows from them and ``cancelled_at``.
    """

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
    # What the job's checkboxes add to this run (decided when it is triggered) and how stale its sources were then.
    freshness: bool = False
    docs: bool = False
    stale_sources: dict[str, FreshnessStatus] = field(default_factory=dict)

    def status_at(self, now: float) -> RunStatus:
        """The run's status at ``now``."""
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
        """When the run ends: its cancellation, else its planned finish."""
        return self.cancelled_at if self.cancelled_at is not None else self.finished
