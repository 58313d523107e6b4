"""The quickstart: the ETL flow on the embedded default (local dbt Cloud emulator + fakesnow; no account needed).

It starts the emulator and a fakesnow server on loopback (data kept in ``.demo/`` between runs), adds a few
changed rows to the source tables (standing in for the dbt build), runs ``dbt_cloud_etl`` for job 101, and
prints the dbt run ID, the status, ``finished_at`` and the rows loaded per target. Prefect runs the flow on the
server its profile names, or on a temporary local one when none is configured.

``--webhooks`` shows a wait ended by dbt Cloud's webhook instead: it starts a temporary ``prefect server`` (the
receiver must post events to a server of its own), the emulator, the webhook receiver and a subscription, runs
``run_dbt_cloud_job(..., wait=WaitSettings(webhooks=True))`` and prints how long after the run's end the flow returned and how many
times it read the run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from dbt_cloud_gate.settings import WaitSettings

# A first start of Prefect's temporary server migrates a new database: give it time (the default is 20 s).
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from dbt_cloud_gate.blocks.dbt_cloud import DbtCloudCredentials
from dbt_cloud_gate.dbtcloud_api.emulator import EmulatorServer, demo_emulator
from dbt_cloud_gate.dbtcloud_api.emulator.jobs import DEMO_ACCOUNT_ID, DEMO_TOKEN
from dbt_cloud_gate.errors import DbtCloudRunError, EtlFailed
from dbt_cloud_gate.flows.dbt_cloud import run_dbt_cloud_job
from dbt_cloud_gate.flows.etl import dbt_cloud_etl
from dbt_cloud_gate.models import EtlSummary, LoadTarget
from dbt_cloud_gate.stack.__main__ import main as stack_main
from dbt_cloud_gate.stack.embedded import DEMO_TARGETS, fakesnow_connector, fakesnow_server, seed_demo_tables
from dbt_cloud_gate.stack.services import PrefectServer, WebhookReceiver, ensure_emulator_webhook


def main(argv: list[str] | None = None) -> int:
    """Run the demo; returns the process exit code (0 on Success)."""
    parser = argparse.ArgumentParser(prog="python -m flows.demo", description=__doc__)
    parser.add_argument("--job-id", type=int, default=101, help="101 succeeds, 102 fails, 103 has its own schedule")
    parser.add_argument("--data-dir", default=".demo/fakesnow", help="where fakesnow keeps its data between runs")
    parser.add_argument(
        "--real",
        action="store_true",
        help="run against dbt Cloud and Snowflake: credentials from DBT_CLOUD_* or a saved block, --snowflake names "
        "a saved SnowflakeConnector block, --targets a JSON file of load targets",
    )
    parser.add_argument("--snowflake", help="with --real: the name of a saved prefect-snowflake SnowflakeConnector")
    parser.add_argument("--targets", help="with --real (required): JSON file with a list of LoadTarget objects")
    parser.add_argument(
        "--stack",
        action="store_true",
        help="start the local stack instead (the same as python -m dbt_cloud_gate.stack): Prefect server and UI, deployments, worker",
    )
    parser.add_argument(
        "--webhooks",
        action="store_true",
        help="show a wait ended by dbt Cloud's webhook: a temporary Prefect server, the emulator, the webhook "
        "receiver and a subscription; prints the lag after the run's end and the polls",
    )
    parser.add_argument(
        "--verbose", action="store_true", help="show the tracebacks of a failed run (by default: one line and a hint)"
    )
    parser.add_argument(
        "--fallback-poll-seconds",
        type=float,
        default=60,
        help="with --webhooks: the safety net's interval (the webhook should end the wait long before it)",
    )
    args = parser.parse_args(argv)
    if not args.verbose:
        console_without_tracebacks()
    if args.stack:
        return stack_main([])
    if args.webhooks:
        return webhooks_demo(args.job_id, args.fallback_poll_seconds)
    if args.real:
        if not args.snowflake:
            parser.error("--real needs --snowflake NAME (a saved SnowflakeConnector block)")
        if not args.targets:  # the demo's targets name the local stand-in's tables, never a real account's
            parser.error("--real needs --targets FILE: a JSON list of LoadTarget naming your own tables")
        targets = [LoadTarget.model_validate(item) for item in json.loads(Path(args.targets).read_text())]
        return _report(lambda: dbt_cloud_etl(args.job_id, targets, args.snowflake, None, pipeline="quickstart"))
    Path(args.data_dir).mkdir(parents=True, exist_ok=True)
    # Run IDs from the clock, so that the audit history of successive demo runs names distinct dbt runs.
    first_run_id = int(time.time()) % 100_000_000 * 10
    with (
        EmulatorServer(demo_emulator(first_run_id=first_run_id)) as emulator,
        fakesnow_server(db_path=args.data_dir) as snow,
    ):
        credentials = DbtCloudCredentials(account_id=DEMO_ACCOUNT_ID, api_token=DEMO_TOKEN, access_url=emulator.url)
        connector = fakesnow_connector(snow)
        seed_demo_tables(connector)
        print(f"dbt Cloud emulator on {emulator.url}, fakesnow on port {snow['port']}; job {args.job_id}", flush=True)
        return _report(
            lambda: dbt_cloud_etl(
                args.job_id,
                DEMO_TARGETS,
                connector,
                credentials,
                pipeline="demo",
                wait=WaitSettings(poll_interval_seconds=1),
            )
        )


WEBHOOK_SECRET_BLOCK = "demo-dbt-cloud-webhook-secrets"


def webhooks_demo(job_id: int, fallback_poll_seconds: float = 60) -> int:
    """Run ``job_id`` with a webhook wait on a temporary stack; print one line with the outcome, the lag after the
    run's end and how many times the run was read. Returns 0 when the run succeeded."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from dbt_cloud_gate.waiter import stop_webhook_waiters

    first_run_id = int(time.time()) % 100_000_000 * 10
    with tempfile.TemporaryDirectory(prefix="dbt-cloud-gate-demo-") as home, contextlib.ExitStack() as services:
        print("Starting a temporary Prefect server (20-30 s), the emulator and the webhook receiver...", flush=True)
        server = services.enter_context(PrefectServer(Path(home) / "prefect", ui=False))
        emulator = services.enter_context(EmulatorServer(demo_emulator(first_run_id=first_run_id)))
        credentials = DbtCloudCredentials(account_id=DEMO_ACCOUNT_ID, api_token=DEMO_TOKEN, access_url=emulator.url)
        receiver = WebhookReceiver(server.env, Path(home) / "receiver.log", WEBHOOK_SECRET_BLOCK)
        ensure_emulator_webhook(server.api_url, credentials, receiver.url, WEBHOOK_SECRET_BLOCK)
        services.enter_context(receiver)
        print(f"Prefect server {server.api_url}, emulator {emulator.url}, receiver {receiver.url}", flush=True)
        outcome, code = "Success", 0
        with temporary_settings({PREFECT_API_URL: server.api_url}):
            try:
                run_dbt_cloud_job(
                    job_id,
                    credentials,
                    wait=WaitSettings(
                        webhooks=True,
                        fallback_poll_seconds=fallback_poll_seconds,
                        max_wait_seconds=max(120.0, 3 * fallback_poll_seconds),
                    ),
                )
            except DbtCloudRunError as exc:
                outcome, code = exc.status, 1
            returned = time.time()
            # Close the event subscription and hand the flow's last logs and events to the server before it stops.
            stop_webhook_waiters()
            EventsWorker.drain_all(timeout=30, at_exit=False)
            APILogWorker.drain_all(timeout=30, at_exit=False)
        run = emulator.emulator.runs_of(job_id)[-1]
        reads = sum(1 for r in emulator.emulator.requests if r.method == "GET" and r.path.endswith(f"/runs/{run.id}/"))
        print(
            f"webhooks: run_id={run.id} status={outcome} returned {returned - run.end():.2f} s after the run's end; "
            f"polled {reads} time(s) (safety net every {fallback_poll_seconds:g} s)",
            flush=True,
        )
        return code


