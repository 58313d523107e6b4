"""Typed models of the dbt Cloud API v2 objects this project reads: runs, run steps, jobs, triggers.

The real service sends many fields as ``null`` that its OpenAPI spec never marks nullable, and adds fields
over time: every field here that can be missing or null is optional, and unknown fields are kept (``extra``)
so that a job read from the service can be written back whole.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from datetime import UTC, datetime
from enum import IntEnum
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

logger = logging.getLogger("dbt_cloud_gate.dbtcloud_api")


class RunStatus(IntEnum):
    """A dbt Cloud run status code. Only SUCCESS, ERROR and CANCELLED are terminal."""

    QUEUED = 1
    STARTING = 2
    RUNNING = 3
    SUCCESS = 10
    ERROR = 20
    CANCELLED = 30

    @property
    def is_terminal(self) -> bool:
        """Whether a run in this status will not change any more."""
        return self in TERMINAL_STATUSES

    @property
    def label(self) -> str:
        """The name dbt Cloud shows for this status (``status_humanized``)."""
        return self.name.capitalize()


TERMINAL_STATUSES = frozenset({RunStatus.SUCCESS, RunStatus.ERROR, RunStatus.CANCELLED})
ACTIVE_STATUSES = frozenset({RunStatus.QUEUED, RunStatus.STARTING, RunStatus.RUNNING})

# dbt commands whose run_results.json holds models, seeds or snapshots that the command built.
BUILDING_COMMANDS = frozenset({"run", "build", "seed", "snapshot", "clone", "retry"})
# dbt commands that build nothing: their run_results.json (if any) holds tests, freshness or compile results.
NON_BUILDING_COMMANDS = frozenset(
    {
        "deps",
        "test",
        "source freshness",
        "source snapshot-freshness",
        "docs generate",
        "docs serve",
        "compile",
        "parse",
        "debug",
        "ls",
        "list",
        "run-operation",
        "show",
        "clean",
        "init",
        "environment",
        "invocation",
    }
)
_TWO_WORD_COMMANDS = frozenset({"source", "docs"})
_INVOKE_STEP = re.compile(r"`\s*dbt\s+([^`]*)`")
# Steps whose results are worth reading: finished, successfully or not (a failed step's results name the failure).
_FINISHED_STEP_STATUSES = frozenset({None, int(RunStatus.SUCCESS), int(RunStatus.ERROR)})


def parse_timestamp(value: Any) -> datetime | None:
    """Parse a dbt Cloud timestamp into a timezone-aware UTC datetime, exact to the microsecond.

    Runs use ``2021-12-07 10:34:14.435474+00:00``; jobs use a ``T`` separator; both, a ``Z`` suffix and a
    naive value (taken as UTC) are accepted. ``None`` and ``""`` stay ``None``.
    """
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip())
        except ValueError as exc:
            raise ValueError(f"not a dbt Cloud timestamp: {value!r}") from exc
    else:
        raise ValueError(f"not a dbt Cloud timestamp: {value!r}")
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def format_timestamp(value: datetime) -> str:
    """Format a datetime the way dbt Cloud formats run timestamps (``2021-12-07 10:34:14.435474+00:00``)."""
    return value.astimezone(UTC).isoformat(sep=" ", timespec="microseconds")


Timestamp = Annotated[datetime | None, BeforeValidator(parse_timestamp)]


class _ApiModel(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class RunTrigger(_ApiModel):
    """The trigger of a run: its cause and the overrides it was started with."""

    id: int | None = None
    cause: str | None = None
    job_definition_id: int | None = None
    git_branch: str | None = None
    git_sha: str | None = None
    azure_pull_request_id: int | None = None
    github_pull_request_id: int | None = None
    gitlab_merge_request_id: int | None = None
    non_native_pull_request_id: int | None = None
    schema_override: str | None = None
    dbt_version_override: str | None = None
    threads_override: int | None = None
    target_name_override: str | None = None
    generate_docs_override: bool | None = None
    timeout_seconds_override: int | None = None
    steps_override: list[str] | None = None
    created_at: Timestamp = None


class RunStep(_ApiModel):
    """One step of a run (``dbt run``, ``dbt test``...), with its status and high-level logs."""

    id: int | None = None
    run_id: int | None = None
    account_id: int | None = None
    index: int = 0
    status: int | None = None
    name: str = ""
    logs: str | None = None
    debug_logs: str | None = None
    status_humanized: str | None = None
    started_at: Timestamp = None
    finished_at: Timestamp = None
    duration: str | None = None

    @property
    def failed(self) -> bool:
        """Whether this step ended in error."""
        return self.status == RunStatus.ERROR

    def last_log_lines(self, count: int = 20) -> list[str]:
        """The last ``count`` non-empty lines of this step's logs."""
        lines = [line for line in (self.logs or "").splitlines() if line.strip()]
        return lines[-count:]

    @property
    def dbt_command(self) -> str | None:
        """The dbt sub-command this step invoked (``run``, ``source freshness``...), or ``None`` for a step that
        is not a dbt invocation (``Clone git repository``, ``Create profile from connection ...``).

        dbt Cloud names a command step ``Invoke dbt with `dbt run --select x` ``; global flags before the
        sub-command (``dbt --warn-error run``) are skipped.
        """
        found = _INVOKE_STEP.search(self.name or "")
        if found is None:
            return None
        words = [word for word in found.group(1).split() if not word.startswith("-")]
        if not words:
            return ""
        if words[0] in _TWO_WORD_COMMANDS and len(words) > 1:
            return f"{words[0]} {words[1]}"
        return words[0]

    @property
    def may_build_models(self) -> bool:
        """Whether this step's ``run_results.json`` can hold built models (see :data:`BUILDING_COMMANDS`).

        A dbt command this client does not know counts as building: its artifact is read, and ignored if absent.
        """
        command = self.dbt_command
        if command is None:
            return False
        return command not in NON_BUILDING_COMMANDS


