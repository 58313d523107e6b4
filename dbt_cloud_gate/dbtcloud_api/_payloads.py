"""What goes in and comes out, with no I/O: request bodies (a trigger's, a job update's) and dbt Cloud's envelope.

Every v2 and v3 answer is ``{"status": {...}, "data": ..., "extra": {...}}``; a 2xx answer that is not (an HTML
page from a proxy, other JSON) or whose ``data`` cannot be read is a ``DbtCloudResponseError``, which the retry
rules treat as unreadable.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import httpx

from dbt_cloud_gate.dbtcloud_api._config import MAX_CAUSE_LENGTH
from dbt_cloud_gate.dbtcloud_api._retry import body_summary
from dbt_cloud_gate.dbtcloud_api.errors import DbtCloudConfigError, DbtCloudResponseError
from dbt_cloud_gate.dbtcloud_api.models import Job

__all__ = [
    "TRIGGER_OVERRIDES",
    "bracketed",
    "clip_cause",
    "envelope_data",
    "job_update_body",
    "parser",
    "trigger_body",
]

logger = logging.getLogger("dbt_cloud_gate.dbtcloud_api")

T = TypeVar("T")


def envelope_data(call_label: str, response: httpx.Response) -> tuple[Any, dict[str, Any]]:
    """The envelope's ``data`` and ``extra`` (``{}`` when absent); a ``DbtCloudResponseError`` if not an envelope."""
    try:
        body = response.json()
    except (ValueError, UnicodeDecodeError):
        raise DbtCloudResponseError(
            f"{call_label} answered {response.status_code} with a body that is not JSON ({body_summary(response)}); "
            "a proxy or captive portal may stand between this machine and dbt Cloud."
        ) from None
    if not isinstance(body, dict) or "data" not in body:
        raise DbtCloudResponseError(
            f"{call_label} answered {response.status_code} with JSON that is not the dbt Cloud envelope "
            f"(no 'data' object; {body_summary(response)})."
        )
    raw_extra = body.get("extra")
    extra: dict[str, Any] = raw_extra if isinstance(raw_extra, dict) else {}
    return body["data"], extra


def parser(label: str, model: Callable[[Any], T]) -> Callable[[httpx.Response], T]:
    """Read the envelope's ``data`` with ``model``; anything unreadable is a ``DbtCloudResponseError``."""

    def parse(response: httpx.Response) -> T:
        data, _ = envelope_data(label, response)
        try:
            return model(data)
        except ValueError as exc:
            raise DbtCloudResponseError(f"{label} answered with data this client cannot read: {exc}") from exc

    return parse


def bracketed(values: Sequence[int]) -> str:
    """IDs as the API takes a list in a query string: ``[1,2,3]``."""
    return "[" + ",".join(str(int(v)) for v in values) + "]"


def clip_cause(cause: str) -> str:
    """The cause as dbt Cloud will take it: stripped, non-empty, at most 255 characters (cut with a warning)."""
    text = (cause or "").strip()
    if not text:
        raise DbtCloudConfigError("A run's cause must not be empty: say why the job is being run.")
    if len(text) > MAX_CAUSE_LENGTH:
        logger.warning(
            "The run cause is %d characters; dbt Cloud takes at most %d, so it was cut.", len(text), MAX_CAUSE_LENGTH
        )
        text = text[:MAX_CAUSE_LENGTH]
    return text


TRIGGER_OVERRIDES = (
    "git_sha",
    "git_branch",
    "azure_pull_request_id",
    "github_pull_request_id",
    "gitlab_merge_request_id",
    "non_native_pull_request_id",
    "schema_override",
    "dbt_version_override",
    "threads_override",
    "target_name_override",
    "generate_docs_override",
    "timeout_seconds_override",
    "steps_override",
)

# Fields that the job update request schema requires; an older job object may lack some of them.
_JOB_UPDATE_DEFAULTS: dict[str, Any] = {
    "errors_on_lint_failure": False,
    "run_compare_changes": False,
    "run_generate_sources": False,
    "run_lint": False,
    "generate_docs": False,
    "lifecycle_webhooks": False,
    "state": 1,
    "execution": {"timeout_seconds": 0},
    "settings": {"threads": 4, "target_name": "default"},
}


def job_update_body(job: Job | dict[str, Any]) -> dict[str, Any]:
    """The whole-job body the update endpoint takes, from a job as read (nulls dropped, required fields filled)."""
    raw = job.model_dump(mode="json") if isinstance(job, Job) else json.loads(json.dumps(job, default=str))
    body = {key: value for key, value in raw.items() if value is not None}
    for key, default in _JOB_UPDATE_DEFAULTS.items():
        body.setdefault(key, default)
    triggers = dict(body.get("triggers") or {})
    triggers = {key: value for key, value in triggers.items() if value is not None}
    triggers.setdefault("github_webhook", False)
    triggers.setdefault("schedule", False)
    body["triggers"] = triggers
    if "description" in body and not body["description"]:
        del body["description"]
    return body


def trigger_body(cause: str, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The body of a trigger request: the cause (clipped) and the overrides given, each known and checked."""
    body: dict[str, Any] = {"cause": clip_cause(cause)}
    unknown = set(overrides) - set(TRIGGER_OVERRIDES)
    if unknown:
        raise DbtCloudConfigError(f"Unknown trigger override(s): {', '.join(sorted(unknown))}.")
    for name in TRIGGER_OVERRIDES:
        value = overrides.get(name)
        if value is None:
            continue
        if name == "steps_override":
            steps = [str(step).strip() for step in value]
            if not steps or not all(steps):
                raise DbtCloudConfigError("steps_override must be a non-empty list of dbt commands.")
            value = steps
        body[name] = value
    return body
