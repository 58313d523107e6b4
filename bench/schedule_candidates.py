"""Candidate default poll settings against prefect-dbt's fixed 10 s, on a simulated clock (no I/O, seconds to run).

The real ``AdaptiveSchedule``; each dbt run is queued 2 s, starting 3 s, then runs for a duration drawn from the
job's own log-normal (20 past runs, CV 0.1 by default). Requests per run = trigger + fixed reads + polls; prefect-dbt
is trigger + a poll every 10 s from the trigger + 1 artifact list. "seen" is the poll that saw the end, minus the
end; the benchmark (``bench.compare``) adds the time from that poll to the flow's return. Early ends (an Error or a
cancel at a uniformly drawn moment of the run) show the worst "seen" against the cap.

Rows named "today" are the settings before 510364c (cap 120, band every 25.5 s, halving before the band); the row
named "now" is what the flows use (chosen in ``bench.polling_sim --search``). The early part's rows ran, until
then, on jobs whose band starts after 180 s only; the schedule now gives every job one. ``python -m bench.schedule_candidates [--runs 2000] [--cv 0.1]``
"""

from __future__ import annotations

import argparse
import math
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from dbt_cloud_gate.dbtcloud_api.models import RunStatus
from dbt_cloud_gate.dbtcloud_api.polling import AdaptiveSchedule, FixedInterval

QUEUED_S, STARTING_S = 2.0, 3.0


@dataclass
class _SimRun:
    """The fields a schedule reads from a run."""

    status: RunStatus
    started_at: datetime | None
    run_steps: list[Any] = field(default_factory=list)
    latest_step_failed: bool = False
    created_at: datetime | None = None


@dataclass(frozen=True)
class Candidate:
    """A schedule setting: ``adaptive`` with its knobs, or fixed polling every ``interval``."""

    name: str
    interval: float  # fixed interval, or the no-history fallback and the cap in every phase
    adaptive: bool = True
    target_lag: float = 5.0  # band polls every 1.7 x this
    first_poll_at: float = 0.0  # 0: poll right after the trigger (today); else sleep this long first (capped)
    fixed_requests: int = 5  # besides trigger and polls
    direct: bool = False  # before the band: sleep straight to its start (capped), no halving
    early_window: float = 0.0  # the early part (every 10 s; see polling.AdaptiveSchedule); 0: none


CANDIDATES = [
    Candidate("today: adaptive, interval 30 (cap 120, band 25.5 s)", 30, target_lag=15, fixed_requests=5),
    Candidate("today's code at interval 10", 10, target_lag=5, fixed_requests=5),
    Candidate("cap 30, band 8.5 s, 2 fixed", 30, target_lag=5, fixed_requests=2),
    Candidate("cap 30, band 8.5 s, 2 fixed, first poll at cap", 30, target_lag=5, first_poll_at=30, fixed_requests=2),
    Candidate("cap 60, band 8.5 s, 2 fixed, first poll at cap", 60, target_lag=5, first_poll_at=60, fixed_requests=2),
    Candidate("cap 45, band 8.5 s, 2 fixed, first poll at cap", 45, target_lag=5, first_poll_at=45, fixed_requests=2),
    Candidate(
        "cap 30, band 8.5 s, 2 fixed, first poll at cap, direct to band",
        30,
        target_lag=5,
        first_poll_at=30,
        fixed_requests=2,
        direct=True,
    ),
    Candidate(
        "cap 30, band 9.5 s, 2 fixed, first poll at cap, direct to band",
        30,
        target_lag=9.5 / 1.7,
        first_poll_at=30,
        fixed_requests=2,
        direct=True,
    ),
    Candidate(
        "cap 30, band 8.5 s, 2 fixed, early part 40 s at 10 s, direct to band",
        30,
        target_lag=5,
        first_poll_at=10,
        fixed_requests=2,
        direct=True,
        early_window=40.0,
    ),
    Candidate(
        "now: cap 30, band 8.5 s, 1 fixed (history read with the first poll), early part 30 s at 10 s, direct",
        30,
        target_lag=5,
        first_poll_at=10,
        fixed_requests=1,
        direct=True,
        early_window=30.0,
    ),
]


