"""Live: many concurrent dbt Cloud runs against the emulator, watched by one process on one event loop.

The emulator runs in its own process (so that the figures are the watcher's alone), with one job per run, runs of
5 to 30 s and a per-account rate limit. The watcher triggers every job, reads each job's history once, and waits
for all runs with the same code the ``wait-for-dbt-cloud-runs`` task runs (``await_runs`` and the adaptive
schedule), through one client and a rate limiter set to the emulator's limit.

Printed: wall time, peak RSS, CPU seconds, requests sent, 429s received, the worst detection lag and how many
runs were seen later than their poll interval + 2 s. ``python -m bench.live [--runs 1000] [--rate-limit 5000]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from dbt_cloud_gate.dbtcloud_api import AsyncDbtCloudClient, Run, RunStatus
from dbt_cloud_gate.dbtcloud_api.polling import make_schedule
from dbt_cloud_gate.dbtcloud_api.ratelimit import RateLimiter
from dbt_cloud_gate.dbtcloud_api.wait import PollSchedule, await_runs

TOKEN = "live-bench-token"
ACCOUNT = 1


class _Recording:
    """Wraps a schedule to remember the last interval it gave (to judge lag against it)."""

    def __init__(self, inner: PollSchedule) -> None:
        self.inner = inner
        self.last = 0.0

    def next_interval(self, run: Run, elapsed: float) -> float:
        self.last = self.inner.next_interval(run, elapsed)
        return self.last


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def watch(url: str, job_ids: list[int], rate: float, poll_interval: float) -> dict[str, Any]:
    """Trigger, then wait for, one run per job; returns the watcher's figures."""
    limiter = RateLimiter(per_minute=rate, burst=20)
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with AsyncDbtCloudClient(
        ACCOUNT,
        TOKEN,
        url,
        rate_limiter=limiter,
        http_client=httpx.AsyncClient(
            base_url=url,
            headers={"Authorization": f"Token {TOKEN}", "Accept": "application/json"},
            timeout=30,
            limits=limits,
        ),
    ) as client:
        started = time.monotonic()
        runs = await asyncio.gather(*(client.trigger_job_run(job, "live bench") for job in job_ids))
        histories = await asyncio.gather(*(client.job_history(job) for job in job_ids))
        by_run = {run.id: job for run, job in zip(runs, job_ids, strict=True)}
        schedules = {
            run.id: _Recording(make_schedule(history, poll_interval))
            for run, history in zip(runs, histories, strict=True)
        }
        outcomes = await await_runs(
            client, list(by_run), schedules=lambda run_id: schedules[run_id], max_wait_seconds=900, fetch_results=False
        )
        seen_at = time.time()
        wall = time.monotonic() - started
    lags, late = [], 0
    for outcome in outcomes:
        run = outcome.run
        if run is None or run.status is not RunStatus.SUCCESS or run.finished_at is None:
            raise RuntimeError(f"a bench run did not succeed with a finished_at: {outcome}")
        # The wait returns right after the terminal poll; lag = that moment minus the run's real end.
        lag = outcome.detected_at - run.finished_at.timestamp() if outcome.detected_at else seen_at
        lags.append(lag)
        if lag > schedules[run.id].last + 2.0:
            late += 1
    return {
        "wall": wall,
        "lags": lags,
        "late": late,
        "limiter_wait": limiter.waited_seconds,
        "penalties": limiter.penalties,
    }


def main(argv: list[str] | None = None) -> int:
    """Run the live benchmark and print its figures."""
    parser = argparse.ArgumentParser(prog="python -m bench.live", description=__doc__)
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--rate-limit", type=float, default=5000, help="requests a minute (emulator and limiter)")
    parser.add_argument("--poll-interval", type=float, default=2.0, help="the flows' poll_interval_seconds")
    parser.add_argument("--seed", type=int, default=5)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    jobs: list[dict[str, Any]] = []
    for index in range(args.runs):
        seconds = round(rng.uniform(5, 30), 2)
        history = [round(seconds * rng.uniform(0.9, 1.1), 2) for _ in range(8)]
        jobs.append(
            {
                "id": 10_000 + index,
                "name": f"job {index}",
                "queue_seconds": 0.5,
                "start_seconds": 0.5,
                "run_seconds": seconds,
                "history_seconds": history,
            }
        )
    jobs_file = Path(tempfile.mkdtemp()) / "jobs.json"
    jobs_file.write_text(json.dumps({"jobs": jobs}))
    port = _free_port()
    emulator = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dbt_cloud_gate.dbtcloud_api.emulator",
            "--port",
            str(port),
            "--jobs",
            str(jobs_file),
            "--token",
            TOKEN,
            "--account-id",
            str(ACCOUNT),
            "--rate-limit",
            str(int(args.rate_limit)),
            "--no-spec",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert emulator.stdout is not None
        emulator.stdout.readline()
        url = f"http://127.0.0.1:{port}"
        before = resource.getrusage(resource.RUSAGE_SELF)
        figures = asyncio.run(watch(url, [job["id"] for job in jobs], args.rate_limit, args.poll_interval))
        after = resource.getrusage(resource.RUSAGE_SELF)
        log = httpx.get(f"{url}/_emulator/requests", timeout=120).json()["data"]
    finally:
        emulator.terminate()
        emulator.wait(timeout=30)
    api = [r for r in log if r["path"].startswith("/api/")]
    lags = sorted(figures["lags"])
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    print(
        f"{args.runs} concurrent runs of 5-30 s, rate limit {args.rate_limit:g}/min (emulator and limiter), "
        f"poll_interval_seconds={args.poll_interval:g}, adaptive"
    )
    print(f"  wall time            {figures['wall']:.1f} s")
    print(f"  peak RSS (watcher)   {after.ru_maxrss / 1024:.0f} MB")
    print(f"  CPU (watcher)        {cpu:.1f} s")
    print(
        f"  requests sent        {len(api)} ({len(api) / args.runs:.1f} per run; {len(api) / figures['wall'] * 60:.0f}/min)"
    )
    print(f"  429s received        {sum(1 for r in api if r['status'] == 429)}")
    print(f"  limiter waits        {figures['limiter_wait']:.0f} s in total")
    print(
        f"  detection lag        p50 {lags[len(lags) // 2]:.2f} s, p95 {lags[int(len(lags) * 0.95)]:.2f} s, "
        f"worst {lags[-1]:.2f} s"
    )
    print(f"  seen later than interval + 2 s: {figures['late']} of {args.runs}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
