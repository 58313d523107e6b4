"""The ``ensure-dbt-cloud-webhook`` task: a dbt Cloud webhook subscription for some jobs, pointed at a receiver.

It finds the subscription by its receiver URL and makes it right: creates it (storing the ``hmac_secret`` dbt
Cloud shows once in a Prefect ``Secret`` block, keyed by the subscription ID, beside any other subscriptions'
secrets the block holds), re-activates it when dbt Cloud deactivated it (after 5 failed deliveries), updates its
jobs and event types when they differ, and recreates it when the block lost its secret (a subscription whose
deliveries nobody can verify is worth nothing). Run on a schedule, it is the health check of the webhooks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, cast

from prefect import get_run_logger, task
from prefect.blocks.system import Secret
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from dbt_cloud_gate.blocks.dbt_cloud import DbtCloudCredentials, resolve_credentials
from dbt_cloud_gate.dbtcloud_api import DbtCloudClient, DbtCloudNotFoundError
from dbt_cloud_gate.dbtcloud_api.webhooks import EVENT_TYPES, WebhookSubscription, check_client_url
from dbt_cloud_gate.receiver import DEFAULT_SECRET_BLOCK

DEFAULT_SUBSCRIPTION_NAME = "dbt-cloud-gate"
Action = Literal["created", "reactivated", "updated", "unchanged", "recreated"]


class WebhookReport(BaseModel):
    """What the task found and did; ``last_status`` is the HTTP status of the last delivery (``0``: none yet)."""

    subscription_id: str
    action: Action
    active: bool
    client_url: str
    job_ids: list[int]
    event_types: list[str]
    secret_block: str
    last_status: str | None = None
    last_dispatched_at: str | None = None
    deactivate_reason: str | None = None


def _read_block(name: str) -> dict[str, str]:
    """The secrets a Secret block holds (an object of subscription ID to secret); empty if it does not exist."""
    try:
        block = cast(Secret, Secret.load(name, _sync=True))  # type: ignore[call-arg]
    except ValueError:  # not saved yet
        return {}
    value: Any = block.get()
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}


def _write_block(name: str, secrets: dict[str, str]) -> None:
    Secret(value=secrets).save(name, overwrite=True, _sync=True)  # type: ignore[call-arg]


def _pick(subscriptions: list[WebhookSubscription], url: str, name: str) -> tuple[WebhookSubscription | None, int]:
    """The subscription to keep for ``url`` (same name first), and how many others point at it."""
    same_url = [s for s in subscriptions if s.client_url.strip() == url]
    same_url.sort(key=lambda s: (s.name != name, not s.active))
    return (same_url[0] if same_url else None), max(0, len(same_url) - 1)


def ensure_webhook(
    client: DbtCloudClient,
    receiver_url: str,
    *,
    job_ids: Sequence[int] = (),
    event_types: Sequence[str] = EVENT_TYPES,
    secret_block: str = DEFAULT_SECRET_BLOCK,
    name: str = DEFAULT_SUBSCRIPTION_NAME,
    log: Any = None,
) -> WebhookReport:
    """The task's logic on a given client (see the module docstring)."""
    url = check_client_url(receiver_url)
    wanted_jobs = sorted(set(job_ids))
    wanted_types = list(dict.fromkeys(event_types))
    settings: dict[str, Any] = {"job_ids": wanted_jobs, "event_types": wanted_types, "active": True}
    secrets = _read_block(secret_block)
    current, others = _pick(client.list_webhook_subscriptions(), url, name)
    if others and log is not None:
        log.warning(
            "%d other dbt Cloud webhook subscription(s) also point at %s; only %s is kept right",
            others,
            url,
            current.id if current else "one",
        )
    action: Action
    previous_reason: str | None = None
    if current is not None and current.id not in secrets:
        # dbt Cloud shows a secret once: without it no delivery can be verified, so start over.
        try:
            client.delete_webhook_subscription(current.id)
        except DbtCloudNotFoundError:
            pass
        current, action = None, "recreated"
    else:
        action = "created"
    if current is None:
        made = client.create_webhook_subscription(name, url, **settings)
        if made.hmac_secret is None:
            raise RuntimeError(f"dbt Cloud created webhook subscription {made.id} without an hmac_secret.")
        secrets[made.id] = made.hmac_secret.get_secret_value()
        _write_block(secret_block, secrets)
        result = made
    else:
        previous_reason = current.deactivate_reason
        differs = sorted(current.job_ids) != wanted_jobs or set(current.event_types) != set(wanted_types)
        if not current.active or differs:
            action = "reactivated" if not current.active else "updated"
            result = client.update_webhook_subscription(
                current.id, current.name or name, url, description=current.description or "", **settings
            )
        else:
            action, result = "unchanged", current
    report = WebhookReport(
        subscription_id=result.id,
        action=action,
        active=result.active,
        client_url=result.client_url or url,
        job_ids=sorted(result.job_ids),
        event_types=list(result.event_types),
        secret_block=secret_block,
        last_status=result.http_status_code,
        last_dispatched_at=result.dispatched_at,
        deactivate_reason=previous_reason or result.deactivate_reason,
    )
    if log is not None:
        jobs = ", ".join(map(str, report.job_ids)) or "every job"
        log.info(
            "dbt Cloud webhook subscription %s %s: %s for %s, last delivery status %s",
            report.subscription_id,
            action,
            report.client_url,
            jobs,
            report.last_status or "none",
        )
        if action == "reactivated":
            log.warning("It had been deactivated by dbt Cloud: %s", previous_reason or "no reason given")
        if report.last_status not in (None, "0") and not report.last_status.startswith("2"):
            log.warning("The last delivery to %s answered %s: check the receiver.", url, report.last_status)
    return report


@task(name="ensure-dbt-cloud-webhook", cache_policy=NO_CACHE)
def ensure_dbt_cloud_webhook(
    receiver_url: str,
    job_ids: list[int] | None = None,
    *,
    credentials: DbtCloudCredentials | str | None = None,
    secret_block: str = DEFAULT_SECRET_BLOCK,
    name: str = DEFAULT_SUBSCRIPTION_NAME,
    event_types: list[str] | None = None,
) -> WebhookReport:
    """Make sure a dbt Cloud webhook subscription sends the jobs' run events to ``receiver_url``.

    ``job_ids`` empty or ``None``: every job of the account. The subscription's secret is kept in the ``Secret``
    block ``secret_block`` (an object of subscription ID to secret, which the receiver reads).
    """
    client = resolve_credentials(credentials).get_client()
    with client:
        return ensure_webhook(
            client,
            receiver_url,
            job_ids=job_ids or (),
            event_types=event_types or EVENT_TYPES,
            secret_block=secret_block,
            name=name,
            log=get_run_logger(),
        )
