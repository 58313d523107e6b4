"""The emulator's API objects, rendered as dbt Cloud serializes them: envelopes, jobs, runs, steps, artifacts.

Pure functions of the records in :mod:`.specs` and a moment ``now``: no state, no locks, no I/O.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from dbt_cloud_gate.dbtcloud_api.emulator.specs import SETUP_STEPS, JobSpec, RunRecord, StepSpec, dbt_command
from dbt_cloud_gate.dbtcloud_api.models import RunStatus, format_timestamp

JSON_HEADERS = {"Content-Type": "application/json"}
# A node of a step's run_results.json: (unique_id, status, message).
Node = tuple[str, str, str | None]


@dataclass
class Reply:
    """What to send back: a response, a response after a delay, or a dropped connection."""

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    drop: bool = False


def timestamp(epoch: float | None) -> str | None:
    """An epoch time as the v2 API writes timestamps (``None`` stays ``None``)."""
    if epoch is None:
        return None
    return format_timestamp(datetime.fromtimestamp(epoch, tz=UTC))


def iso(epoch: float) -> str:
    """An epoch time in ISO 8601 (the job object's and run_results.json's dates)."""
    return datetime.fromtimestamp(epoch, tz=UTC).isoformat()


def hms(seconds: float) -> str:
    """A duration as ``HH:MM:SS``."""
    total = max(0, int(seconds))
    return f"{total // 3600:02d}:{total % 3600 // 60:02d}:{total % 60:02d}"


def envelope(data: Any, code: int = 200, message: str = "Success!", extra: dict[str, Any] | None = None) -> bytes:
    """dbt Cloud's response envelope (``status``, ``data``, and ``extra`` when given), as JSON bytes."""
    body: dict[str, Any] = {
        "status": {"code": code, "is_success": 200 <= code < 300, "user_message": message, "developer_message": ""},
        "data": data,
    }
    if extra is not None:
        body["extra"] = extra
    return json.dumps(body).encode()


def ok(data: Any, extra: dict[str, Any] | None = None) -> Reply:
    """A 200 answer in the envelope."""
    return Reply(200, envelope(data, extra=extra), dict(JSON_HEADERS))


def error(code: int, message: str, data: Any = None) -> Reply:
    """An error answer in the envelope (``data`` holds field errors, as dbt Cloud's 400s do)."""
    return Reply(code, envelope(data, code, message), dict(JSON_HEADERS))


def job_object(spec: JobSpec, account_id: int, now: float) -> dict[str, Any]:
    """The job as ``GET /jobs/{id}/`` first answers it (later ``POST``s change the stored copy)."""
    return {
        "id": spec.id,
        "account_id": account_id,
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
        "created_at": iso(now),
        "updated_at": iso(now),
        "cron_humanized": f"Custom cron: {spec.cron}",
        "next_run": None,
        "next_run_humanized": None,
    }


# -- runs ------------------------------------------------------------------------------------------


def run_json(
    run: RunRecord,
    spec: JobSpec,
    now: float,
    includes: set[str],
    *,
    account_id: int,
    base_url: str,
    job: dict[str, Any],
) -> dict[str, Any]:
    """The run as dbt Cloud serializes it at ``now``, with the related objects named in ``includes``."""
    status = run.status_at(now)
    end = run.end() if status.is_terminal else None
    cancelled_queued = (
        status == RunStatus.CANCELLED and run.cancelled_at is not None and run.cancelled_at < run.dequeued
    )
    dequeued = run.dequeued if now >= run.dequeued and not cancelled_queued else None
    started = run.started if now >= run.started and (end is None or run.started < end) else None
    data = _run_head(run, spec, status, started, account_id)
    data.update(
        {
            "created_at": timestamp(run.created),
            "updated_at": timestamp(min(now, end) if end is not None else now),
            "dequeued_at": timestamp(dequeued),
            "started_at": timestamp(started),
            "finished_at": timestamp(end),
            "last_checked_at": None,
            "last_heartbeat_at": None,
            "should_start_at": None,
            "trigger": None,
            "job": None,
            "environment": None,
            "run_steps": [],
        }
    )
    data.update(_run_tail(run, spec, status, now, end, dequeued, started, base_url, account_id))
    if status == RunStatus.SUCCESS and spec.finished_at_missing:
        data["finished_at"] = None
    if "trigger" in includes:
        trigger = {"id": run.trigger_id, "cause": run.cause, "job_definition_id": run.job_id}
        trigger.update({key: value for key, value in run.overrides.items()})
        trigger["created_at"] = timestamp(run.created)
        data["trigger"] = trigger
    if "job" in includes:
        data["job"] = job
    if "run_steps" in includes:
        data["run_steps"] = run_steps(run, spec, now, account_id)
    return data


def _run_head(
    run: RunRecord, spec: JobSpec, status: RunStatus, started: float | None, account_id: int
) -> dict[str, Any]:
    """The run object's fields up to ``scribe_enabled``, in dbt Cloud's order."""
    has_artifacts = status in (RunStatus.SUCCESS, RunStatus.ERROR)
    message = None
    if status == RunStatus.CANCELLED:
        message = "Cancelled by user."
    elif status == RunStatus.ERROR:
        message = spec.error_message()
    return {
        "id": run.id,
        "trigger_id": run.trigger_id,
        "account_id": account_id,
        "environment_id": spec.environment_id,
        "project_id": spec.project_id,
        "job_definition_id": run.job_id,
        "status": int(status),
        "dbt_version": "1.8.0",
        "git_branch": run.overrides.get("git_branch") or "main",
        "git_sha": run.overrides.get("git_sha") or "981c5cf1ba299e942c6c277c38c8dec9b0738dd0",
        "status_message": message,
        "owner_thread_id": None,
        "executed_by_thread_id": f"dbt-run-{run.id}-emu" if started else None,
        "deferring_run_id": None,
        "artifacts_saved": has_artifacts,
        "artifact_s3_path": f"prod/runs/{run.id}/artifacts/target" if has_artifacts else None,
        "has_docs_generated": False,
        "has_sources_generated": False,
        "notifications_sent": status.is_terminal,
        "blocked_by": [],
        "scribe_enabled": True,
    }


