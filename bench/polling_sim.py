"""Polling strategies on a simulated clock, driving the same code the flows use (RunWatcher + the schedules).

For each coefficient of variation of run durations, and for each of several seeds, a job gets a history of 20
successful runs, then ``--runs`` runs are simulated: a queueing delay (exponential, mean 20 s, plus 5 s starting),
then a run time drawn from the same log-normal as the history (mean 20 min). Each strategy polls each run until it
sees the terminal status; a poll costs 0.15 s of request time. Printed per strategy, as the mean over the seeds
with the range in brackets: requests per dbt run INCLUDING the trigger and each tool's fixed requests (ours: 2,
run_results.json: the list of the job's newest runs, read when the first poll is due, is that poll; prefect-dbt: 1,
the artifact list), detection lag (from
the run's real end to the poll that saw it; what runs after that poll is not simulated: see bench/compare.py)
median and p95, and, for ours, the ratio to prefect-dbt's requests and in how many seeds the issue's target held
(requests at most 0.5x prefect-dbt's and a median lag no higher than its own).

``ours@N`` is the flows' adaptive schedule given ``poll_interval_seconds=N`` (N caps every gap; the likely-finish
band is polled every 8.5 s), with the first poll one queued interval after the trigger, as the flow does.
Then early ends (``EARLY_END_SCENARIOS``: a setup error in the first 30 s, an error in the first quarter, an error or
cancel anywhere) on a ~60 s, a ~5 min and a ~20 min job: detection lag p50 / p95 for prefect-dbt and ours.
``--search``: the search behind the defaults (``SEARCH``): the early part's window, the band's first quantile and
whether the history is read with the first poll, on a ~60 s and a ~20 min job queued 2 s and starting 3 s as in
``bench.compare``; requests and lag of steady runs, and the lag of early ends (a setup error in the first 30 s, an
Error 8 s in, a cancel 15 s in), against prefect-dbt's fixed 10 s.
``python -m bench.polling_sim [--runs 1000] [--seeds 1,2,3,5,7] [--search]``.
"""

from __future__ import annotations

import argparse
import logging
import math
import random
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from dbt_cloud_gate.dbtcloud_api.models import Run, RunStatus
from dbt_cloud_gate.dbtcloud_api.polling import AdaptiveSchedule, FixedInterval, make_schedule
from dbt_cloud_gate.dbtcloud_api.wait import PollSchedule, RunWatcher, first_poll_delay

T0 = datetime(2026, 1, 1, tzinfo=UTC)
MEAN_SECONDS = 1200.0
PREFECT_DBT = "prefect-dbt 10 s"
REQUEST_SECONDS = 0.15
_QUIET = logging.getLogger("bench.silent")
_QUIET.disabled = True


def lognormal(rng: random.Random, mean: float, cv: float) -> float:
    """A draw with the given mean and coefficient of variation."""
    sigma = math.sqrt(math.log(1 + cv * cv))
    return rng.lognormvariate(math.log(mean) - sigma * sigma / 2, sigma)


def simulate(
    make: Callable[[Callable[[], float]], PollSchedule], queue: float, duration: float, *, first_poll_at: bool
) -> tuple[int, float]:
    """Poll one run with a fresh schedule; returns (polls, detection lag). ``first_poll_at``: the first poll waits
    the schedule's ``first_interval()`` after the trigger (ours), instead of coming at once (prefect-dbt). An early
    end (an Error, a cancel) is a run whose ``duration`` is the moment it ended: the schedule cannot tell."""
    now = [0.0]
    schedule = make(lambda: T0.timestamp() + now[0])
    watcher = RunWatcher(
        1,
        max_wait_seconds=86_400,
        schedule=schedule,
        log=_QUIET,
        clock=lambda: now[0],
        first_poll_delay_seconds=first_poll_delay(schedule) if first_poll_at else 0.0,
    )
    now[0] += watcher.first_delay()
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


@dataclass(frozen=True)
class Strategy:
    """A poll schedule, whether it skips the poll right after the trigger, and its fixed requests per run."""

    name: str
    make: Callable[[Callable[[], float]], PollSchedule]
    first_poll_at: bool
    fixed_requests: int  # besides the trigger and the polls