class JobTriggers(_ApiModel):
    """What starts a job inside dbt Cloud; ``schedule`` is the job's own dbt Cloud schedule."""

    github_webhook: bool = False
    git_provider_webhook: bool | None = None
    schedule: bool = False
    on_merge: bool | None = None
    custom_branch_only: bool | None = None


class Job(_ApiModel):
    """A dbt Cloud job definition."""

    id: int
    account_id: int
    project_id: int
    environment_id: int
    name: str
    description: str | None = None
    dbt_version: str | None = None
    execute_steps: list[str] = Field(default_factory=list)
    state: int = 1
    triggers: JobTriggers = Field(default_factory=JobTriggers)
    settings: dict[str, Any] | None = None
    schedule: dict[str, Any] | None = None
    execution: dict[str, Any] | None = None
    generate_docs: bool = False
    run_generate_sources: bool = False
    created_at: Timestamp = None
    updated_at: Timestamp = None
    next_run: Timestamp = None
    cron_humanized: str | None = None

    @property
    def schedule_enabled(self) -> bool:
        """Whether the job's own dbt Cloud schedule is on (it would run the job besides the pipeline)."""
        return bool(self.triggers.schedule)


class RunJob(_ApiModel):
    """The job as served inside a run (``include_related=job``). The spec's ``InternalJobDefinition`` lists no
    ``id`` and many fields come back null, so every field is optional: only ``triggers`` is relied upon."""

    id: int | None = None
    name: str | None = None
    triggers: JobTriggers | None = None
    cron_humanized: str | None = None

    @property
    def schedule_enabled(self) -> bool | None:
        """Whether the job's own dbt Cloud schedule is on; ``None`` when the answer did not say."""
        return None if self.triggers is None else bool(self.triggers.schedule)


