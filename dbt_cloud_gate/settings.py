"""The settings every flow takes, each validated once, as a type, where it enters, and passed whole inward.

- :class:`WaitSettings`: how to wait for a run (polling, deadline, what to do at it, webhooks).
- :class:`StartSettings`: how to start one (a run in flight, the job's own schedule, a rerun, a run started
  elsewhere).
- :class:`TriggerOverrides`: every override of dbt Cloud's trigger endpoint, the one list of them.
- :class:`LoadSettings`: how the Snowflake loads run (lookback, timeouts, audit table, guards, preflight).
- :class:`ReconcileSettings`: what a reconcile may change (deletes, their ceiling, a dry run).

Each is frozen; ``WAIT``, ``START``, ``NO_OVERRIDES``, ``LOAD`` and ``RECONCILE`` are the defaults the flows' signatures use, so
that every default is written once, here. In a deployment's parameters or the UI form each is one group::

    wait: {poll_interval_seconds: 30, max_wait_seconds: 7200, on_timeout: cancel}

Bad values fail where they enter (a flow's parameter validation, before anything is triggered), with pydantic's
message naming the field. Prefect-free: pydantic only.
"""

from __future__ import annotations

import math
import warnings
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from dbt_cloud_gate import loads_sql as q
from dbt_cloud_gate.dbtcloud_api.client import TRIGGER_OVERRIDES
from dbt_cloud_gate.dbtcloud_api.types import DbtCloudId, Seconds

__all__ = [
    "LOAD",
    "NO_OVERRIDES",
    "RECONCILE",
    "START",
    "WAIT",
    "DbtCloudId",
    "LoadSettings",
    "ReconcileSettings",
    "Seconds",
    "StartSettings",
    "TriggerOverrides",
    "WaitSettings",
]

# With webhooks on, a cancelled run sends no webhook: this safety-net poll sees it at most this late (a cancel
# within 30 s, as polling's longest gap, at one read per 30 s of run time; see docs/webhooks.md).
DEFAULT_FALLBACK_POLL_SECONDS = 30.0


class _Settings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class WaitSettings(_Settings):
    """How a flow waits for a dbt Cloud run to end."""

    poll_interval_seconds: Seconds = Field(
        default=30,
        description="The longest gap between two polls, in seconds: an early Error or a cancel is seen at most this "
        "late. With adaptive polling, polls come every 8.5 s only where the run is likely to end.",
    )
    adaptive_polling: bool = Field(
        default=True,
        description="Poll around the durations of the job's recent successful runs (fewer calls at the same median "
        "lag), every 10 s over a run's first 30 s (where failed runs end); without history, every "
        "poll_interval_seconds past those.",
    )
    max_wait_seconds: Seconds = Field(
        default=7200,
        description="Give up after this long (a monotonic clock that counts request time): alert and fail.",
    )
    on_timeout: Literal["cancel", "leave"] = Field(
        default="cancel", description="At the deadline: cancel the dbt Cloud run, or leave it running."
    )
    webhooks: bool = Field(
        default=False,
        description="End the wait on the run's webhook event instead of polling for it (needs a Prefect server and "
        "the webhook receiver; without a server it polls, and says so).",
    )
    fallback_poll_seconds: Seconds = Field(
        default=DEFAULT_FALLBACK_POLL_SECONDS,
        description="With webhooks, also poll this often: the safety net for a cancelled run (no webhook), a lost "
        "delivery or a receiver that is down. The default, 30 s, sees a cancel as late as polling would, at one "
        "read per 30 s of run time.",
    )
    model_results: bool = Field(
        default=True,
        description="Read the finished run's per-model results (run_results.json, one request per step that "
        "builds models) for the result's models, the models artifact and the ETL's check_model_built guard "
        "(which reads them whatever this says). Off: one request fewer per run; models empty, and the artifact "
        "says they were not read.",
    )

    def bounded_by(self, seconds: float) -> WaitSettings:
        """These settings with ``max_wait_seconds`` at most ``seconds`` (a flow timeout that comes first)."""
        return self if seconds >= self.max_wait_seconds else self.model_copy(update={"max_wait_seconds": seconds})

    def leaving_at_deadline(self) -> WaitSettings:
        """These settings with ``on_timeout="leave"``: for a run this flow did not start."""
        return self if self.on_timeout == "leave" else self.model_copy(update={"on_timeout": "leave"})


