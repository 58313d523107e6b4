"""Webhook waits against polling, side by side in one run: detection lag and dbt Cloud API calls per run.

One process starts a real ``prefect server start`` (its own PREFECT_HOME), the dbt Cloud emulator (plain HTTP on
loopback, real time: it has no time scale), and the webhook receiver as its own process
(``python -m dbt_cloud_gate.receiver serve``), subscribed through the emulator's v3 API so that the emulator
delivers signed webhooks to it, and the receiver posts them to the server as Prefect events.

For each mode, ``--runs`` jobs each start one run at once (runs of one job queue behind each other in dbt Cloud,
so every run has its own job), all waited on concurrently on one event loop with the project's own wait
(``dbtcloud_api.wait.await_run``):

* ``fixed-30s``: poll every 30 s;
* ``adaptive``: the flows' default schedule (``make_schedule`` around the job's 20 past runs, capped at 30 s);
* ``webhooks``: the process-wide waiter (``dbt_cloud_gate.waiter``, subscribed before the triggers), with the
  safety-net poll every ``--fallback`` seconds;
* ``webhooks-drop``: the same with ``--drop`` of the completed deliveries dropped by the emulator (never retried).

Every mode gets the same seeded durations (uniform in ``--min``..``--max`` s, the past runs within 10 % of it),
2 s queued and 3 s starting. Detection lag: from the run's real end (the emulator's ``finished_at``) to the moment
the wait returned. API calls per run: the trigger, the history read (adaptive only) and every read of the run,
from the emulator's request log. The emulator sends ``job.run.completed`` 0.25 s after the end (dbt Cloud sends it
once artifacts are ingested, an unknown delay: add it to the webhook figures).

    python3 -m bench.webhooks                         # 100 runs per mode, 30-300 s: ~7 min
    python3 -m bench.webhooks --runs 5 --min 5 --max 20 --fallback 15   # a smoke run, ~1 min
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from dbt_cloud_gate.dbtcloud_api import AsyncDbtCloudClient, DbtCloudClient, RetryPolicy
from dbt_cloud_gate.dbtcloud_api.emulator import Emulator, EmulatorServer, JobSpec
from dbt_cloud_gate.dbtcloud_api.emulator.webhooks import WebhookFault
from dbt_cloud_gate.dbtcloud_api.polling import FixedInterval, make_schedule
from dbt_cloud_gate.dbtcloud_api.wait import PollSchedule, Waker, await_run
from dbt_cloud_gate.stack.services import PrefectServer, free_port, stop_process_tree, wait_healthy

TOKEN = "webhook-bench-token"
ACCOUNT = 4242
QUEUE_SECONDS = 2.0
START_SECONDS = 3.0
MODES = ("fixed-30s", "adaptive", "webhooks", "webhooks-drop")


@dataclass
class Mode:
    """One way of waiting, with its own jobs (one run each) and what was measured."""

    name: str
    first_job: int
    lags: list[float] = field(default_factory=list)
    calls: list[int] = field(default_factory=list)
    missed: int = 0


def percentile(values: list[float], p: float) -> float:
    """The ``p`` percentile (nearest rank) of ``values``."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)] if ordered else float("nan")


def durations(count: int, low: float, high: float, seed: int) -> list[float]:
    rng = random.Random(seed)
    return [rng.uniform(low, high) for _ in range(count)]


