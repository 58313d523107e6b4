"""The Prefect task that sends a failure alert to notification blocks (the token scrubbed from every word)."""

from __future__ import annotations

import inspect
from collections.abc import Sequence

from prefect import get_run_logger, task
from prefect.blocks.notifications import NotificationBlock
from prefect.cache_policies import NO_CACHE
from prefect.utilities.asyncutils import run_coro_as_sync

from dbt_cloud_gate.alerts import load_notification_block
from dbt_cloud_gate.dbtcloud_api.errors import (
    scrub,
)


@task(name="send-dbt-cloud-alert", cache_policy=NO_CACHE)
def send_dbt_cloud_alert(
    alert_blocks: Sequence[str | NotificationBlock], subject: str, body: str, secret: str | None = None
) -> dict[str, str]:
    """Send one alert through each block; returns block → "sent" or the error. A failure never raises."""
    log = get_run_logger()
    outcome: dict[str, str] = {}
    for reference in alert_blocks:
        name = reference if isinstance(reference, str) else type(reference).__name__
        try:
            block = load_notification_block(reference)
            sent = block.notify(scrub(body, secret), scrub(subject, secret))
            if inspect.isawaitable(sent):  # a custom block with only an async notify
                run_coro_as_sync(sent)
        except Exception as exc:  # an alert that fails must not hide the run's failure
            outcome[name] = f"failed: {scrub(str(exc), secret)}"
            log.error("Could not send the dbt Cloud alert through %s: %s", name, scrub(str(exc), secret))
        else:
            outcome[name] = "sent"
            log.info("Sent the dbt Cloud alert through %s.", name)
    return outcome
