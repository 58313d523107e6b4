"""The quickstart: trigger a dbt Cloud job on the embedded emulator and wait for it (no account needed)."""

from __future__ import annotations

import time

from dbtcloud_api import DbtCloudClient
from dbtcloud_api.emulator import EmulatorServer, demo_emulator
from dbtcloud_api.emulator.jobs import DEMO_ACCOUNT_ID, DEMO_TOKEN


def main() -> int:
    """Run the demo; returns the process exit code."""
    with EmulatorServer(demo_emulator()) as server, DbtCloudClient(DEMO_ACCOUNT_ID, DEMO_TOKEN, server.url) as client:
        run = client.trigger_job_run(101, "dbt-cloud-gate quickstart")
        print(f"triggered run {run.id} of job 101 on the local emulator ({server.url})")
        while not run.is_terminal:
            time.sleep(0.5)
            run = client.get_run(run.id)
        print(
            f"run_id={run.id} status={run.status_label} finished_at={run.finished_at.isoformat() if run.finished_at else None}"
        )
        return 0 if run.status_label == "Success" else 1


if __name__ == "__main__":
    raise SystemExit(main())
