"""Soak under faults: many runs across many jobs, mixed outcomes, ~10% of requests faulted.

Checks that every run ends in its true final state, that no job is triggered twice for one request, that no
result is lost, that every failure is alerted with its run ID, that there is one audit row per successful load
and none for a failure, and that the token appears in no output. Bounded in time; stops by itself.
Full size: ``python -m bench.soak`` (200 runs, 20 jobs); the test suite runs a reduced size.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect.blocks.notifications import CustomWebhookNotificationBlock

from dbt_cloud_gate.blocks.dbt_cloud import DbtCloudCredentials
from dbt_cloud_gate.dbtcloud_api.emulator import Emulator, EmulatorServer, Fault, JobSpec
from dbt_cloud_gate.dbtcloud_api.emulator.state import Outcome
from dbt_cloud_gate.errors import DbtCloudRunsFailed
from dbt_cloud_gate.flows.fanout import run_dbt_cloud_jobs
from dbt_cloud_gate.models import DbtCloudJobRequest, LoadTarget
from dbt_cloud_gate.stack.embedded import AlertSink, fakesnow_connector, fakesnow_server, seed_demo_tables
from dbt_cloud_gate.tasks.snowflake import load_snowflake_incremental

TOKEN = "soak_tok_9f8e7d6c5b4a"
ACCOUNT = 777
_STATUS = {"success": "Success", "error": "Error", "cancelled": "Cancelled"}


@dataclass(frozen=True)
class SoakReport:
    """What the soak saw, made once it is over; ``violations`` is empty when every check held."""

    runs: int
    jobs: int
    seconds: float
    requests: int
    faulted: int
    succeeded: int
    failed: int
    duplicate_triggers: int
    alerts: int
    audit_rows: int
    violations: list[str]

    def summary(self) -> str:
        """One line of figures."""
        share = self.faulted / self.requests if self.requests else 0.0
        return (
            f"{self.runs} runs / {self.jobs} jobs in {self.seconds:.1f} s: {self.requests} requests, "
            f"{self.faulted} faulted ({share:.1%}), {self.succeeded} succeeded, {self.failed} failed, "
            f"{self.duplicate_triggers} duplicate triggers, {self.alerts} alerts, {self.audit_rows} audit rows, "
            f"{len(self.violations)} violations"
        )


def _faults(rate: float) -> list[Fault]:
    share = {"429": 0.4, "5xx": 0.3, "drop": 0.1, "slow": 0.1}
    faults = [
        Fault(kind="429", probability=rate * share["429"], retry_after="0.1"),
        Fault(kind="5xx", status=503, probability=rate * share["5xx"]),
        Fault(kind="drop", probability=rate * share["drop"]),
        Fault(kind="slow", delay=0.2, probability=rate * share["slow"]),
    ]
    # Lost trigger responses: the run is created, the answer never arrives.
    faults.append(Fault(kind="lost_response", method="POST", path=r"/run/$", probability=rate))
    return faults


def _soak_jobs(jobs: int, rng: random.Random) -> list[JobSpec]:
    """The soak's jobs: quick runs of seeded lengths, each job cycling one pattern of outcomes."""
    patterns: list[list[Outcome]] = [
        ["success", "success", "error", "success", "cancelled"],
        ["success", "error", "success"],
        ["success"],
    ]
    return [
        JobSpec(
            id=5000 + j,
            queue_seconds=0.05,
            start_seconds=0.05,
            run_seconds=round(rng.uniform(0.2, 1.0), 2),
            outcomes=patterns[j % len(patterns)],
            models=["stg_orders", "orders"],
        )
        for j in range(jobs)
    ]


def _load_each(connector: Any, results: list[Any]) -> list[int]:
    """One load per successful run, each job into its own target table; the run IDs of the audit rows."""
    for result in sorted(results, key=lambda r: r.finished_at or r.run_id):
        target = LoadTarget(
            name=f"job{result.job_id}",
            source_model="orders",
            source_table="ANALYTICS.DBT_PROD.ORDERS",
            target_table=f"ANALYTICS.MARTS.ORDERS_{result.job_id}",
            key_columns=["ORDER_ID"],
            watermark_column="UPDATED_AT",
        )
        with connector.get_connection() as connection:
            connection.cursor().execute(
                f"CREATE TABLE IF NOT EXISTS ANALYTICS.MARTS.ORDERS_{result.job_id} "
                "(ORDER_ID NUMBER, CUSTOMER_ID NUMBER, AMOUNT NUMBER(12,2), UPDATED_AT TIMESTAMP_NTZ)"
            )
        load_snowflake_incremental(connector, target, result, pipeline="soak")
    with connector.get_connection() as connection:
        cursor = connection.cursor()
        cursor.execute("SELECT DBT_RUN_ID FROM ANALYTICS.MARTS.DBT_CLOUD_GATE_AUDIT")
        return [int(row[0]) for row in cursor.fetchall()]


