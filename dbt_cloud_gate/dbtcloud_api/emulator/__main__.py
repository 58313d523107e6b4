"""``python -m dbt_cloud_gate.dbtcloud_api.emulator [--port 8765] [--jobs jobs.json]``: serve the emulator until Ctrl-C.

Webhook subscriptions are made through the v3 API as in dbt Cloud; ``--webhook-fault`` injects delivery faults.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from dbt_cloud_gate.dbtcloud_api.emulator.jobs import DEMO_ACCOUNT_ID, DEMO_TOKEN, demo_emulator
from dbt_cloud_gate.dbtcloud_api.emulator.routes import Emulator
from dbt_cloud_gate.dbtcloud_api.emulator.server import EmulatorServer
from dbt_cloud_gate.dbtcloud_api.emulator.webhooks import WebhookFault
from dbt_cloud_gate.dbtcloud_api.openapi import load_default_validator


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and serve."""
    parser = argparse.ArgumentParser(prog="python -m dbt_cloud_gate.dbtcloud_api.emulator", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8765, help="port (0 picks a free one; default 8765)")
    parser.add_argument("--jobs", help='JSON file of jobs: {"jobs": [{"id": 1, "run_seconds": 5, ...}]}')
    parser.add_argument("--account-id", type=int, default=DEMO_ACCOUNT_ID)
    parser.add_argument("--token", default=DEMO_TOKEN, help="the API token the emulator accepts")
    parser.add_argument("--rate-limit", type=int, default=None, help="requests per minute before 429s")
    parser.add_argument("--no-spec", action="store_true", help="do not validate requests against the OpenAPI spec")
    parser.add_argument(
        "--webhook-fault",
        action="append",
        default=[],
        metavar="JSON",
        help='a webhook delivery fault, e.g. \'{"kind": "drop", "probability": 0.1}\' (drop, delay, bad_signature, '
        "duplicate); repeatable",
    )
    parser.add_argument(
        "--webhook-id-key",
        choices=("webhookId", "webhooksID"),
        default="webhookId",
        help="the webhook-id key of bodies",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    validator = None if args.no_spec else load_default_validator()
    if validator is None and not args.no_spec:
        print(
            "warning: the OpenAPI spec was not found (set DBT_CLOUD_OPENAPI_SPEC); requests are not validated",
            file=sys.stderr,
        )
    options = {
        "account_id": args.account_id,
        "token": args.token,
        "validator": validator,
        "rate_limit_per_minute": args.rate_limit,
    }
    try:
        emulator = Emulator.from_jobs_file(args.jobs, **options) if args.jobs else demo_emulator(**options)
    except (OSError, ValueError, TypeError) as exc:
        parser.error(f"cannot load jobs file {args.jobs}: {exc}")
    emulator.webhooks.webhook_id_key = args.webhook_id_key
    for text in args.webhook_fault:
        try:
            emulator.webhooks.add_fault(WebhookFault.from_dict(json.loads(text)))
        except (ValueError, TypeError) as exc:
            parser.error(f"--webhook-fault {text!r}: {exc}")
    server = EmulatorServer(emulator, args.host, args.port)
    print(f"dbt Cloud emulator on {server.url} (account {args.account_id}, jobs {sorted(emulator.jobs)})", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