class HalvingSchedule(AdaptiveSchedule):
    """The schedule as it was before 510364c: before the band, halve the distance to its start at each poll."""

    def next_interval(self, run: Any, elapsed: float) -> float:
        """As ``AdaptiveSchedule``, but halving the distance to the band instead of sleeping straight to it."""
        if self.model is None or run.started_at is None or run.status in (RunStatus.QUEUED, RunStatus.STARTING):
            return super().next_interval(run, elapsed)
        age = max(0.0, self.clock() - run.started_at.timestamp())
        if age < self.band_start:
            return self._clamp(max(self.band_interval, (self.band_start - age) / 2))
        return super().next_interval(run, elapsed)


def _make(c: Candidate, history: list[float], clock: list[float]) -> AdaptiveSchedule | FixedInterval:
    if not c.adaptive:
        return FixedInterval(c.interval)
    kind = AdaptiveSchedule if c.direct else HalvingSchedule  # the built schedule goes straight to the band
    return kind(
        history,
        target_lag_seconds=c.target_lag,
        fallback_interval=c.interval,
        min_interval=1.0,
        # today's make_schedule caps every phase at max(120, interval); the candidates cap at the interval
        max_interval=max(120.0, c.interval) if c.name.startswith("today") else c.interval,
        early_window=c.early_window,
        clock=lambda: clock[0],
    )


def run_one(c: Candidate, history: list[float], duration: float, ends: float) -> tuple[int, float]:
    """Polls and seen-lag for one run of ``duration`` that ends (success, error or cancel) ``ends`` s into it."""
    clock = [0.0]
    schedule = _make(c, history, clock)
    start = QUEUED_S + STARTING_S
    end = start + ends
    t = min(c.first_poll_at, c.interval) if c.first_poll_at else 0.0
    if c.early_window:  # as the flows do: the schedule's own first interval
        t = schedule.first_interval()
    polls = 0
    while True:
        polls += 1
        clock[0] = t
        if t >= end:
            return polls, t - end
        if t < QUEUED_S:
            run = _SimRun(RunStatus.QUEUED, None)
        elif t < start:
            run = _SimRun(RunStatus.STARTING, None)
        else:
            run = _SimRun(RunStatus.RUNNING, datetime.fromtimestamp(start, tz=UTC))
        t += schedule.next_interval(run, t)  # type: ignore[arg-type]


def _lognormal(rng: random.Random, mean: float, cv: float) -> float:
    sigma = math.sqrt(math.log(1 + cv**2))
    return rng.lognormvariate(math.log(mean) - sigma**2 / 2, sigma)


def _q(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(p * len(ordered)) - 1))]


def main(argv: list[str] | None = None) -> int:
    """Print one table per job length."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--cv", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args(argv)
    for mean in (60.0, 1200.0):
        rng = random.Random(args.seed)
        history = [_lognormal(rng, mean, args.cv) for _ in range(20)]
        durations = [_lognormal(rng, mean, args.cv) for _ in range(args.runs)]
        early = [rng.uniform(0, d) for d in durations]
        theirs_polls = [math.floor((QUEUED_S + STARTING_S + d) / 10) + 1 for d in durations]
        theirs_seen = [10 * p - (QUEUED_S + STARTING_S + d) for p, d in zip(theirs_polls, durations, strict=True)]
        theirs_req = 2 + sum(theirs_polls) / len(theirs_polls)
        print(
            f"\n~{mean:.0f} s job, CV {args.cv}, {args.runs} runs; prefect-dbt (fixed 10 s): {theirs_req:.1f} req/run, "
            f"seen p50 {_q(theirs_seen, 0.5):.1f} s"
        )
        print("| candidate | req/run | vs prefect-dbt | seen p50 / p95 | early end seen: max | no history: req/run |")
        print("| --- | ---: | ---: | --- | ---: | ---: |")
        for c in CANDIDATES:
            polls, seen = zip(*(run_one(c, history, d, d) for d in durations), strict=True)
            _, early_seen = zip(
                *(run_one(c, history, d, e) for d, e in zip(durations, early, strict=True)), strict=True
            )
            nohist, _ = zip(*(run_one(c, [], d, d) for d in durations[:200]), strict=True)
            req = 1 + c.fixed_requests + sum(polls) / len(polls)
            print(
                f"| {c.name} | {req:.1f} | {req / theirs_req:.2f}x | {_q(list(seen), 0.5):.1f} / {_q(list(seen), 0.95):.1f} s"
                f" | {max(early_seen):.1f} s | {1 + c.fixed_requests + sum(nohist) / len(nohist):.1f} |"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
