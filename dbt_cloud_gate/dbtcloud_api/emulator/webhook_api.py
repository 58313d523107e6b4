"""The emulator's v3 webhook-subscription endpoints and its webhook admin endpoints, over a :class:`WebhookHub`.

Requests arrive here authenticated and validated against the v3 spec (:mod:`.routes` does both); each function
answers with (status code, the envelope's data, its extra) and leaves the envelope to the caller.
"""

from __future__ import annotations

import re
from dataclasses import asdict
from typing import Any

from dbt_cloud_gate.dbtcloud_api.emulator.webhooks import WebhookFault, WebhookHub
from dbt_cloud_gate.dbtcloud_api.webhooks import EVENT_TYPES

# What one API call answers: status code, the envelope's data, and its extra (or None).
V3Answer = tuple[int, Any, dict[str, Any] | None]

_SUBSCRIPTION_PATH = re.compile(r"webhooks/subscription/([^/]+)(/test)?")
# What ``POST /_emulator/webhooks/settings`` may change on the hub.
HUB_SETTINGS = (
    "completed_delay_seconds",
    "deactivate_after",
    "max_retries",
    "retry_delays",
    "timeout_seconds",
    "webhook_id_key",
)


def handle(hub: WebhookHub, method: str, rest: str, query: dict[str, list[str]], body: Any, now: float) -> V3Answer:
    """Answer one ``/api/v3/accounts/{id}/<rest>`` request (already authenticated and validated)."""
    if rest == "webhooks/subscriptions":
        if method == "GET":
            return _list(hub, query)
        if method == "POST":
            settings, errors = checked_body(body)
            if settings is None:
                return 400, errors, None
            return 201, hub.create(settings, now).to_json(with_secret=True), None
        return 405, None, None
    found = _SUBSCRIPTION_PATH.fullmatch(rest)
    if found is None:
        return 404, None, None
    subscription = hub.get(found.group(1))
    if subscription is None:
        return 404, None, None
    if found.group(2):
        return (200, {"event_id": hub.send_test(subscription, now)}, None) if method == "GET" else (405, None, None)
    if method == "GET":
        return 200, subscription.to_json(), None
    if method == "PUT":
        settings, errors = checked_body(body)
        if settings is None:
            return 400, errors, None
        hub.update(subscription, settings, now)
        return 200, subscription.to_json(), None
    if method == "DELETE":
        hub.delete(subscription.id)
        return 200, {"id": subscription.id}, None
    return 405, None, None


def _list(hub: WebhookHub, query: dict[str, list[str]]) -> V3Answer:
    try:
        limit = int((query.get("limit") or ["100"])[-1])
        offset = int((query.get("offset") or ["0"])[-1])
    except ValueError:
        return 400, {"limit": ["A valid integer is required."]}, None
    everything = hub.list_subscriptions()
    page = everything[offset : offset + limit]
    extra = {
        "filters": {"limit": limit, "offset": offset},
        "pagination": {"count": len(page), "total_count": len(everything)},
    }
    return 200, [s.to_json() for s in page], extra


def checked_body(body: Any) -> tuple[dict[str, Any] | None, dict[str, list[str]]]:
    """The body's subscription settings, or the field errors dbt Cloud would answer with."""
    if not isinstance(body, dict):
        return None, {"__all__": ["A JSON object is required."]}
    errors: dict[str, list[str]] = {}
    event_types = body.get("event_types")
    if not isinstance(event_types, list) or not event_types:
        errors["event_types"] = ["This list may not be empty."]
    elif any(kind not in EVENT_TYPES for kind in event_types):
        errors["event_types"] = [f"Event types must be among {list(EVENT_TYPES)}."]
    url = body.get("client_url")
    if not isinstance(url, str) or not re.match(r"^https?://[^\s/]+", url):
        errors["client_url"] = ["Enter a valid URL."]
    if not str(body.get("name") or "").strip():
        errors["name"] = ["This field may not be blank."]
    job_ids = body.get("job_ids") or []
    if not isinstance(job_ids, list) or any(isinstance(j, bool) or not isinstance(j, int) for j in job_ids):
        errors["job_ids"] = ["A list of integers is required."]
    if errors:
        return None, errors
    return {
        "name": str(body["name"]).strip(),
        "description": str(body.get("description") or ""),
        "client_url": url,
        "event_types": list(event_types or []),
        "job_ids": [int(j) for j in job_ids],
        "active": bool(body.get("active", True)),
    }, {}


def admin(hub: WebhookHub, method: str, rest: str, body: Any) -> tuple[int, Any]:
    """``/_emulator/webhooks/<rest>``: ``deliveries`` (GET), ``faults`` (POST one, DELETE all),
    ``settings`` (POST any of :data:`HUB_SETTINGS`)."""
    if method == "GET" and rest == "deliveries":
        return 200, [asdict(d) for d in hub.delivery_log()]
    if rest == "faults" and method == "POST":
        try:
            return 200, asdict(hub.add_fault(WebhookFault.from_dict(body or {})))
        except (TypeError, ValueError) as exc:
            return 400, str(exc)
    if rest == "faults" and method == "DELETE":
        hub.clear_faults()
        return 200, []
    if rest == "settings" and method == "POST":
        unknown = set(body or {}) - set(HUB_SETTINGS)
        if unknown or not isinstance(body, dict):
            return 400, f"unknown webhook setting(s) {sorted(unknown)}; known: {sorted(HUB_SETTINGS)}"
        for name, value in body.items():
            setattr(hub, name, tuple(value) if name == "retry_delays" else value)
        return 200, {name: getattr(hub, name) for name in HUB_SETTINGS}
    return 404, "Unknown emulator webhook admin endpoint."
