"""Polling strategies on a simulated clock, driving the same code the flows use (RunWatcher + the schedules).

For each coefficient of variation of run durations, a job gets a history of 20 successful runs, then 1,000 runs
are simulated: a queueing delay (exponential, mean 20 s, plus 5 s starting), then a run time drawn from the same
log-normal as the history (mean 20 min). Each strategy polls each run until it sees the terminal status; a poll
costs one API call and 0.15 s of request time. Printed: API calls per run, detection lag (seconds from the run's
real end to the poll that saw it) median and p95, and ours against each fixed interval as ratios.

``ours@N`` is the flows' adaptive schedule given ``poll_interval_seconds=N``: it aims at the median lag of fixed
polling every N seconds. ``python -m bench.polling_sim``.
"""

from __future__ import annotations

import argparse
import logging
import math
import random
import statistics
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from dbtcloud_api.models import Run, RunStatus
from dbtcloud_api.polling import FixedInterval, make_schedule
from dbtcloud_api.wait import PollSchedule, RunWatcher

T0 = datetime(2026, 1, 1, tzinfo=UTC)
MEAN_SECONDS = 1200.0
REQUEST_SECONDS = 0.15
_QUIET = logging.getLogger("bench.silent")
_QUIET.disabled = True


def lognormal(rng: random.Random, mean: float, cv: float) -> float:
    """A draw with the given mean and coefficient of variation."""
    sigma = math.sqrt(math.log(1 + cv * cv))
    return rng.lognormvariate(math.log(mean) - sigma * sigma / 2, sigma)


def simulate(make: Callable[[Callable[[], float]], PollSchedule], queue: float, duration: float) -> tuple[int, float]:
    """Poll one run with a fresh schedule; returns (calls, detection lag)."""
    now = [0.0]
    schedule = make(lambda: T0.timestamp() + now[0])
    watcher = RunWatcher(1, max_wait_seconds=86_400, schedule=schedule, log=_QUIET, clock=lambda: now[0])
    end = queue + duration
    started = T0 + timedelta(seconds=queue)
    calls = 0
    while True:
        now[0] += REQUEST_SECONDS
        calls += 1
        t = now[0]
        if t >= end:
            status, start = RunStatus.SUCCESS, started
        elif t >= queue:
            status, start = RunStatus.RUNNING, started
        else:
            status, start = RunStatus.QUEUED, None
        run = Run.model_construct(
            id=1, account_id=1, status=status, started_at=start, run_steps=[], is_complete=status.is_terminal
        )
        if watcher.on_run(run):
            return calls, t - end
        now[0] += watcher.next_delay()


def percentile(values: list[float], p: float) -> float:
    """The p-th percentile (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))]


def run_case(cv: float, runs: int, seed: int) -> list[tuple[str, float, float, float]]:
    """Rows (strategy, calls per run, median lag, p95 lag) for one CV."""
    rng = random.Random(seed)
    history = [lognormal(rng, MEAN_SECONDS, cv) for _ in range(20)]
    cases = [(rng.expovariate(1 / 20) + 5, lognormal(rng, MEAN_SECONDS, cv)) for _ in range(runs)]
    strategies: dict[str, Callable[[Callable[[], float]], PollSchedule]] = {
        "fixed 10 s": lambda clock: FixedInterval(10),
        "fixed 30 s": lambda clock: FixedInterval(30),
        "fixed 60 s": lambda clock: FixedInterval(60),
    }
    for interval in (10, 30, 60):
        strategies[f"ours@{interval}"] = _ours(history, interval)
    strategies["ours, no history"] = _ours([], 30)
    rows = []
    for name, make in strategies.items():
        calls, lags = zip(*(simulate(make, queue, duration) for queue, duration in cases), strict=True)
        rows.append((name, statistics.fmean(calls), statistics.median(lags), percentile(list(lags), 95)))
    return rows


def _ours(history: list[float], interval: float) -> Callable[[Callable[[], float]], PollSchedule]:
    def make(clock: Callable[[], float]) -> PollSchedule:
        schedule = make_schedule(history, interval)
        schedule.clock = clock  # type: ignore[union-attr]
        return schedule

    return make


def main(argv: list[str] | None = None) -> int:
    """Print the table."""
    parser = argparse.ArgumentParser(prog="python -m bench.polling_sim", description=__doc__)
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args(argv)
    print(
        f"{args.runs} runs per case, mean run time {MEAN_SECONDS:.0f} s, queue ~20 s + 5 s, request {REQUEST_SECONDS} s"
    )
    for cv in (0.1, 0.3, 0.6):
        rows = run_case(cv, args.runs, args.seed)
        by_name = {row[0]: row for row in rows}
        print(f"\nCV {cv}")
        print(f"{'strategy':<18}{'calls/run':>10}{'lag p50 s':>11}{'lag p95 s':>11}   vs fixed at the same interval")
        for name, calls, p50, p95 in rows:
            line = f"{name:<18}{calls:>10.1f}{p50:>11.1f}{p95:>11.1f}"
            if name.startswith("ours@"):
                fixed = by_name[f"fixed {name[5:]} s"]
                verdict = "met" if fixed[1] / calls >= 2 and p50 <= fixed[2] else "missed"
                line += (
                    f"   {fixed[1] / calls:.2f}x fewer calls, p50 lag {p50 / fixed[2]:.2f}x, "
                    f"p95 lag {p95 / fixed[3]:.2f}x  (2x target: {verdict})"
                )
            elif name == "ours, no history":
                fixed = by_name["fixed 30 s"]
                line += f"   {fixed[1] / calls:.2f}x fewer calls than fixed 30 s, p50 lag {p50 / fixed[2]:.2f}x"
            print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
