"""The emulator's API objects, rendered as dbt Cloud serializes them: envelopes, jobs, runs, steps, artifacts.

Pure functions of the records in :mod:`.specs` and a moment ``now``: no state, no locks, no I/O.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from dbt_cloud_gate.dbtcloud_api.emulator import plan
from dbt_cloud_gate.dbtcloud_api.emulator.specs import JobSpec, RunRecord
from dbt_cloud_gate.dbtcloud_api.emulator.steps import run_steps
from dbt_cloud_gate.dbtcloud_api.emulator.times import hms, iso, timestamp
from dbt_cloud_gate.dbtcloud_api.models import RunStatus

JSON_HEADERS = {"Content-Type": "application/json"}


@dataclass
class Reply:
    """What to send back: a response, a response after a delay, or a dropped connection."""

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    drop: bool = False


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
        "generate_docs": spec.generate_docs,
        "run_generate_sources": spec.run_generate_sources,
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
    docs, sources = plan.generated(run, spec, status)
    message = None
    if status == RunStatus.CANCELLED:
        message = "Cancelled by user."
    elif status == RunStatus.ERROR:
        message = plan.error_message(run, spec)
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
        "has_docs_generated": docs,
        "has_sources_generated": sources,
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