class _WithoutTraceback(logging.Formatter):
    """A console formatter that leaves out tracebacks: the flow's logs keep them (and ``--verbose`` shows them)."""

    def __init__(self, inner: logging.Formatter | None) -> None:
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        # The record is shared with the other handlers (Prefect's API log handler keeps the traceback): restored.
        saved = record.exc_info, record.exc_text, record.stack_info
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        try:
            return self.inner.format(record)
        finally:
            record.exc_info, record.exc_text, record.stack_info = saved


def console_without_tracebacks() -> None:
    """Prefect's console handler shows each log line without its traceback (a failed run printed two 30-frame
    tracebacks before the one line that matters)."""
    from prefect.logging.configuration import setup_logging

    setup_logging()
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler.formatter, _WithoutTraceback):
            handler.setFormatter(_WithoutTraceback(handler.formatter))


HINT = "(python -m flows.demo --verbose shows the tracebacks; the flow run's logs in Prefect keep them)"


def _report(run: Callable[[], EtlSummary]) -> int:
    """Run the ETL flow and print its outcome on one line (a failure: the verdict and a hint)."""
    try:
        summary = run()
    except DbtCloudRunError as exc:
        print(f"run_id={exc.run_id} status={exc.status} url={exc.url} (nothing loaded): {exc}\n{HINT}")
        return 1
    except EtlFailed as exc:  # the dbt run succeeded; some loads were refused or failed (the others loaded)
        print(f"ETL failed: {exc}\n{HINT}")
        return 1
    except Exception as exc:  # a preflight, a setting, a block, an API error: say what, not where
        print(f"Failed: {type(exc).__name__}: {exc}\n{HINT}")
        return 1
    finished = summary.finished_at.isoformat()
    rows = " ".join(f"{name}={count}" for name, count in summary.rows_by_target.items())
    skipped = " ".join(f"{load.target}={load.rows_skipped}" for load in summary.loads if load.rows_skipped)
    print(
        f"run_id={summary.dbt_run_id} status={summary.dbt_status} finished_at={finished} rows_loaded: {rows}"
        + (f" rows_skipped: {skipped}" if skipped else "")
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
