"""Webhook waits through the flow: dbt Cloud requests per run and lag, ``run_dbt_cloud_job(..., wait=WaitSettings(
webhooks=True))`` as a user calls it (``bench.webhooks`` drives the wait alone).

One process starts a real ``prefect server start``, the dbt Cloud emulator (plain HTTP on loopback, real time), and
the webhook receiver as its own process, subscribed through the emulator's v3 API. Then, one flow call after the
other, each on a job of its own (so that each is the first attempt of its run tree, at default settings):

* ``results``: ``WaitSettings(webhooks=True)``, per-model results read (the default);
* ``no-results``: the same with ``model_results=False``;
* ``cancel``: a ~60 s run cancelled from outside ``--cancel-at`` s into it, at the default 30 s safety net
  (dbt Cloud sends no webhook for a cancel): how late the flow saw it, and what it cost.

Requests per run are every request the emulator logged for that run's job after the flow began (listings,
trigger, reads of the run, artifacts, job reads). Lag: from the run's end (``finished_at``, or the cancel) to the
flow's return. The emulator sends ``job.run.completed`` 0.25 s after the run's end.

    python3 -m bench.webhooks_flow                  # 10 runs per case, 2 cancels: ~3 min
    python3 -m bench.webhooks_flow --runs 3 --cancels 1
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import tempfile
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

from bench.webhooks import ACCOUNT, TOKEN, percentile, start_receiver
from dbt_cloud_gate.blocks.dbt_cloud import DbtCloudCredentials
from dbt_cloud_gate.dbtcloud_api import DbtCloudClient
from dbt_cloud_gate.dbtcloud_api.emulator import Emulator, EmulatorServer, JobSpec
from dbt_cloud_gate.stack.services import PrefectServer, free_port, stop_process_tree

CASES = ("results", "no-results")


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.webhooks_flow", description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=10, help="flow calls per case (default 10)")
    parser.add_argument("--min", type=float, default=3.0, help="shortest run, seconds")
    parser.add_argument("--max", type=float, default=8.0, help="longest run, seconds")
    parser.add_argument("--cancels", type=int, default=2, help="cancelled ~60 s runs (default 2)")
    parser.add_argument("--cancel-at", type=float, default=15.0, help="seconds into the run the cancel comes")
    parser.add_argument("--seed", type=int, default=5)
    return parser.parse_args(argv)


def _jobs(args: argparse.Namespace) -> list[JobSpec]:
    rng = random.Random(args.seed)
    jobs = [
        JobSpec(
            id=100 * (c + 1) + i,
            name=f"{case}-{i}",
            queue_seconds=0.5,
            start_seconds=0.5,
            run_seconds=rng.uniform(args.min, args.max),
            models=["stg_orders", "orders"],
        )
        for c, case in enumerate(CASES)
        for i in range(args.runs)
    ]
    jobs += [
        JobSpec(id=900 + i, name=f"cancel-{i}", queue_seconds=0.5, start_seconds=0.5, run_seconds=60.0)
        for i in range(args.cancels)
    ]
    return jobs


def _one(emulator: Emulator, url: str, job_id: int, model_results: bool) -> tuple[int, float, Counter[str]]:
    """One flow call on ``job_id``: its run, the lag from the run's end to the return, the requests it cost."""
    from dbt_cloud_gate.flows.dbt_cloud import run_dbt_cloud_job
    from dbt_cloud_gate.settings import WaitSettings

    credentials = DbtCloudCredentials(account_id=ACCOUNT, api_token=TOKEN, access_url=url)
    start = len(emulator.requests)
    wait = WaitSettings(webhooks=True, model_results=model_results)
    state = run_dbt_cloud_job(job_id, credentials, wait=wait, return_state=True)
    returned = time.time()
    (run,) = emulator.runs_of(job_id)
    ended = run.end()
    kinds = Counter(r.kind for r in emulator.requests[start:] if _of_job(r.path, r.query, job_id, run.id))
    if run.cancelled_at is None and not state.is_completed():
        raise RuntimeError(f"run {run.id} of job {job_id} did not succeed: {state}")
    return run.id, returned - ended, kinds


def _of_job(path: str, query: dict[str, list[str]], job_id: int, run_id: int) -> bool:
    return f"/runs/{run_id}/" in path or f"/jobs/{job_id}/" in path or query.get("job_definition_id") == [str(job_id)]


def _cancel_later(emulator: Emulator, job_id: int, after: float) -> None:
    """Cancel ``job_id``'s run ``after`` seconds into its running (its start is planned when it is triggered)."""
    while not emulator.runs_of(job_id):
        time.sleep(0.05)
    run = emulator.runs_of(job_id)[-1]
    time.sleep(max(0.0, run.started + after - emulator.clock()))
    emulator.cancel(run.id)


def main(argv: list[str] | None = None) -> int:
    """Run every case through the flow on one emulator and one Prefect server; print the table."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from dbt_cloud_gate.waiter import stop_webhook_waiters

    args = _arguments(argv)
    emulator = Emulator(_jobs(args), account_id=ACCOUNT, token=TOKEN, seed=args.seed)
    work = Path(tempfile.mkdtemp(prefix="bench-webhooks-flow-"))
    rows: dict[str, list[tuple[float, Counter[str]]]] = {}
    with PrefectServer(work / "prefect", ui=False) as server, EmulatorServer(emulator) as served:
        port = free_port()
        with DbtCloudClient(ACCOUNT, TOKEN, served.url) as client:
            made = client.create_webhook_subscription("bench", f"http://127.0.0.1:{port}/dbt-cloud/webhooks")
        assert made.hmac_secret is not None
        receiver = start_receiver(server.api_url, made.hmac_secret.get_secret_value(), port, work / "receiver.log")
        try:
            with temporary_settings({PREFECT_API_URL: server.api_url}):
                for c, case in enumerate(CASES):
                    rows[case] = [
                        _one(emulator, served.url, 100 * (c + 1) + i, case == "results")[1:] for i in range(args.runs)
                    ]
                rows["cancel"] = []
                for i in range(args.cancels):
                    canceller = threading.Thread(target=_cancel_later, args=(emulator, 900 + i, args.cancel_at))
                    canceller.start()
                    rows["cancel"].append(_one(emulator, served.url, 900 + i, True)[1:])
                    canceller.join()
                stop_webhook_waiters()
        finally:
            stop_process_tree(receiver)
    print()
    print("| case | flow calls | requests/run (mean, max) | by kind (mean) | lag p50 | lag max |")
    print("|---|---|---|---|---|---|")
    for case, measured in rows.items():
        if not measured:
            continue
        lags = [lag for lag, _ in measured]
        totals = [sum(kinds.values()) for _, kinds in measured]
        kinds = sum((k for _, k in measured), Counter())
        by_kind = ", ".join(f"{kind} {count / len(measured):.1f}" for kind, count in sorted(kinds.items()))
        print(
            f"| {case} | {len(measured)} | {statistics.fmean(totals):.1f}, {max(totals)} | {by_kind} | "
            f"{percentile(lags, 50):.2f} s | {max(lags):.2f} s |"
        )
    print()
    print(
        f"{datetime.now(UTC):%Y-%m-%d}, {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; runs {args.min:g}-{args.max:g} s; cancel {args.cancel_at:g} s into a 60 s run"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