def start_receiver(api_url: str, secret: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_")}
    env.update(PREFECT_API_URL=api_url, DBT_CLOUD_WEBHOOK_SECRET=secret, PREFECT_SERVER_ANALYTICS_ENABLED="false")
    # The bench floods one address with deliveries: lift the per-address limit.
    command = [sys.executable, "-m", "dbt_cloud_gate.receiver", "serve", "--port", str(port), "--rate", "10000"]
    command += ["--burst", "10000", "--log-level", "warning"]
    process = subprocess.Popen(command, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    wait_healthy(process, f"http://127.0.0.1:{port}/healthz", log, "the receiver", 60)
    return process


def run_calls(emulator: Emulator, run_id: int, job_id: int) -> int:
    """The trigger, the history read and every read of the run, from the emulator's log."""
    return sum(
        1
        for request in emulator.requests
        if f"/runs/{run_id}/" in request.path
        or request.path.endswith(f"/jobs/{job_id}/run/")
        or request.query.get("job_definition_id") == [str(job_id)]
    )


async def wait_all(
    emulator_url: str,
    modes: list[Mode],
    runs: dict[str, list[tuple[int, int]]],
    schedules: dict[str, Callable[[int], PollSchedule]],
    wakers: dict[str, Waker | None],
    ended: dict[int, float],
) -> None:
    retry = RetryPolicy(max_attempts=5, max_elapsed_seconds=30)
    async with AsyncDbtCloudClient(ACCOUNT, TOKEN, emulator_url, retry=retry) as client:

        async def one(mode: Mode, job_id: int, run_id: int) -> None:
            schedule = schedules[mode.name](job_id)
            first = getattr(schedule, "first_interval", lambda: 0.0)()
            await await_run(
                client,
                run_id,
                schedule=schedule,
                max_wait_seconds=3600,
                job_id=job_id,
                waker=wakers[mode.name],
                first_poll_delay_seconds=first,
            )
            ended[run_id] = time.time()

        await asyncio.gather(*(one(mode, job, run) for mode in modes for job, run in runs[mode.name]))


def _arguments(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(prog="python -m bench.webhooks", description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=100, help="concurrent runs per mode (default 100)")
    parser.add_argument("--min", type=float, default=30.0, help="shortest run, seconds")
    parser.add_argument("--max", type=float, default=300.0, help="longest run, seconds")
    parser.add_argument("--fallback", type=float, default=120.0, help="webhook modes' safety-net poll, seconds")
    parser.add_argument("--drop", type=float, default=0.1, help="share of completed deliveries dropped")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    chosen = [m for m in args.modes.split(",") if m]
    unknown = set(chosen) - set(MODES)
    if unknown:
        parser.error(f"unknown mode(s) {sorted(unknown)}")
    return args, chosen


def _jobs(modes: list[Mode], wanted: list[float], rng: random.Random) -> list[JobSpec]:
    """One job per run of every mode, each run of the same drawn length in every mode (past runs: adaptive's)."""
    jobs: list[JobSpec] = []
    for mode in modes:
        for index, seconds in enumerate(wanted):
            history = [seconds * rng.uniform(0.9, 1.1) for _ in range(20)]
            jobs.append(
                JobSpec(
                    id=mode.first_job + index,
                    name=f"{mode.name}-{index}",
                    queue_seconds=QUEUE_SECONDS,
                    start_seconds=START_SECONDS,
                    run_seconds=seconds,
                    history_seconds=history if mode.name == "adaptive" else [],
                )
            )
    return jobs


def _trigger_all(
    client: DbtCloudClient, modes: list[Mode], count: int
) -> tuple[dict[str, list[tuple[int, int]]], dict[int, list[float]]]:
    """Start one run of each job: (job, run) pairs by mode, and the histories the adaptive mode reads."""
    histories: dict[int, list[float]] = {}
    runs: dict[str, list[tuple[int, int]]] = {m.name: [] for m in modes}
    began = time.time()
    for mode in modes:
        for index in range(count):
            job_id = mode.first_job + index
            if mode.name == "adaptive":  # the flows read it with the job's newest runs
                histories[job_id] = client.job_history(job_id)
            runs[mode.name].append((job_id, client.trigger_job_run(job_id, "bench").id))
    print(f"triggered {sum(len(r) for r in runs.values())} runs in {time.time() - began:.1f} s; waiting")
    return runs, histories


def _run_modes(
    api_url: str, emulator: Emulator, url: str, modes: list[Mode], args: argparse.Namespace, work: Path
) -> tuple[dict[str, list[tuple[int, int]]], dict[int, float]]:
    """Subscribe the receiver, start every run, wait on each in its mode; (job, run) pairs by mode, and when each
    wait returned."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from dbt_cloud_gate.waiter import stop_webhook_waiters, webhook_waiter

    port = free_port()
    with DbtCloudClient(ACCOUNT, TOKEN, url) as client:
        made = client.create_webhook_subscription("bench", f"http://127.0.0.1:{port}/dbt-cloud/webhooks")
        assert made.hmac_secret is not None
        receiver = start_receiver(api_url, made.hmac_secret.get_secret_value(), port, work / "receiver.log")
        try:
            for mode in (m for m in modes if m.name == "webhooks-drop"):
                for index in range(args.runs):
                    fault = WebhookFault(
                        "drop", event_type="job.run.completed", job_id=mode.first_job + index, probability=args.drop
                    )
                    emulator.webhooks.add_fault(fault)
            with temporary_settings({PREFECT_API_URL: api_url}):
                waiter = webhook_waiter() if any(m.name.startswith("webhooks") for m in modes) else None
                if any(m.name.startswith("webhooks") for m in modes) and waiter is None:
                    raise RuntimeError("the webhook waiter did not connect to the Prefect server")
                runs, histories = _trigger_all(client, modes, args.runs)
                schedules: dict[str, Callable[[int], PollSchedule]] = {
                    "fixed-30s": lambda job: FixedInterval(30),
                    "adaptive": lambda job: make_schedule(histories[job], 30),
                    "webhooks": lambda job: FixedInterval(args.fallback),
                    "webhooks-drop": lambda job: FixedInterval(args.fallback),
                }
                wakers: dict[str, Waker | None] = {
                    "fixed-30s": None,
                    "adaptive": None,
                    "webhooks": waiter,
                    "webhooks-drop": waiter,
                }
                detected: dict[int, float] = {}
                asyncio.run(wait_all(url, modes, runs, schedules, wakers, detected))
                stop_webhook_waiters()
        finally:
            stop_process_tree(receiver)
    return runs, detected


def main(argv: list[str] | None = None) -> int:
    """Run every mode at once on one emulator and one Prefect server; print the table."""
    args, chosen = _arguments(argv)
    modes = [Mode(name, 1000 * (index + 1)) for index, name in enumerate(chosen)]
    wanted = durations(args.runs, args.min, args.max, args.seed)
    emulator = Emulator(
        _jobs(modes, wanted, random.Random(args.seed + 1)), account_id=ACCOUNT, token=TOKEN, seed=args.seed
    )
    emulator.webhooks.sender_threads = 16
    total = len(emulator.jobs)
    print(f"{len(modes)} modes x {args.runs} runs of {args.min:g}-{args.max:g} s ({total} concurrent runs)")
    work = Path(tempfile.mkdtemp(prefix="bench-webhooks-"))
    with PrefectServer(work / "prefect", ui=False) as server, EmulatorServer(emulator) as served:
        runs, detected = _run_modes(server.api_url, emulator, served.url, modes, args, work)
        dropped = {d.run_id for d in emulator.webhooks.deliveries if d.fault == "drop"}
        for mode in modes:
            for job_id, run_id in runs[mode.name]:
                run = emulator.runs[run_id]
                mode.lags.append(detected[run_id] - run.end())
                mode.calls.append(run_calls(emulator, run_id, job_id))
                mode.missed += run_id in dropped
    print()
    print("| mode | runs | lag p50 | lag p99 | lag max | API calls/run (mean, max) | deliveries dropped |")
    print("|---|---|---|---|---|---|---|")
    for mode in modes:
        print(
            f"| {mode.name} | {len(mode.lags)} | {percentile(mode.lags, 50):.2f} s | {percentile(mode.lags, 99):.2f} s"
            f" | {max(mode.lags):.2f} s | {statistics.fmean(mode.calls):.1f}, {max(mode.calls)} | {mode.missed} |"
        )
    print()
    print(
        f"{datetime.now(UTC):%Y-%m-%d}, {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; fallback {args.fallback:g} s; drop {args.drop:g}; seed {args.seed}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