def _check(
    emulator: Emulator,
    requested: list[int | DbtCloudJobRequest],
    results: list[Any],
    failures: list[dict[str, Any]],
    audited: list[int],
    texts: list[str],
    alerted: bool,
) -> list[str]:
    """Every check the soak broke, in words (``texts``: the alerts received; every failure must be among them when
    ``alerted``)."""
    problems: list[str] = []
    # Every requested run accounted for, and no job triggered more often than asked.
    if len(results) + len(failures) != len(requested):
        problems.append(f"lost results: {len(results)} + {len(failures)} != {len(requested)}")
    for spec in emulator.jobs.values():
        asked = requested.count(spec.id)
        created = len(emulator.runs_of(spec.id))
        if created != asked:
            problems.append(f"job {spec.id}: {created} runs created for {asked} requested")
    # Every run ended in its true final state.
    seen = {r.run_id: r.status for r in results} | {f["run_id"]: f["status"] for f in failures if f["run_id"]}
    for run in emulator.runs.values():
        truth = _STATUS["cancelled" if run.cancelled_at is not None else run.outcome]
        if seen.get(run.id) != truth:
            problems.append(f"run {run.id}: reported {seen.get(run.id)!r}, truly {truth!r}")
    # Every failure alerted with its run ID; one audit row per success, none for a failure.
    if alerted:
        for failure in failures:
            if not any(str(failure["run_id"]) in text for text in texts):
                problems.append(f"failure of run {failure['run_id']} was not alerted")
    if sorted(audited) != sorted(r.run_id for r in results):
        problems.append(f"audit rows {sorted(audited)} != successful runs {sorted(r.run_id for r in results)}")
    if any(TOKEN in text for text in texts) or any(TOKEN in json.dumps(r.body or {}) for r in emulator.requests):
        problems.append("the token appeared in an alert or a request body")
    return problems


def run_soak(
    *,
    runs: int = 200,
    jobs: int = 20,
    fault_rate: float = 0.10,
    seed: int = 7,
    alert_blocks: list[str] | None = None,
    alert_texts: Any = None,
    workdir: Path | None = None,
    time_limit: float = 900.0,
) -> SoakReport:
    """Run the soak; ``alert_texts()`` returns the alerts received (the caller's webhook receiver)."""
    emulator = Emulator(_soak_jobs(jobs, random.Random(seed)), account_id=ACCOUNT, token=TOKEN, seed=seed)
    for fault in _faults(fault_rate):
        emulator.add_fault(fault)
    requested: list[int | DbtCloudJobRequest] = [5000 + (i % jobs) for i in range(runs)]
    started = time.monotonic()
    workdir = workdir or Path(tempfile.mkdtemp(prefix="soak-"))
    with EmulatorServer(emulator) as dbt, fakesnow_server(db_path=str(workdir)) as snow:
        credentials = DbtCloudCredentials(account_id=ACCOUNT, api_token=TOKEN, access_url=dbt.url)
        connector = fakesnow_connector(snow)
        seed_demo_tables(connector, new_rows=3)
        try:
            results = run_dbt_cloud_jobs(
                requested,
                credentials,
                poll_interval_seconds=0.2,
                max_wait_seconds=time_limit,
                alert_blocks=alert_blocks,
            )
            failures: list[dict[str, Any]] = []
        except DbtCloudRunsFailed as exc:
            results, failures = exc.results, exc.failures
        audited = _load_each(connector, results)
    seconds = time.monotonic() - started
    texts = [json.dumps(alert) for alert in (alert_texts() if alert_texts else [])]
    return SoakReport(
        runs=runs,
        jobs=jobs,
        seconds=seconds,
        requests=len(emulator.requests),
        faulted=sum(1 for r in emulator.requests if r.fault),
        succeeded=len(results),
        failed=len(failures),
        duplicate_triggers=sum(max(0, len(emulator.runs_of(job)) - requested.count(job)) for job in emulator.jobs),
        alerts=len(texts),
        audit_rows=len(audited),
        violations=_check(emulator, requested, results, failures, audited, texts, bool(alert_blocks)),
    )


def main(argv: list[str] | None = None) -> int:
    """Full-size soak from the command line; prints the figures."""
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--fault-rate", type=float, default=0.10)
    args = parser.parse_args(argv)
    receiver = AlertSink()
    try:
        CustomWebhookNotificationBlock(
            name="soak",
            url=receiver.url,
            json_data={"subject": "{{subject}}", "body": "{{body}}"},
            allow_private_urls=True,
        ).save("soak-alerts", overwrite=True)
        report = run_soak(
            runs=args.runs,
            jobs=args.jobs,
            fault_rate=args.fault_rate,
            alert_blocks=["custom-webhook/soak-alerts"],
            alert_texts=lambda: receiver.received,
        )
    finally:
        receiver.close()
    print(report.summary())
    for problem in report.violations:
        print(f"  violation: {problem}")
    return 1 if report.violations else 0


if __name__ == "__main__":
    sys.exit(main())
