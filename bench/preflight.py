"""What the preflight costs before a trigger: statements, dbt Cloud requests and seconds, on fakesnow and the
emulator over loopback HTTP (the demo's job 101 and tables, one successful run so that its manifest is read).

Snowflake's own figures differ (each metadata statement is a round trip of tens of milliseconds to a cloud
service, no warehouse needed); the counts are the same.

    python3 -m bench.preflight                # 1, 2 and 8 targets, 5 repetitions each
    python3 -m bench.preflight --repeat 10
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

from prefect_snowflake import SnowflakeConnector

from dbt_cloud_gate.dbtcloud_api import DbtCloudClient
from dbt_cloud_gate.dbtcloud_api.emulator import EmulatorServer
from dbt_cloud_gate.dbtcloud_api.emulator.jobs import DEMO_ACCOUNT_ID, DEMO_TOKEN, demo_emulator
from dbt_cloud_gate.flows.demo import DEMO_TARGETS
from dbt_cloud_gate.models import LoadTarget
from dbt_cloud_gate.preflight import PreflightItem, run_preflight
from dbt_cloud_gate.settings import LOAD
from dbt_cloud_gate.stack.embedded import fakesnow_connector, fakesnow_server, seed_demo_tables

JOB = 101


def _targets(count: int, connector: SnowflakeConnector) -> list[LoadTarget]:
    """``count`` targets: the demo's two, then copies of orders into tables of their own."""
    targets = list(DEMO_TARGETS)
    with connector.get_connection() as connection:
        cursor = connection.cursor()
        for index in range(count - len(targets)):
            table = f"ANALYTICS.MARTS.ORDERS_{index}"
            cursor.execute(
                f"CREATE TABLE IF NOT EXISTS {table} "
                "(ORDER_ID NUMBER, CUSTOMER_ID NUMBER, AMOUNT NUMBER(12,2), UPDATED_AT TIMESTAMP_NTZ)"
            )
            targets.append(DEMO_TARGETS[0].model_copy(update={"name": f"orders_{index}", "target_table": table}))
    return targets[:count]


def _one_successful_run(client: DbtCloudClient) -> None:
    run = client.trigger_job_run(JOB, "bench: a manifest to read")
    deadline = time.monotonic() + 60
    while not client.get_run(run.id).is_terminal and time.monotonic() < deadline:
        time.sleep(0.2)


def main(argv: list[str] | None = None) -> None:
    """Print the preflight's cost per number of targets."""
    parser = argparse.ArgumentParser(prog="python3 -m bench.preflight", description=__doc__)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    with (
        EmulatorServer(demo_emulator(validator=None)) as emulator,
        fakesnow_server(db_path=tempfile.mkdtemp(prefix="bench-preflight-")) as snow,
        DbtCloudClient(DEMO_ACCOUNT_ID, DEMO_TOKEN, emulator.url) as client,
    ):
        connector = fakesnow_connector(snow)
        seed_demo_tables(connector, new_rows=10)
        _one_successful_run(client)
        print(f"preflight of job {JOB}'s targets on fakesnow + the emulator (loopback), {args.repeat} runs each")
        for count in (1, 2, 8):
            targets = _targets(count, connector)
            seconds: list[float] = []
            for _ in range(args.repeat):
                before = len(emulator.emulator.requests)
                started = time.perf_counter()
                found = run_preflight(connector, client, [PreflightItem("targets", JOB, targets)], LOAD)
                seconds.append(time.perf_counter() - started)
                requests = len(emulator.emulator.requests) - before
                assert not found.problems, found.lines
            print(
                f"{count} target(s): {found.statements:3d} statements, {requests} dbt Cloud requests, "
                f"median {statistics.median(seconds):.3f} s, max {max(seconds):.3f} s "
                f"({found.statements / count:.1f} statements per target); not checked: {len(found.unchecked)}"
            )


if __name__ == "__main__":
    main()
