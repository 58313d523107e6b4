"""A run's steps as dbt Cloud shows them (status, times, logs) and the ``run_results.json`` each step leaves.

Which steps a run executes, and which fail, is :mod:`.plan`'s; a freshness step's log and ``sources.json`` are
:mod:`.freshness`'s, a docs step's :mod:`.catalog`'s. Pure functions of a run record and a moment ``now``.
"""

from __future__ import annotations

from typing import Any

from dbt_cloud_gate.dbtcloud_api.emulator import plan, project
from dbt_cloud_gate.dbtcloud_api.emulator.catalog import docs_logs
from dbt_cloud_gate.dbtcloud_api.emulator.freshness import freshness_logs
from dbt_cloud_gate.dbtcloud_api.emulator.plan import PlannedStep
from dbt_cloud_gate.dbtcloud_api.emulator.specs import SETUP_STEPS, JobSpec, RunRecord, dbt_command
from dbt_cloud_gate.dbtcloud_api.emulator.times import hms, timestamp
from dbt_cloud_gate.dbtcloud_api.models import RunStatus

# A node of a step's run_results.json: (unique_id, status, message).
Node = tuple[str, str, str | None]
RUN_RESULTS_SCHEMA = "https://schemas.getdbt.com/dbt/run-results/v5.json"


def run_steps(run: RunRecord, spec: JobSpec, now: float, account_id: int) -> list[dict[str, Any]]:
    """The run's steps at ``now`` (set-up steps first): those begun, each with its status and logs."""
    status = run.status_at(now)
    if now < run.started and status != RunStatus.CANCELLED:
        return []
    names = list(SETUP_STEPS) + [step.name for step in plan.planned(run, spec)]
    failed = plan.errored(run, spec)
    end_of_run = run.end()
    steps: list[dict[str, Any]] = []
    for index, name in enumerate(names, start=1):
        begin, finish = plan.step_window(run, spec, index)  # a run of no duration shows every step
        if begin > min(now, end_of_run) or (run.cancelled_at is not None and begin >= run.cancelled_at):
            break
        if run.cancelled_at is not None and run.cancelled_at < finish and now >= run.cancelled_at:
            step_status, finished_at = RunStatus.CANCELLED, run.cancelled_at
        elif now >= finish:
            step_status, finished_at = (RunStatus.ERROR if index in failed else RunStatus.SUCCESS), finish
        else:
            step_status, finished_at = RunStatus.RUNNING, None
        steps.append(
            {
                "id": run.id * 100 + index,
                "run_id": run.id,
                "account_id": account_id,
                "index": index,
                "status": int(step_status),
                "name": name,
                "logs": step_logs(run, spec, index, name, step_status),
                "debug_logs": "",
                "log_path": None,
                "debug_log_path": None,
                "status_humanized": step_status.label,
                "started_at": timestamp(begin),
                "finished_at": timestamp(finished_at),
                "duration": hms((finished_at or now) - begin),
            }
        )
    return steps


def step_nodes(run: RunRecord, spec: JobSpec, step: PlannedStep) -> list[Node]:
    """(unique_id, status, message) of each node in the step's run_results.json."""
    if step.generates_docs:  # `dbt docs generate` compiles every node first
        models, tests = project.nodes(spec, run)
        compiled = [f"model.{project.PROJECT}.{m}" for m in models] + [project.test_unique_id(t) for t in tests]
        return [(unique_id, "success", None) for unique_id in compiled]
    failing = plan.failing_step(run, spec)
    bad = spec.error_model() if failing is not None and failing.index == step.index else None
    nodes: list[Node] = []
    state = "success"
    for model in step.step.built_models(spec.models):
        if model == bad:
            state = "error"
            message: str | None = (
                f'Database Error in model {model} (models/{model}.sql)\n  column "amount" does not exist'
            )
        elif state in ("error", "skipped"):
            state, message = "skipped", "SKIP"
        else:
            message = "SELECT 100"
        nodes.append((f"model.{project.PROJECT}.{model}", state, message))
    for test in step.step.run_tests(spec.models):
        failed = bad is not None and bad in test
        outcome = ("fail", "Got 3 results") if failed else ("pass", None)
        nodes.append((project.test_unique_id(test), *outcome))
    return nodes


def step_logs(run: RunRecord, spec: JobSpec, index: int, name: str, status: RunStatus) -> str:
    """The step's log text, as dbt prints it (a summary once the step is over)."""
    step = plan.step_at(run, spec, index)
    finished = status in (RunStatus.SUCCESS, RunStatus.ERROR)
    if step is not None and step.checks_freshness:
        return freshness_logs(run, spec, step, finished)
    if step is not None and step.generates_docs:
        return docs_logs(run, spec, finished)
    if step is None or not step.step.leaves_artifacts():
        return f"{name}\nDone.\n"
    nodes = step_nodes(run, spec, step)
    lines = [f"Running with dbt={project.DBT_VERSION}", f"Found {len(nodes)} nodes"]
    if not finished:
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
    lines.append(f"Done. PASS={counts['pass']} WARN=0 ERROR={counts['error']} SKIP={counts['skip']} TOTAL={len(nodes)}")
    return "\n".join(lines) + "\n"


def writes_run_results(step: PlannedStep) -> bool:
    """Whether a step leaves a ``run_results.json`` (``dbt source freshness`` writes ``sources.json`` instead)."""
    return step.step.leaves_artifacts() and not step.checks_freshness


def run_results(run: RunRecord, spec: JobSpec, step: int | None = None) -> dict[str, Any] | None:
    """The ``run_results.json`` a finished run's step leaves; ``None`` for a step that leaves none (set-up steps,
    ``dbt deps``, ``dbt source freshness``). Without ``step``: the last one written, as the run's ``target/``
    holds it at its end (the last step's, as dbt Cloud serves it)."""
    if step is None:
        written = [planned for planned in plan.planned(run, spec) if writes_run_results(planned)]
        command = written[-1] if written else None
    else:
        command = plan.step_at(run, spec, step)
    if command is None or not writes_run_results(command):
        return None
    nodes = step_nodes(run, spec, command)
    each = round(run.run_s / max(len(nodes), 1), 3)
    return {
        "metadata": project.metadata(RUN_RESULTS_SCHEMA, run, str(command.index)),
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
        "args": {"which": "generate" if command.generates_docs else dbt_command(command.command) or "build"},
    }
