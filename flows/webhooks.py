"""The webhook health-check flow: keep the dbt Cloud webhook subscription right, on a schedule.

``python -m flows.webhooks ensure --receiver-url https://hooks.example.com/dbt-cloud/webhooks --job-id 123`` runs
it once from a shell (credentials from ``--credentials``, ``DBT_CLOUD_CREDENTIALS_BLOCK`` or ``DBT_CLOUD_*``).
"""

from __future__ import annotations

import argparse
import json

from prefect import flow, get_run_logger

from dbt_cloud_gate.blocks.dbt_cloud import DbtCloudCredentials, resolve_credentials
from dbt_cloud_gate.tasks.webhooks import (
    DEFAULT_SECRET_BLOCK,
    DEFAULT_SUBSCRIPTION_NAME,
    WebhookReport,
    ensure_dbt_cloud_webhook,
)


# The task's parameters again, on purpose: a deployment's form is built from the flow's own signature.
@flow(name="ensure-dbt-cloud-webhooks", log_prints=False)
def ensure_dbt_cloud_webhooks(
    receiver_url: str,
    job_ids: list[int] | None = None,
    credentials: DbtCloudCredentials | str | None = None,
    secret_block: str = DEFAULT_SECRET_BLOCK,
    name: str = DEFAULT_SUBSCRIPTION_NAME,
    send_test_delivery: bool = False,
) -> WebhookReport:
    """Ensure the subscription exists, is active and covers the jobs; optionally have dbt Cloud send a test.

    Args:
        receiver_url: The public https URL of the webhook receiver (behind its TLS proxy).
        job_ids: The dbt Cloud jobs whose run events to send; empty for every job of the account.
        credentials: A dbt Cloud credentials block, or the name of a saved one; default: the environment.
        secret_block: The Prefect Secret block that holds the subscriptions' HMAC secrets (the receiver reads it).
        name: The subscription's name in dbt Cloud.
        send_test_delivery: Ask dbt Cloud to send its sample delivery to the receiver (checks the path end to end).
    """
    report = ensure_dbt_cloud_webhook(
        receiver_url, job_ids, credentials=credentials, secret_block=secret_block, name=name
    )
    if send_test_delivery:
        with resolve_credentials(credentials).get_client() as client:
            answer = client.test_webhook_subscription(report.subscription_id)
        get_run_logger().info("dbt Cloud sent a test delivery (event %s)", answer.get("event_id"))
    return report


def main(argv: list[str] | None = None) -> int:
    """``ensure``: run the flow once and print its report as JSON."""
    parser = argparse.ArgumentParser(prog="python -m flows.webhooks", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    ensure = commands.add_parser("ensure", help="create, re-activate or update the subscription")
    ensure.add_argument("--receiver-url", required=True)
    ensure.add_argument("--job-id", type=int, action="append", default=[], help="repeatable; none: every job")
    ensure.add_argument("--credentials", help="the name of a saved dbt Cloud credentials block")
    ensure.add_argument("--secret-block", default=DEFAULT_SECRET_BLOCK)
    ensure.add_argument("--name", default=DEFAULT_SUBSCRIPTION_NAME)
    ensure.add_argument("--test", action="store_true", help="have dbt Cloud send its sample delivery")
    args = parser.parse_args(argv)
    report = ensure_dbt_cloud_webhooks(
        args.receiver_url,
        args.job_id,
        credentials=args.credentials,
        secret_block=args.secret_block,
        name=args.name,
        send_test_delivery=args.test,
    )
    print(json.dumps(report.model_dump(), indent=2))
    return 0 if report.active else 1


if __name__ == "__main__":
    raise SystemExit(main())