def _coerce_status(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("run status must be an integer code")
    if isinstance(value, int | str) and str(value).lstrip("-").isdigit():
        code = int(value)
        try:
            return RunStatus(code)
        except ValueError:
            return code
    return value


class Run(_ApiModel):
    """A dbt Cloud run. ``status`` is a :class:`RunStatus`, or a plain int for a code this client does not know."""

    # The run's fields as the API spec lists them: like Job's and WebhookSubscription's in shape only.
    id: int
    account_id: int
    job_definition_id: int | None = None
    trigger_id: int | None = None
    environment_id: int | None = None
    project_id: int | None = None
    status: RunStatus | int
    status_humanized: str | None = None
    status_message: str | None = None
    dbt_version: str | None = None
    git_branch: str | None = None
    git_sha: str | None = None
    href: str | None = None
    artifacts_saved: bool | None = None
    in_progress: bool | None = None
    is_complete: bool | None = None
    is_success: bool | None = None
    is_error: bool | None = None
    is_cancelled: bool | None = None
    created_at: Timestamp = None
    updated_at: Timestamp = None
    dequeued_at: Timestamp = None
    started_at: Timestamp = None
    finished_at: Timestamp = None
    duration: str | None = None
    queued_duration: str | None = None
    run_duration: str | None = None
    trigger: RunTrigger | None = None
    job: RunJob | None = None
    run_steps: list[RunStep] = Field(default_factory=list)

    @field_validator("status", mode="before")
    @classmethod
    def _known_status(cls, value: Any) -> Any:
        return _coerce_status(value)

    @field_validator("run_steps", mode="before")
    @classmethod
    def _null_steps(cls, value: Any) -> Any:
        return [] if value is None else value

    @property
    def known_status(self) -> RunStatus | None:
        """The status as a :class:`RunStatus`, or ``None`` for a code this client does not know."""
        return self.status if isinstance(self.status, RunStatus) else None

    @property
    def is_terminal(self) -> bool:
        """Whether the run has finished. An unknown code counts as finished only if ``is_complete`` says so."""
        known = self.known_status
        if known is not None:
            return known.is_terminal
        return bool(self.is_complete)

    @property
    def status_label(self) -> str:
        """A human name for the status: ``Success``, ``Error``... or ``Unknown (42)``."""
        known = self.known_status
        if known is not None:
            return known.label
        return self.status_humanized or f"Unknown ({int(self.status)})"

    @property
    def job_id(self) -> int | None:
        """The job this run belongs to."""
        if self.job_definition_id is not None:
            return self.job_definition_id
        extra = (self.model_extra or {}).get("job_id")
        return int(extra) if extra is not None else None

    @property
    def failed_step(self) -> RunStep | None:
        """The step the run failed on, if the run's steps are known: the last one in error. Steps after the one a run
        fails on never run, while a step a job checkbox adds ("Run source freshness") may end in error and the run
        go on: the first step in error may not be the one that failed the run."""
        return max((step for step in self.run_steps if step.failed), key=lambda s: s.index, default=None)

    @property
    def latest_step_failed(self) -> bool:
        """Whether the latest step begun ended in error: unless a job checkbox added it, the run ends in moments."""
        latest = max(self.run_steps, key=lambda s: s.index, default=None)
        return latest is not None and latest.failed

    def cause_contains(self, marker: str) -> bool:
        """Whether the run's trigger cause (read with ``include_related=trigger``) contains ``marker``."""
        return self.trigger is not None and marker in (self.trigger.cause or "")

    def model_steps(self) -> list[int] | None:
        """Indexes (the artifacts endpoint's ``step``) of the finished steps whose results can hold built models.

        ``None`` when the run's steps are not known (read without ``run_steps``): the caller then reads the
        default artifact, which is the last step's. ``[]`` when no step built anything (``dbt test`` alone).
        """
        if not self.run_steps:
            return None
        return [
            step.index
            for step in sorted(self.run_steps, key=lambda s: s.index)
            if step.may_build_models and step.status in _FINISHED_STEP_STATUSES
        ]


class RunPage(BaseModel):
    """One page of a run listing, with the service's total count for paging."""

    runs: list[Run]
    count: int
    total_count: int
    offset: int
    limit: int


class JobPage(BaseModel):
    """One page of the account's job listing, with the service's total count for paging."""

    jobs: list[Job]
    total_count: int


def durations_from_runs(runs: Iterable[Run]) -> list[float]:
    """Start-to-finish seconds of the successful runs among ``runs``."""
    return [
        (run.finished_at - run.started_at).total_seconds()
        for run in runs
        if run.status == RunStatus.SUCCESS and run.started_at is not None and run.finished_at is not None
    ]


# How many of a job's newest runs one read before a trigger looks at (one page: dbt Cloud's maximum), and how
# many of its successes feed the poll schedule.
RECENT_RUNS_LIMIT = 100
HISTORY_RUNS = 20
# What that read asks dbt Cloud to include with each run: the trigger (its cause carries the idempotency key)
# and the job (its ``triggers.schedule``: the spec's RunResponse.job is the job definition).
RECENT_RUNS_INCLUDES: tuple[str, ...] = ("trigger", "job")


class RecentRuns(BaseModel):
    """A job's newest runs, newest first, read with their trigger and job in ONE request before a trigger.

    That one page answers every question asked before starting a run: is there already a run carrying this
    trigger's key (:meth:`carrying`), is one in flight (:meth:`in_flight`), how long do its runs take
    (:meth:`history_seconds`, for the poll schedule), and is the job's own dbt Cloud schedule on (:attr:`job`).
    """

    job_id: int
    runs: list[Run]
    total_count: int

    @classmethod
    def from_page(cls, job_id: int, page: RunPage) -> RecentRuns:
        """The page of ``list_runs(job_definition_id=job_id, order_by="-id", include_related=RECENT_RUNS_INCLUDES)``."""
        return cls(job_id=job_id, runs=page.runs, total_count=page.total_count)

    def carrying(self, marker: str) -> list[Run]:
        """Runs whose trigger cause contains ``marker``, newest first."""
        return [run for run in self.runs if run.cause_contains(marker)]

    def in_flight(self) -> Run | None:
        """The newest run that is queued, starting or running."""
        return next((run for run in self.runs if run.status in ACTIVE_STATUSES), None)

    def history_seconds(self, limit: int = HISTORY_RUNS) -> list[float]:
        """Start-to-finish seconds of the newest ``limit`` successful runs."""
        return durations_from_runs(self.runs)[:limit]

    def schedule_enabled(self) -> bool | None:
        """Whether the job's own dbt Cloud schedule is on, as served with its newest run (the job's current
        definition, not as it was at that run); ``None`` when the job has no run yet or the answer did not say."""
        return next(
            (run.job.schedule_enabled for run in self.runs if run.job is not None and run.job.triggers is not None),
            None,
        )


class ModelResult(BaseModel):
    """One node's result from a run's ``run_results.json``.

    ``name`` is the node's name as dbt knows it (``dim_customers``), never a version suffix, and ``version`` the
    model version as a string without its ``v`` (``"2"`` for ``model.shop.dim_customers.v2``; ``None`` for an
    unversioned node). ``package`` is the dbt project or package the node belongs to. :meth:`matches` is the one
    place that says whether a reference written by a user (``dim_customers``, ``dim_customers.v2``, the
    ``unique_id``) names this node.
    """

    unique_id: str
    name: str
    resource_type: str | None = None
    package: str | None = None
    version: str | None = None
    status: str
    execution_time: float | None = None
    message: str | None = None

    @property
    def label(self) -> str:
        """``name``, with ``.v<version>`` for a versioned model (``dim_customers.v2``): how dbt writes it."""
        return f"{self.name}.v{self.version}" if self.version is not None else self.name

    def matches(self, reference: str) -> bool:
        """Whether ``reference`` names this node: its ``unique_id``, ``name.v<version>`` (``name.<version>`` also),
        or the bare ``name``, which matches every version of a versioned model."""
        text = reference.strip()
        if text == self.unique_id or text == self.name:
            return True
        name, dot, version = text.partition(".")
        if not dot or name != self.name or self.version is None:
            return False
        return _version_text(version) == self.version


def _version_text(value: Any) -> str | None:
    """A model version as this module keeps it: a string without the ``v`` (2, "2", "v2" → "2")."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip()
    if text[:1] in ("v", "V") and len(text) > 1:
        text = text[1:]
    return text or None


def _node_identity(entry: dict[str, Any]) -> tuple[str, str | None, str | None, str | None]:
    """(name, resource type, package, version) of a run_results entry.

    The node's own fields win where the entry carries them (``node`` or top-level ``name``, ``resource_type``,
    ``package_name``, ``version``); else the ``unique_id`` is read as ``resource_type.package.name[.suffix]``.
    dbt names contain no dots, so the third part is the name; the suffix is a model's ``v<version>``, a test's
    hash, or a source's table (a source is named by its table, as ``source()`` takes it last).
    """
    unique_id = str(entry.get("unique_id") or "")
    raw_node = entry.get("node")
    node: dict[str, Any] = raw_node if isinstance(raw_node, dict) else {}
    fields = {**{k: entry.get(k) for k in ("name", "resource_type", "package_name", "version")}, **node}
    parts = unique_id.split(".")
    resource_type = parts[0] if len(parts) > 1 else None
    package = parts[1] if len(parts) > 2 else None
    version: str | None = None
    if len(parts) < 3 or resource_type == "source":
        name = parts[-1]
    else:
        name = parts[2]
        suffix = ".".join(parts[3:])
        if resource_type == "model" and suffix[:1] in ("v", "V") and len(suffix) > 1:
            version = suffix[1:]
    if isinstance(fields.get("name"), str) and fields["name"]:
        name = fields["name"]
    if isinstance(fields.get("resource_type"), str) and fields["resource_type"]:
        resource_type = fields["resource_type"]
    if isinstance(fields.get("package_name"), str) and fields["package_name"]:
        package = fields["package_name"]
    if fields.get("version") is not None:
        version = _version_text(fields["version"])
    return name, resource_type, package, version


def parse_run_results(document: dict[str, Any]) -> list[ModelResult]:
    """Turn a dbt ``run_results.json`` document into per-node results (name, version, status, time, message)."""
    results: list[ModelResult] = []
    for entry in document.get("results") or []:
        if not isinstance(entry, dict):
            continue
        name, resource_type, package, version = _node_identity(entry)
        results.append(
            ModelResult(
                unique_id=str(entry.get("unique_id") or ""),
                name=name,
                resource_type=resource_type,
                package=package,
                version=version,
                status=str(entry.get("status") or "unknown"),
                execution_time=entry.get("execution_time"),
                message=entry.get("message"),
            )
        )
    return results


def merge_run_results(per_step: Iterable[list[ModelResult]]) -> list[ModelResult]:
    """One list from the results of several steps, in order of first appearance: a later step's result for a
    node replaces the earlier one (``dbt run`` then ``dbt run --select orders``: the second is the final state)."""
    merged: dict[str, ModelResult] = {}
    for results in per_step:
        for result in results:
            merged[result.unique_id] = result
    return list(merged.values())