def percentile(values: list[float], p: float) -> float:
    """The p-th percentile (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))]


def run_case(cv: float, runs: int, seed: int) -> dict[str, tuple[float, float, float]]:
    """Strategy name -> (requests per run incl. trigger and fixed, median lag, p95 lag) for one CV and seed."""
    rng = random.Random(seed)
    history = [lognormal(rng, MEAN_SECONDS, cv) for _ in range(20)]
    cases = [(rng.expovariate(1 / 20) + 5, lognormal(rng, MEAN_SECONDS, cv)) for _ in range(runs)]
    strategies = [
        Strategy(PREFECT_DBT, lambda clock: FixedInterval(10), False, 1),
        Strategy("fixed 30 s", lambda clock: FixedInterval(30), True, 2),
        Strategy("fixed 60 s", lambda clock: FixedInterval(60), True, 2),
    ]
    strategies += [Strategy(f"ours@{interval}", _ours(history, interval), True, 1) for interval in (10, 30, 60)]
    strategies.append(Strategy("ours, no history", _ours([], 30), True, 1))
    rows = {}
    for strategy in strategies:
        polls, lags = zip(
            *(
                simulate(strategy.make, queue, duration, first_poll_at=strategy.first_poll_at)
                for queue, duration in cases
            ),
            strict=True,
        )
        requests = 1 + strategy.fixed_requests + statistics.fmean(polls)
        rows[strategy.name] = (requests, statistics.median(lags), percentile(list(lags), 95))
    return rows


# When failed runs end, as run age: dbt Cloud runs that fail mostly fail in their first steps (clone, deps, a parse
# or compile error: the first ~30 s) or on a model or test anywhere in the build; cancels come from outside at any
# moment. The early-end scenarios draw from these.
EARLY_END_SCENARIOS: dict[str, Callable[[random.Random, float], float]] = {
    "setup error (0-30 s)": lambda rng, duration: rng.uniform(0, min(30.0, duration)),
    "error in the first quarter": lambda rng, duration: rng.uniform(0, duration / 4),
    "error or cancel anywhere": lambda rng, duration: rng.uniform(0, duration),
}


def early_ends(mean: float, runs: int, seed: int) -> dict[str, dict[str, tuple[float, float]]]:
    """Scenario -> strategy -> (median lag, p95 lag) for runs of a ~``mean`` s job (CV 0.1) that end early."""
    rng = random.Random(seed)
    history = [lognormal(rng, mean, 0.1) for _ in range(20)]
    strategies = [
        Strategy(PREFECT_DBT, lambda clock: FixedInterval(10), False, 1),
        Strategy("ours@30", _ours(history, 30), True, 1),
        Strategy("ours, no history", _ours([], 30), True, 1),
    ]
    table: dict[str, dict[str, tuple[float, float]]] = {}
    for scenario, draw in EARLY_END_SCENARIOS.items():
        cases = [(rng.expovariate(1 / 20) + 5, draw(rng, lognormal(rng, mean, 0.1))) for _ in range(runs)]
        table[scenario] = {}
        for strategy in strategies:
            lags = [simulate(strategy.make, q, end, first_poll_at=strategy.first_poll_at)[1] for q, end in cases]
            table[scenario][strategy.name] = (statistics.median(lags), percentile(lags, 95))
    return table


def _ours(history: list[float], interval: float) -> Callable[[Callable[[], float]], PollSchedule]:
    def make(clock: Callable[[], float]) -> PollSchedule:
        schedule = make_schedule(history, interval)
        schedule.clock = clock  # type: ignore[union-attr]
        return schedule

    return make


# The search: (early window s, band's first quantile, history read with the first poll). The defaults:
# (30, 0.1, True). A window of 40 s polls once more; a later band start saves a poll on a steady 60 s job but costs
# lag p95 wherever history is scattered (CV 0.3); reading the history before the trigger costs one request a run.
SEARCH = [(0.0, 0.1, False), (0.0, 0.1, True)] + [
    (window, lo, folded) for window in (30.0, 40.0) for lo in (0.1, 0.2) for folded in (False, True)
]
SEARCH_QUEUE = 5.0  # queued 2 s, starting 3 s: bench.compare's jobs
SETUP_ENDS: dict[str, Callable[[random.Random, float], float]] = {
    "setup 0-30 s": lambda rng, duration: rng.uniform(0, min(30.0, duration)),
    "Error at 8 s": lambda rng, duration: 8.0,
    "cancel at 15 s": lambda rng, duration: 15.0,
}


def search_row(
    make: Callable[[list[float]], Callable[[Callable[[], float]], PollSchedule]],
    first_poll_at: bool,
    fixed: int,
    mean: float,
    cv: float,
    seed: int,
    runs: int,
) -> dict[str, float]:
    """Requests per run, lag p50 / p95 of steady runs, and the median lag of each of ``SETUP_ENDS``."""
    rng = random.Random(seed)
    history = [lognormal(rng, mean, cv) for _ in range(20)]
    schedule = make(history)
    durations = [lognormal(rng, mean, cv) for _ in range(runs)]
    steady = [simulate(schedule, SEARCH_QUEUE, d, first_poll_at=first_poll_at) for d in durations]
    lags = [lag for _, lag in steady]
    row = {
        "requests": 1 + fixed + statistics.fmean(polls for polls, _ in steady),
        "p50": statistics.median(lags),
        "p95": percentile(lags, 95),
    }
    for name, draw in SETUP_ENDS.items():
        ends = [simulate(schedule, SEARCH_QUEUE, draw(rng, d), first_poll_at=first_poll_at)[1] for d in durations]
        row[name] = statistics.median(ends)
    return row


def _searched(window: float, lo: float) -> Callable[[list[float]], Callable[[Callable[[], float]], PollSchedule]]:
    def make(history: list[float]) -> Callable[[Callable[[], float]], PollSchedule]:
        def build(clock: Callable[[], float]) -> PollSchedule:
            return AdaptiveSchedule(
                history, fallback_interval=30, max_interval=30, band=(lo, 0.9), early_window=window, clock=clock
            )

        return build

    return make


def print_search(runs: int, seeds: list[int]) -> None:
    """The search table: one block per job length and spread, mean over ``seeds``."""
    candidates: list[tuple[str, Callable[[list[float]], Callable[[Callable[[], float]], PollSchedule]], bool, int]]
    # prefect-dbt's first poll comes one interval after its trigger (bench.compare: 7.1 polls on a 65 s run).
    candidates = [(PREFECT_DBT, lambda history: lambda clock: FixedInterval(10), True, 1)]
    for window, lo, folded in SEARCH:
        name = f"early {window:.0f} s, band from q{lo:g}, {'1 fixed' if folded else '2 fixed'}"
        candidates.append((name, _searched(window, lo), True, 1 if folded else 2))
    for mean, cv in ((60.0, 0.1), (60.0, 0.3), (1200.0, 0.1), (1200.0, 0.3)):
        count = runs if mean < 300 else max(runs // 3, 100)  # a 20 min run is ~20x the simulated polls
        print(f"\nSearch: ~{mean:.0f} s job, CV {cv}, queued {SEARCH_QUEUE:g} s; {count} runs x {len(seeds)} seeds")
        print(
            f"{'candidate':<40}{'req/run':>9}{'vs':>7}{'p50':>6}{'p95':>6}"
            + "".join(f"{name:>16}" for name in SETUP_ENDS)
        )
        baseline = 0.0
        for name, make, first_poll_at, fixed in candidates:
            rows = [search_row(make, first_poll_at, fixed, mean, cv, seed, count) for seed in seeds]
            mean_row = {key: statistics.fmean(row[key] for row in rows) for key in rows[0]}
            baseline = baseline or mean_row["requests"]
            print(
                f"{name:<40}{mean_row['requests']:>9.1f}{mean_row['requests'] / baseline:>6.2f}x"
                f"{mean_row['p50']:>6.1f}{mean_row['p95']:>6.1f}"
                + "".join(f"{mean_row[name]:>16.1f}" for name in SETUP_ENDS)
            )


def _spread(values: list[float], digits: int = 1) -> str:
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def main(argv: list[str] | None = None) -> int:
    """Print the table."""
    parser = argparse.ArgumentParser(prog="python -m bench.polling_sim", description=__doc__)
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--seeds", default="1,2,3,5,7", help="comma-separated seeds; the table shows mean (range)")
    parser.add_argument("--search", action="store_true", help="only the search behind the defaults")
    args = parser.parse_args(argv)
    seeds = [int(seed) for seed in args.seeds.split(",")]
    if args.search:
        print_search(args.runs, seeds)
        return 0
    print(
        f"{args.runs} runs per case and seed, seeds {seeds}, mean run time {MEAN_SECONDS:.0f} s, "
        f"queue ~20 s + 5 s, request {REQUEST_SECONDS} s"
    )
    for cv in (0.1, 0.3, 0.6):
        per_seed = [run_case(cv, args.runs, seed) for seed in seeds]
        print(f"\nCV {cv}")
        print(
            f"{'strategy':<18}{'requests/run':>22}{'lag p50 s':>20}{'lag p95 s':>20}"
            f"   vs {PREFECT_DBT}: requests, target (<= 0.5x at p50 lag <=)"
        )
        for name in per_seed[0]:
            requests = [rows[name][0] for rows in per_seed]
            p50 = [rows[name][1] for rows in per_seed]
            p95 = [rows[name][2] for rows in per_seed]
            line = f"{name:<18}{_spread(requests):>22}{_spread(p50):>20}{_spread(p95):>20}"
            if name.startswith("ours"):
                ratios = [rows[name][0] / rows[PREFECT_DBT][0] for rows in per_seed]
                met = sum(
                    rows[name][0] <= 0.5 * rows[PREFECT_DBT][0] and rows[name][1] <= rows[PREFECT_DBT][1]
                    for rows in per_seed
                )
                line += f"   {_spread(ratios, 2)}x, met in {met} of {len(seeds)} seeds"
            print(line)
    for mean in (60.0, 300.0, MEAN_SECONDS):
        _print_early_ends(mean, args.runs, seeds)
    return 0


def _print_early_ends(mean: float, runs: int, seeds: list[int]) -> None:
    tables = [early_ends(mean, runs, seed) for seed in seeds]
    print(f"\nEarly ends, ~{mean:.0f} s job (CV 0.1): lag p50 / p95 s (mean over seeds)")
    strategies = list(tables[0][next(iter(EARLY_END_SCENARIOS))])
    print(f"{'scenario':<30}" + "".join(f"{strategy:>24}" for strategy in strategies))
    for scenario in EARLY_END_SCENARIOS:
        cells = []
        for strategy in strategies:
            median = statistics.fmean(table[scenario][strategy][0] for table in tables)
            high = statistics.fmean(table[scenario][strategy][1] for table in tables)
            cells.append(f"{median:.1f} / {high:.1f}")
        print(f"{scenario:<30}" + "".join(f"{cell:>24}" for cell in cells))


if __name__ == "__main__":
    raise SystemExit(main())
