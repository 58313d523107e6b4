"""Adaptive poll schedules: few calls while a run cannot plausibly be done, many near its expected end.

The schedule learns from the job's recent successful runs (their durations, start to finish), fits a
log-normal to them, and polls:
- in the early part, where failed runs cluster (clone, deps, a parse or compile error, a failing first model, a cancel
  right after a wrong trigger): every ``early_interval`` (10 s, prefect-dbt's cadence) while the run is queued or
  starting in the first ``early_queue`` (90 s) since it was created (so that its start is seen within 10 s), and while
  its age is under ``early_window`` (30 s), the last early poll inside the window; for every job (on a short one,
  the window ends before its band, whose polls take over). Chosen
  in ``bench.polling_sim --search``: on a ~60 s job, setup errors (0-30 s) are seen 5.1 s after they happen (median;
  prefect-dbt 5.0 s) where the schedule without it saw them after 14.9 s; a 40 s window costs a poll more;
- while the run is still queued or starting after ``early_queue`` (run slots full): every ``q(0.02)`` of the run time (a run that starts right
  after a poll cannot finish sooner);
- while running, past the early part and before the likely-finish band: straight at the band's start;
- inside the band (the central ``band`` quantiles of the predicted duration): every ``1.7 * target_lag``
  seconds, so that a run ending there is seen within ``target_lag`` seconds on average;
- past the band: backing off linearly;
- as soon as the latest step has failed: at ``min_interval`` (the run ends in Error moments later; a step that
  failed and that later steps followed, such as a "Run source freshness" checkbox step, fails nothing).
Every phase is capped by ``max_interval`` (the flows' ``poll_interval_seconds``), so a run that ends early (an
Error, a cancel) is never seen later than fixed polling at that interval would see it. With fewer than
``min_history`` past runs it polls at ``fallback_interval`` past the early part, like fixed polling.
Run age is wall-clock time since the run's ``started_at``: this assumes the machine's clock is NTP-synced.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from dbt_cloud_gate.dbtcloud_api.models import Run, RunStatus, durations_from_runs
from dbt_cloud_gate.dbtcloud_api.types import check_seconds

__all__ = [
    "DEFAULT_TARGET_LAG_SECONDS",
    "AdaptiveSchedule",
    "DurationModel",
    "FixedInterval",
    "durations_from_runs",
    "make_schedule",
]

_NORMAL = statistics.NormalDist()


class FixedInterval:
    """Poll every ``seconds`` (sub-second values are accepted, for tests)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = check_seconds("poll interval", seconds)

    def next_interval(self, run: Run, elapsed: float) -> float:
        """The same interval whatever the run."""
        return self.seconds

    def first_interval(self) -> float:
        """Seconds from a trigger to the first poll (the trigger's answer already says the run is queued)."""
        return self.seconds

    def __repr__(self) -> str:
        return f"FixedInterval({self.seconds:g})"


@dataclass(frozen=True)
class DurationModel:
    """A log-normal fit of run durations (seconds)."""

    mu: float
    sigma: float
    count: int

    @classmethod
    def fit(cls, durations: Sequence[float], min_sigma: float = 0.03) -> DurationModel | None:
        """Fit ``durations``; ``None`` when there are fewer than two positive ones."""
        logs = [math.log(d) for d in durations if d and d > 0]
        if len(logs) < 2:
            return None
        mu = statistics.fmean(logs)
        # Sample spread, widened for small samples (a predictive, not a fitted, distribution).
        sigma = statistics.stdev(logs) * math.sqrt(1 + 1 / len(logs))
        return cls(mu=mu, sigma=max(sigma, min_sigma), count=len(logs))

    def quantile(self, p: float) -> float:
        """The ``p`` quantile of the predicted duration."""
        # Bounded: a degenerate history (1e300 s beside 1e-300 s) must not overflow; 1e7 s is 115 days.
        return min(math.exp(min(self.mu + self.sigma * _NORMAL.inv_cdf(min(max(p, 1e-6), 1 - 1e-6)), 700.0)), 1e7)


