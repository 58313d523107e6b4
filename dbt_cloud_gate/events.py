"""Prefect events about dbt Cloud runs: names, resource IDs and labels, in one place.

The webhook receiver writes them and the waiter reads them::

    event     dbt-cloud.run.webhook.<started|completed|errored>
    resource  dbt-cloud.run.<run_id>        labels dbt-cloud.run-id, dbt-cloud.job-id, dbt-cloud.account-id,
                                            dbt-cloud.event-type, dbt-cloud.run-status-code (strings)
    related   dbt-cloud.job.<job_id> (role job), dbt-cloud.account.<account_id> (role account)
    id        uuid5(EVENT_ID_NAMESPACE, dbt eventId): a redelivery is the same event, dropped by the server

A webhook event only says that something happened; the run's outcome and ``finished_at`` are read from the API.
The flows' own outcome events (``dbt-cloud.run.succeeded``...) share the resource; an Automation that must fire
once per run matches those by exact name (``dbt-cloud.run.*`` would match the webhook events too).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from prefect.events import Event
from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

from dbt_cloud_gate.dbtcloud_api.webhooks import EventKind, WebhookDelivery

WEBHOOK_EVENT_PREFIX = "dbt-cloud.run.webhook."
WEBHOOK_EVENT_STARTED = "dbt-cloud.run.webhook.started"
WEBHOOK_EVENT_COMPLETED = "dbt-cloud.run.webhook.completed"
WEBHOOK_EVENT_ERRORED = "dbt-cloud.run.webhook.errored"
WEBHOOK_EVENT_NAMES: tuple[str, ...] = (WEBHOOK_EVENT_STARTED, WEBHOOK_EVENT_COMPLETED, WEBHOOK_EVENT_ERRORED)
# Events after which the run may be over: a waiter woken by one confirms with one GET of the run.
TERMINAL_WEBHOOK_EVENT_NAMES: tuple[str, ...] = (WEBHOOK_EVENT_COMPLETED, WEBHOOK_EVENT_ERRORED)

RUN_RESOURCE_PREFIX = "dbt-cloud.run."
LABEL_RUN_ID = "dbt-cloud.run-id"
LABEL_JOB_ID = "dbt-cloud.job-id"
LABEL_ACCOUNT_ID = "dbt-cloud.account-id"
LABEL_EVENT_TYPE = "dbt-cloud.event-type"
LABEL_STATUS_CODE = "dbt-cloud.run-status-code"

# Fixed forever: changing it would make redeliveries after an upgrade new events.
EVENT_ID_NAMESPACE = uuid.UUID("4f1d5b0e-2c57-5d7e-9a55-6462742d636c")


def webhook_event_name(kind: EventKind) -> str:
    """``dbt-cloud.run.webhook.<kind>``."""
    return f"{WEBHOOK_EVENT_PREFIX}{kind}"


def run_resource_id(run_id: int) -> str:
    """``dbt-cloud.run.<run_id>``: the resource every event about a run is on."""
    return f"{RUN_RESOURCE_PREFIX}{int(run_id)}"


def job_resource_id(job_id: int) -> str:
    """``dbt-cloud.job.<job_id>``."""
    return f"dbt-cloud.job.{int(job_id)}"


def account_resource_id(account_id: int) -> str:
    """``dbt-cloud.account.<account_id>``."""
    return f"dbt-cloud.account.{int(account_id)}"


def event_uuid(dbt_event_id: str) -> uuid.UUID:
    """The Prefect event ID of a dbt Cloud event: the same for every redelivery of it."""
    return uuid.uuid5(EVENT_ID_NAMESPACE, dbt_event_id)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def webhook_event(delivery: WebhookDelivery, *, received: datetime | None = None) -> Event:
    """The Prefect event for a verified delivery of a known kind (``delivery.kind`` not ``None``).

    ``occurred`` is when the receiver got it, not dbt's ``timestamp``: a delivery retried minutes later must
    still reach a subscriber whose window starts a minute back. dbt's timestamps go in the payload.
    """
    if delivery.kind is None:
        raise ValueError(f"no Prefect event for a delivery of type {delivery.event_type!r}")
    data = delivery.data
    resource = {
        "prefect.resource.id": run_resource_id(data.run_id),
        "prefect.resource.name": f"dbt Cloud run {data.run_id}",
        LABEL_RUN_ID: str(data.run_id),
        LABEL_JOB_ID: str(data.job_id),
        LABEL_ACCOUNT_ID: str(delivery.account_id),
        LABEL_EVENT_TYPE: delivery.event_type,
    }
    if data.run_status_code is not None:
        resource[LABEL_STATUS_CODE] = str(data.run_status_code)
    payload: dict[str, Any] = {
        "dbt_event_id": delivery.event_id,
        "event_type": delivery.event_type,
        "account_id": delivery.account_id,
        "job_id": data.job_id,
        "run_id": data.run_id,
        "environment_id": data.environment_id,
        "project_id": data.project_id,
        "run_status": data.run_status,
        "run_status_code": data.run_status_code,
        "run_status_message": data.run_status_message,
        "run_reason": data.run_reason,
        "webhook_id": delivery.webhook_id,
        "dbt_timestamp": _iso(delivery.timestamp),
        "run_started_at": _iso(data.run_started_at),
        "run_ended_at": _iso(data.run_finished_at or data.run_errored_at),
    }
    return Event(
        id=event_uuid(delivery.event_id),
        occurred=received or datetime.now(UTC),
        event=webhook_event_name(delivery.kind),
        resource=resource,
        related=[
            {"prefect.resource.id": job_resource_id(data.job_id), "prefect.resource.role": "job"},
            {"prefect.resource.id": account_resource_id(delivery.account_id), "prefect.resource.role": "account"},
        ],
        payload=payload,
    )


def run_id_of(event: Event) -> int | None:
    """The dbt Cloud run an event is about (from its resource), or ``None`` if it is not on a run."""
    resource_id = event.resource.id
    if not resource_id.startswith(RUN_RESOURCE_PREFIX):
        return None
    tail = resource_id[len(RUN_RESOURCE_PREFIX) :]
    return int(tail) if tail.isdigit() else None


def webhook_event_filter(run_ids: Iterable[int] | None = None, *, terminal_only: bool = False) -> EventFilter:
    """The filter a subscriber uses: webhook events (only the terminal ones, if asked), of some runs or all."""
    names = TERMINAL_WEBHOOK_EVENT_NAMES if terminal_only else WEBHOOK_EVENT_NAMES
    resource = (
        EventResourceFilter(id=[run_resource_id(run_id) for run_id in run_ids])
        if run_ids is not None
        else EventResourceFilter(id_prefix=[RUN_RESOURCE_PREFIX])
    )
    return EventFilter(event=EventNameFilter(name=list(names)), resource=resource)
