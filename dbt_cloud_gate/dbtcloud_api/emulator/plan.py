"""The command steps of a run as dbt Cloud lays them out, and where a failed run fails. Pure functions, no I/O.

After the set-up steps (:data:`~.specs.SETUP_STEPS`) come the job's commands, and the steps its checkboxes add:
"Run source freshness" (``run_generate_sources``) runs ``dbt source freshness`` as the first command step and
"Generate docs on run" (``generate_docs``, or a trigger's ``generate_docs_override``) runs ``dbt docs generate``
after the commands. When a checkbox step fails the run still succeeds if the steps after it do (dbt's "Job commands"
page): a Success run can have a freshness step in Error. A ``dbt source freshness`` listed among the job's own
commands fails the run when a source is stale past ``error_after``, and the steps after a failed step never run.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from dbt_cloud_gate.dbtcloud_api.emulator.specs import SETUP_STEPS, JobSpec, RunRecord, StepSpec, dbt_command
from dbt_cloud_gate.dbtcloud_api.models import RunStatus

FRESHNESS_COMMAND = "dbt source freshness"
DOCS_COMMAND = "dbt docs generate"
# The source statuses that make ``dbt source freshness`` exit non-zero (a warning does not).
FAILING_FRESHNESS = frozenset({"error", "runtime error"})
# How dbt's log names each freshness status (``2 of 2 ERROR STALE freshness of raw.orders``).
FRESHNESS_LABELS = {"pass": "PASS", "warn": "WARN", "error": "ERROR STALE", "runtime error": "ERROR"}


@dataclass(frozen=True)
class PlannedStep:
    """One command step of a run: its index among all steps (set-up steps count), what it runs, and whether a job
    checkbox added it (such a step does not fail the run)."""

    index: int
    step: StepSpec
    checkbox: bool = False

    @property
    def command(self) -> str:
        """The dbt command line."""
        return self.step.command

    @property
    def name(self) -> str:
        """The step's name as dbt Cloud shows it."""
        return f"Invoke dbt with `{self.command}`"

    @property
    def checks_freshness(self) -> bool:
        """Whether the step runs ``dbt source freshness``."""
        return dbt_command(self.command) in ("source freshness", "source snapshot-freshness")

    @property
    def generates_docs(self) -> bool:
        """Whether the step runs ``dbt docs generate``."""
        return dbt_command(self.command) == "docs generate"


def job_commands(spec: JobSpec, run: RunRecord | None = None) -> list[StepSpec]:
    """The job's own command steps for ``run`` (the job's ``steps`` when the run kept its commands, else each
    command with defaults); without a run, the job's."""
    commands = run.steps if run is not None else spec.execute_steps
    if spec.steps is not None and [step.command for step in spec.steps] == commands:
        return list(spec.steps)
    return [StepSpec(command) for command in commands]


def freshness_fails(commands: Iterable[str], stale: Mapping[str, str]) -> bool:
    """Whether a ``dbt source freshness`` among the job's own ``commands`` fails, failing the run."""
    if not FAILING_FRESHNESS.intersection(stale.values()):
        return False
    return any(PlannedStep(0, StepSpec(command)).checks_freshness for command in commands)


def _all_steps(run: RunRecord, spec: JobSpec) -> list[PlannedStep]:
    steps = [(StepSpec(FRESHNESS_COMMAND), True)] if run.freshness else []
    steps += [(step, False) for step in job_commands(spec, run)]
    if run.docs:
        steps.append((StepSpec(DOCS_COMMAND), True))
    first = len(SETUP_STEPS) + 1
    return [PlannedStep(index, step, checkbox) for index, (step, checkbox) in enumerate(steps, start=first)]


def failing_step(run: RunRecord, spec: JobSpec) -> PlannedStep | None:
    """The step an Error run fails on: a listed ``dbt source freshness`` with a source stale past ``error_after``,
    else the job's last command; ``None`` for a run that does not fail."""
    if run.outcome != "error":
        return None
    own = [step for step in _all_steps(run, spec) if not step.checkbox]
    if FAILING_FRESHNESS.intersection(run.stale_sources.values()):
        checks = [step for step in own if step.checks_freshness]
        if checks:
            return checks[0]
    return own[-1] if own else None


def planned(run: RunRecord, spec: JobSpec) -> list[PlannedStep]:
    """The command steps the run executes, in order: an Error run stops at its failing step."""
    steps = _all_steps(run, spec)
    failing = failing_step(run, spec)
    return steps if failing is None else [step for step in steps if step.index <= failing.index]


def skipped(run: RunRecord, spec: JobSpec) -> list[PlannedStep]:
    """The command steps a failed run never reached."""
    failing = failing_step(run, spec)
    return [] if failing is None else [step for step in _all_steps(run, spec) if step.index > failing.index]


def step_at(run: RunRecord, spec: JobSpec, index: int) -> PlannedStep | None:
    """The executed command step at a run-step index (1-based over every step), if any."""
    return next((step for step in planned(run, spec) if step.index == index), None)


def last_index(run: RunRecord, spec: JobSpec) -> int:
    """The index of the run's last executed step."""
    return len(SETUP_STEPS) + len(planned(run, spec))


def generated(run: RunRecord, spec: JobSpec, status: RunStatus) -> tuple[bool, bool]:
    """The run object's ``has_docs_generated`` and ``has_sources_generated`` in ``status``: whether a finished run
    executed a docs step, and a freshness step."""
    if status not in (RunStatus.SUCCESS, RunStatus.ERROR):
        return False, False
    steps = planned(run, spec)
    return any(step.generates_docs for step in steps), any(step.checks_freshness for step in steps)


def step_window(run: RunRecord, spec: JobSpec, index: int) -> tuple[float, float]:
    """When the step at ``index`` begins and ends: the run's time shared evenly among its executed steps."""
    each = max(run.finished - run.started, 0.0) / last_index(run, spec)
    return run.started + each * (index - 1), run.started + each * index


def errored(run: RunRecord, spec: JobSpec) -> set[int]:
    """The indexes of the steps that end in Error: the failing step, and a checkbox freshness step that found a
    source stale past ``error_after`` (the run goes on)."""
    indexes = {failing.index} if (failing := failing_step(run, spec)) is not None else set()
    if FAILING_FRESHNESS.intersection(run.stale_sources.values()):
        indexes.update(step.index for step in planned(run, spec) if step.checks_freshness)
    return indexes


def error_message(run: RunRecord, spec: JobSpec) -> str:
    """The status message of a failed run: dbt's line for each failing source when a freshness step failed it,
    else the model's error."""
    failing = failing_step(run, spec)
    if failing is not None and failing.checks_freshness:
        return "; ".join(
            f"{FRESHNESS_LABELS[status]} freshness of raw.{name}"
            for name, status in run.stale_sources.items()
            if status in FAILING_FRESHNESS
        )
    return spec.error_message()