class AdaptiveSchedule:
    """A poll schedule shaped by the job's history; see the module docstring."""

    def __init__(
        self,
        history_seconds: Sequence[float],
        *,
        target_lag_seconds: float = 5.0,
        band: tuple[float, float] = (0.1, 0.9),
        min_interval: float = 1.0,
        max_interval: float = 120.0,
        fallback_interval: float = 30.0,
        min_history: int = 3,
        early_interval: float = 10.0,
        early_window: float = 30.0,
        early_queue: float = 90.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not 0 < band[0] < band[1] < 1:
            raise ValueError(f"band must be two quantiles 0 < lo < hi < 1, got {band}")
        check_seconds("min_interval", min_interval)
        check_seconds("max_interval", max_interval)
        check_seconds("target_lag_seconds", target_lag_seconds)
        check_seconds("fallback_interval", fallback_interval)
        check_seconds("early_interval", early_interval)
        for name, value in (("early_window", early_window), ("early_queue", early_queue)):
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a number of seconds >= 0, got {value!r}")
        if min_interval > max_interval:
            raise ValueError("min_interval must be at most max_interval")
        usable = [d for d in history_seconds if d and d > 0 and math.isfinite(d)]
        self.model = DurationModel.fit(usable) if len(usable) >= min_history else None
        self.target_lag = target_lag_seconds
        self.min_interval = min_interval
        self.max_interval = max_interval
        self.fallback_interval = fallback_interval
        self.clock = clock
        self.early_interval = early_interval
        self.early_until = early_window
        self.early_queue = max(early_queue, early_window)
        self.band_interval = 1.7 * target_lag_seconds
        if self.model is not None:
            self.band_start = self.model.quantile(band[0])
            self.band_end = self.model.quantile(band[1])
            self.earliest = self.model.quantile(0.02)
            # The early part never reaches into the band: a short job's band polls see its early ends too.
            self.early_until = min(early_window, max(0.0, self.band_start - self.band_interval))

    def __repr__(self) -> str:
        if self.model is None:
            return f"AdaptiveSchedule(no history: every {self.fallback_interval:g} s)"
        return (
            f"AdaptiveSchedule(band {self.band_start:.0f}-{self.band_end:.0f} s every {self.band_interval:g} s, "
            f"from {self.model.count} runs)"
        )

    def _clamp(self, seconds: float) -> float:
        return min(self.max_interval, max(self.min_interval, seconds))

    def _queued_interval(self) -> float:
        return self.fallback_interval if self.model is None else self._clamp(self.earliest)

    def _early(self, interval: float) -> float:
        """The early part's interval: ``early_interval``, never above what the phase would poll at anyway."""
        return min(self._clamp(self.early_interval), interval)

    def first_interval(self) -> float:
        """Seconds from a trigger to the first poll: the queued phase's interval (the early part's, when any)."""
        queued = self._queued_interval()
        return self._early(queued) if self.early_until > 0 else queued

    def next_interval(self, run: Run, elapsed: float) -> float:
        """Seconds until the next poll of ``run`` (``elapsed``: seconds since the wait began)."""
        if run.latest_step_failed:  # not an errored freshness step the run went past: that one fails nothing
            return self.min_interval
        if run.started_at is None or run.status in (RunStatus.QUEUED, RunStatus.STARTING):
            queued = self._queued_interval()
            # Through a queue of up to ``early_queue`` the run's start is caught within early_interval, so that its
            # first seconds get the early part; a longer queue (run slots full) is polled at the queued interval.
            queued_for = self.clock() - run.created_at.timestamp() if run.created_at is not None else elapsed
            return self._early(queued) if self.early_until > 0 and queued_for < self.early_queue else queued
        age = max(0.0, self.clock() - run.started_at.timestamp())
        early = self._early(self.fallback_interval if self.model is None else self.max_interval)
        if age + early <= self.early_until:  # the early part ends with its last poll inside the window
            return early
        if self.model is None:
            return self.fallback_interval
        if age < self.band_start:
            # Straight to the band's start: the cap, not halving, is what bounds how late an early end is seen.
            return self._clamp(max(self.band_interval, self.band_start - age))
        if age <= self.band_end:
            return self._clamp(self.band_interval)
        width = max(self.band_end - self.band_start, self.band_interval)
        return self._clamp(self.band_interval * (1 + (age - self.band_end) / width))


# The adaptive schedule's aim inside the likely-finish band: a run ending there is seen this many seconds after
# its end on average (a poll every 8.5 s). Measured against prefect-dbt's fixed 10 s polling (seen ~5 s after
# the end) in bench/compare.py; what makes it cheap is that the band is narrow for a steady job.
DEFAULT_TARGET_LAG_SECONDS = 5.0


def make_schedule(
    history_seconds: Sequence[float],
    poll_interval_seconds: float,
    *,
    adaptive: bool = True,
    target_lag_seconds: float = DEFAULT_TARGET_LAG_SECONDS,
) -> FixedInterval | AdaptiveSchedule:
    """The schedule the flows use: adaptive around the job's history, never polling less often than every
    ``poll_interval_seconds`` (so an end at any moment is seen as fixed polling would see it), every 10 s in the
    run's early part (where failed runs end: seen as prefect-dbt's 10 s polling sees them), and densely
    (``target_lag_seconds``) only where the run is likely to end; fixed polling when ``adaptive`` is off, and past
    the early part when there is no history."""
    check_seconds("poll_interval_seconds", poll_interval_seconds)
    check_seconds("target_lag_seconds", target_lag_seconds)
    if not adaptive:
        return FixedInterval(poll_interval_seconds)
    return AdaptiveSchedule(
        history_seconds,
        target_lag_seconds=min(target_lag_seconds, poll_interval_seconds / 1.7),
        fallback_interval=poll_interval_seconds,
        min_interval=min(1.0, poll_interval_seconds),
        max_interval=poll_interval_seconds,
    )
