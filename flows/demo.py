"""The quickstart: the ETL flow on the embedded default (local dbt Cloud emulator + fakesnow; no account needed).

It starts the emulator and a fakesnow server on loopback (data kept in ``.demo/`` between runs), adds a few
changed rows to the source tables (standing in for the dbt build), runs ``dbt_cloud_etl`` for job 101, and
prints the dbt run ID, the status, ``finished_at`` and the rows loaded per target. Prefect runs the flow on the
server its profile names, or on a temporary local one when none is configured.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

# A first start of Prefect's temporary server migrates a new database: give it time (the default is 20 s).
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from blocks.dbt_cloud import DbtCloudCredentials
from dbtcloud_api.emulator import EmulatorServer, demo_emulator
from dbtcloud_api.emulator.jobs import DEMO_ACCOUNT_ID, DEMO_TOKEN
from flows.dbt_cloud import DbtCloudRunError
from flows.embedded import fakesnow_connector, fakesnow_server, seed_demo_tables
from flows.etl import EtlFailed, EtlSummary, dbt_cloud_etl
from stack.__main__ import main as stack_main
from tasks.snowflake import LoadTarget

DEMO_TARGETS = [
    LoadTarget(
        name="orders",
        source_model="orders",
        source_table="ANALYTICS.DBT_PROD.ORDERS",
        target_table="ANALYTICS.MARTS.ORDERS",
        key_columns=["ORDER_ID"],
        watermark_column="UPDATED_AT",
    ),
    LoadTarget(
        name="customers",
        source_model="customers",
        source_table="ANALYTICS.DBT_PROD.CUSTOMERS",
        target_table="ANALYTICS.MARTS.CUSTOMERS",
        key_columns=["CUSTOMER_ID"],
        watermark_column="UPDATED_AT",
    ),
]


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
    parser.add_argument("--targets", help="with --real: JSON file with a list of LoadTarget objects")
    parser.add_argument(
        "--stack",
        action="store_true",
        help="start the local stack instead (the same as python -m stack): Prefect server and UI, deployments, worker",
    )
    args = parser.parse_args(argv)
    if args.stack:
        return stack_main([])
    if args.real:
        if not args.snowflake:
            parser.error("--real needs --snowflake NAME (a saved SnowflakeConnector block)")
        targets = DEMO_TARGETS
        if args.targets:
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
                args.job_id, DEMO_TARGETS, connector, credentials, pipeline="demo", poll_interval_seconds=1
            )
        )


def _report(run: Callable[[], EtlSummary]) -> int:
    """Run the ETL flow and print its outcome on one line."""
    try:
        summary = run()
    except DbtCloudRunError as exc:
        print(f"run_id={exc.run_id} status={exc.status} url={exc.url} (nothing loaded): {exc}")
        return 1
    except EtlFailed as exc:  # the dbt run succeeded; some loads were refused or failed (the others loaded)
        print(f"ETL failed: {exc}")
        return 1
    finished = summary.finished_at.isoformat() if summary.finished_at else None
    rows = " ".join(f"{name}={count}" for name, count in summary.rows_by_target.items())
    skipped = " ".join(f"{load.target}={load.rows_skipped}" for load in summary.loads if load.rows_skipped)
    print(
        f"run_id={summary.dbt_run_id} status={summary.dbt_status} finished_at={finished} rows_loaded: {rows}"
        + (f" rows_skipped: {skipped}" if skipped else "")
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