class StartSettings(_Settings):
    """How a flow starts (or finds) the run it waits on."""

    if_running: Literal["trigger", "reuse", "fail"] = Field(
        default="trigger",
        description="When the job already has a run in flight: trigger (dbt Cloud queues a new one), reuse (wait on "
        "that run), or fail.",
    )
    native_schedule: Literal["warn", "fail", "disable"] = Field(
        default="warn",
        description="When the job's own dbt Cloud schedule is on (it would run the job a second time): warn, fail, "
        "or disable it through the API.",
    )
    retry_failed_run_id: DbtCloudId | None = Field(
        default=None, description="Rerun this failed run from its point of failure instead of starting a new run."
    )
    run_id: DbtCloudId | None = Field(
        default=None,
        description="Wait on this run of the job, started elsewhere (dbt Cloud's scheduler, CI, an event trigger); "
        "nothing is triggered.",
    )

    @model_validator(mode="after")
    def _one_source(self) -> StartSettings:
        if self.run_id is not None and self.retry_failed_run_id is not None:
            raise ValueError("run_id (wait on a run started elsewhere) and retry_failed_run_id exclude each other.")
        return self


class TriggerOverrides(_Settings):
    """Overrides of the job's settings for this run, sent with the trigger (every field of the API's trigger
    request but the cause); unset fields are not sent."""

    steps_override: list[Annotated[str, Field(min_length=1, pattern=r"\S")]] | None = Field(
        default=None,
        min_length=1,
        description='dbt commands to run instead of the job\'s steps, e.g. ["dbt build --select orders+"].',
    )
    git_sha: str | None = Field(default=None, description="Run the project at this commit.")
    git_branch: str | None = Field(default=None, description="Run the project from this branch.")
    schema_override: str | None = Field(default=None, description="Build into this schema instead of the job's.")
    dbt_version_override: str | None = Field(default=None, description="Run with this dbt version.")
    threads_override: int | None = Field(default=None, gt=0, description="Run with this many threads.")
    target_name_override: str | None = Field(default=None, description="The dbt target name for this run.")
    generate_docs_override: bool | None = Field(default=None, description="Generate docs in this run, or not.")
    timeout_seconds_override: int | None = Field(
        default=None, ge=0, description="dbt Cloud's own time limit for this run, in seconds (0: none)."
    )
    azure_pull_request_id: int | None = Field(default=None, description="The Azure DevOps pull request (CI jobs).")
    github_pull_request_id: int | None = Field(default=None, description="The GitHub pull request (CI jobs).")
    gitlab_merge_request_id: int | None = Field(default=None, description="The GitLab merge request (CI jobs).")
    non_native_pull_request_id: int | None = Field(
        default=None, description="The pull request of another git provider (CI jobs)."
    )

    def body(self) -> dict[str, Any]:
        """The overrides that are set, as the trigger request's fields."""
        return {name: value for name, value in self.model_dump().items() if value is not None}


class LoadSettings(_Settings):
    """How the Snowflake loads of an ETL flow run."""

    lookback_seconds: float = Field(
        default=3600.0,
        ge=0,
        le=366 * 86400,
        allow_inf_nan=False,
        description="Start each window this long before the last loaded watermark, to take rows that arrive late "
        "(a target's own lookback_seconds wins). 0 is exact only for a watermark dbt stamps as it writes the row.",
    )
    lock_timeout_seconds: Seconds = Field(
        default=300.0, description="How long a load waits for its target's write lock before it gives up."
    )
    statement_timeout_seconds: Seconds = Field(default=3600.0, description="Snowflake's limit for one statement.")
    audit_table: str | None = Field(
        default=None,
        description="The audit history: DATABASE.SCHEMA.TABLE; default: DBT_CLOUD_GATE_AUDIT beside each target.",
    )
    check_newer_run: bool = Field(
        default=True, description="Refuse a run that finished no later than the last one loaded for a target."
    )
    check_model_built: bool = Field(
        default=True, description="Refuse to load a target whose source model did not build in the run."
    )
    preflight: bool = Field(
        default=True,
        description="Before the dbt job is triggered, check every target (connection, tables, columns and types, "
        "rights, and with check_model_built that the job builds source_model): any problem fails the flow, "
        "naming each, and nothing is triggered. A few metadata statements and two dbt Cloud requests per job.",
    )

    @model_validator(mode="after")
    def _audit_table(self) -> LoadSettings:
        if self.audit_table is not None:
            q.split_table(self.audit_table, "audit table")
        return self


