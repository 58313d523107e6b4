"""The quickstart: run the ``run_dbt_cloud_job`` flow against the embedded dbt Cloud emulator (no account needed).

It starts the emulator on loopback, triggers job 101, waits for the run, and prints the run ID, the final
status and ``finished_at``. Prefect runs the flow on the server its profile names, or on a temporary local
one when none is configured.
"""

from __future__ import annotations

import argparse
import os

# A first start of Prefect's temporary server migrates a new database: give it time (the default is 20 s).
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from blocks.dbt_cloud import DbtCloudCredentials
from dbtcloud_api.emulator import EmulatorServer, demo_emulator
from dbtcloud_api.emulator.jobs import DEMO_ACCOUNT_ID, DEMO_TOKEN
from flows.dbt_cloud import DbtCloudRunError, run_dbt_cloud_job


def main(argv: list[str] | None = None) -> int:
    """Run the demo; returns the process exit code (0 on Success)."""
    parser = argparse.ArgumentParser(prog="python -m flows.demo", description=__doc__)
    parser.add_argument("--job-id", type=int, default=101, help="101 succeeds, 102 fails, 103 has its own schedule")
    args = parser.parse_args(argv)
    with EmulatorServer(demo_emulator()) as server:
        credentials = DbtCloudCredentials(account_id=DEMO_ACCOUNT_ID, api_token=DEMO_TOKEN, access_url=server.url)
        print(f"dbt Cloud emulator on {server.url}; running job {args.job_id}", flush=True)
        try:
            result = run_dbt_cloud_job(
                args.job_id, credentials, cause="dbt-cloud-gate quickstart", poll_interval_seconds=1
            )
        except DbtCloudRunError as exc:
            print(f"run_id={exc.run_id} status={exc.status} url={exc.url}")
            return 1
    finished = result.finished_at.isoformat() if result.finished_at else None
    print(f"run_id={result.run_id} status={result.status} finished_at={finished}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