def _run_tail(
    run: RunRecord,
    spec: JobSpec,
    status: RunStatus,
    now: float,
    end: float | None,
    dequeued: float | None,
    started: float | None,
    base_url: str,
    account_id: int,
) -> dict[str, Any]:
    """The run object's fields from ``status_humanized`` on: flags, link, durations."""
    terminal = status.is_terminal
    reference = end if end is not None else now
    return {
        "status_humanized": status.label,
        "in_progress": not terminal,
        "is_complete": terminal,
        "is_success": status == RunStatus.SUCCESS,
        "is_error": status == RunStatus.ERROR,
        "is_cancelled": status == RunStatus.CANCELLED,
        "href": f"{base_url}/deploy/{account_id}/projects/{spec.project_id}/runs/{run.id}/",
        "duration": hms(reference - run.created),
        "queued_duration": hms((dequeued or reference) - run.created),
        "run_duration": hms(reference - started if started else 0),
        "duration_humanized": f"{int(reference - run.created)} seconds",
        "queued_duration_humanized": f"{int((dequeued or reference) - run.created)} seconds",
        "run_duration_humanized": f"{int(reference - started) if started else 0} seconds",
        "created_at_humanized": "just now",
        "finished_at_humanized": "just now" if terminal else "0 minutes from now",
        "job_id": run.job_id,
        "retried_from_run_id": run.retry_of,
    }


# -- steps -----------------------------------------------------------------------------------------


def run_steps(run: RunRecord, spec: JobSpec, now: float, account_id: int) -> list[dict[str, Any]]:
    """The run's steps at ``now`` (set-up steps first): those begun, each with its status and logs."""
    status = run.status_at(now)
    if now < run.started and status != RunStatus.CANCELLED:
        return []
    names = list(SETUP_STEPS) + [f"Invoke dbt with `{step}`" for step in run.steps]
    each = max(run.finished - run.started, 0.0) / len(names)  # a run of no duration shows every step
    end_of_run = run.end()
    steps: list[dict[str, Any]] = []
    for index, name in enumerate(names, start=1):
        begin = run.started + each * (index - 1)
        finish = begin + each
        if begin > min(now, end_of_run) or (run.cancelled_at is not None and begin >= run.cancelled_at):
            break
        if run.cancelled_at is not None and run.cancelled_at < finish and now >= run.cancelled_at:
            step_status, finished_at = RunStatus.CANCELLED, run.cancelled_at
        elif now >= finish:
            failed = index == len(names) and run.outcome == "error"
            step_status, finished_at = (RunStatus.ERROR if failed else RunStatus.SUCCESS), finish
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


def step_at(run: RunRecord, spec: JobSpec, index: int) -> StepSpec | None:
    """The command step at a run-step index (1-based over every step, set-up steps included), if any.

    The job's ``steps`` describe the run when it kept the job's commands; otherwise each command gets defaults.
    """
    position = index - len(SETUP_STEPS) - 1
    if spec.steps is not None and [step.command for step in spec.steps] == run.steps:
        specs = list(spec.steps)
    else:
        specs = [StepSpec(command) for command in run.steps]
    return specs[position] if 0 <= position < len(specs) else None


def step_nodes(run: RunRecord, spec: JobSpec, step: StepSpec, last: bool) -> list[Node]:
    """(unique_id, status, message) of each node in the step's run_results.json."""
    bad = spec.error_model() if last and run.outcome == "error" else None
    nodes: list[Node] = []
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
        outcome = ("fail", "Got 3 results") if failed else ("pass", None)
        nodes.append((test_unique_id(test), *outcome))
    return nodes


def test_unique_id(test: str) -> str:
    """A test's unique ID, as in run_results.json and manifest.json (``test.analytics.<name>.<digest>``)."""
    return f"test.analytics.{test}.{hashlib.sha256(test.encode()).hexdigest()[:10]}"


def step_logs(run: RunRecord, spec: JobSpec, index: int, name: str, status: RunStatus) -> str:
    """The step's log text, as dbt prints it (a summary line once the step is over)."""
    step = step_at(run, spec, index)
    if step is None or not step.leaves_artifacts():
        return f"{name}\nDone.\n"
    nodes = step_nodes(run, spec, step, last=status == RunStatus.ERROR)
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
    lines.append(f"Done. PASS={counts['pass']} WARN=0 ERROR={counts['error']} SKIP={counts['skip']} TOTAL={len(nodes)}")
    return "\n".join(lines) + "\n"


# -- artifacts -------------------------------------------------------------------------------------


def run_results(run: RunRecord, spec: JobSpec, step: int | None = None) -> dict[str, Any] | None:
    """The ``run_results.json`` a finished run's step leaves (default: the last step, as dbt Cloud serves it);
    ``None`` for a step that leaves none (set-up steps, ``dbt deps``)."""
    total = len(SETUP_STEPS) + len(run.steps)
    index = total if step is None else step
    command = step_at(run, spec, index)
    if command is None or not command.leaves_artifacts():
        return None
    nodes = step_nodes(run, spec, command, last=index == total)
    each = round(run.run_s / max(len(nodes), 1), 3)
    return {
        "metadata": {
            "dbt_schema_version": "https://schemas.getdbt.com/dbt/run-results/v5.json",
            "dbt_version": "1.8.0",
            "generated_at": iso(run.finished),
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