# Field declarations like WaitSettings' in shape only: each group types and describes its own settings.
class ReconcileSettings(_Settings):
    """What a reconcile may change in its targets: whether it deletes, how much at most, and a dry run."""

    propagate_deletes: bool = Field(
        default=False,
        description="Delete target rows whose key no longer exists in the source. Refused when another source is "
        "registered for the target (it would delete that source's rows).",
    )
    max_delete_fraction: float = Field(
        default=0.1,
        ge=0,
        le=1,
        allow_inf_nan=False,
        description="The most a reconcile may delete, as a fraction of the target's rows: above it nothing changes "
        "and the reconcile fails naming the count (1: no ceiling).",
    )
    max_deletes: int | None = Field(
        default=None, ge=0, description="The most rows a reconcile may delete, whatever the fraction (None: no cap)."
    )
    allow_empty_source: bool = Field(
        default=False,
        description="Let propagate_deletes delete from a target whose source holds no row with a key (a dbt "
        "build that left the model empty would otherwise empty the target).",
    )
    dry_run: bool = Field(
        default=False,
        description="Count what would be written and deleted per target, and report it, without committing "
        "anything (a refusal of the deletes is reported, not raised).",
    )

    def deletes_within_fraction(self, target_rows: int) -> int:
        """The most rows ``max_delete_fraction`` lets go from a target holding ``target_rows``."""
        return math.floor(self.max_delete_fraction * target_rows + 1e-9)  # 0.3 * 10 is 2.9999999999999996

    def allowed_deletes(self, target_rows: int) -> int:
        """The most rows a reconcile may delete from a target holding ``target_rows`` (both ceilings)."""
        allowed = self.deletes_within_fraction(target_rows)
        return allowed if self.max_deletes is None else min(allowed, self.max_deletes)


WAIT = WaitSettings()
START = StartSettings()
NO_OVERRIDES = TriggerOverrides()
LOAD = LoadSettings()
RECONCILE = ReconcileSettings()

if set(TriggerOverrides.model_fields) != set(TRIGGER_OVERRIDES):  # pragma: no cover - caught by the tests
    raise RuntimeError("TriggerOverrides and the client's TRIGGER_OVERRIDES disagree")


# The flat parameter names of earlier releases, by the group that now holds them. A flow called with one of them
# (from Python) still works for this release, with a DeprecationWarning: see ``regroup``.
GROUPS: dict[str, type[_Settings]] = {
    "wait": WaitSettings,
    "start": StartSettings,
    "trigger": TriggerOverrides,
    "load": LoadSettings,
    "reconcile": ReconcileSettings,
}
LEGACY_PARAMETERS: dict[str, str] = {name: group for group, model in GROUPS.items() for name in model.model_fields}


def regroup(flow_name: str, accepted: set[str], kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` with every flat parameter of an earlier release moved into its group (``poll_interval_seconds=5``
    becomes ``wait=WaitSettings(..., poll_interval_seconds=5)``), for a flow whose parameters are ``accepted``.

    A group passed too is the base the flat values update. Warns once per call, naming the new spelling.
    """
    moved: dict[str, dict[str, Any]] = {}
    for name in [n for n in kwargs if n not in accepted and n in LEGACY_PARAMETERS]:
        group = LEGACY_PARAMETERS[name]
        if group in accepted:
            moved.setdefault(group, {})[name] = kwargs.pop(name)
    for group, values in moved.items():
        model = GROUPS[group]
        base = kwargs.get(group)
        current = base.model_dump() if isinstance(base, BaseModel) else dict(base or {})
        kwargs[group] = model.model_validate({**current, **values})
        spelled = ", ".join(f"{k}=..." for k in values)
        warnings.warn(
            f"{flow_name}({spelled}) is deprecated and will be removed in the next release: pass "
            f"{group}={model.__name__}({spelled}).",
            DeprecationWarning,
            stacklevel=4,
        )
    return kwargs
