"""The adaptive poll schedule and the shared rate limiter."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from dbt_cloud_gate.dbtcloud_api import DbtCloudClient, Run, RunStatus
from dbt_cloud_gate.dbtcloud_api.emulator import EmulatorServer, Fault
from dbt_cloud_gate.dbtcloud_api.polling import AdaptiveSchedule, DurationModel, FixedInterval, make_schedule
from dbt_cloud_gate.dbtcloud_api.ratelimit import RateLimiter, shared_limiter
from tests.conftest import ACCOUNT, FAST_RETRY, TOKEN

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
HISTORY = [600.0, 620.0, 580.0, 640.0, 610.0, 590.0]


def run_at(status: RunStatus, age: float | None, steps: list[dict[str, Any]] | None = None) -> Run:
    started = NOW - timedelta(seconds=age) if age is not None else None
    return Run.model_validate(
        {"id": 1, "account_id": 1, "status": int(status), "started_at": started, "run_steps": steps or []}
    )


def schedule(**options: Any) -> AdaptiveSchedule:
    return AdaptiveSchedule(HISTORY, clock=lambda: NOW.timestamp(), **options)


def test_without_history_it_is_fixed_polling() -> None:
    for history in ([], [600.0, 610.0]):
        plan = AdaptiveSchedule(history, fallback_interval=30, clock=lambda: NOW.timestamp())
        assert plan.model is None
        assert plan.next_interval(run_at(RunStatus.RUNNING, 100), 100) == 30
        assert AdaptiveSchedule(history, fallback_interval=30, early_window=0).first_interval() == 30
    assert make_schedule(HISTORY, 10, adaptive=False).next_interval(run_at(RunStatus.RUNNING, 1), 1) == 10
    assert isinstance(make_schedule(HISTORY, 10, adaptive=False), FixedInterval)


def test_sleeps_until_the_likely_finish_band_then_polls_densely_then_backs_off() -> None:
    plan = schedule(target_lag_seconds=5, max_interval=120)
    assert 500 < plan.band_start < 600 < plan.band_end < 700
    assert plan.early_until == 30  # the early part: the run's first 30 s, polled every 10 s
    assert plan.next_interval(run_at(RunStatus.RUNNING, 10), 10) == 10
    assert plan.next_interval(run_at(RunStatus.RUNNING, 20), 20) == 10  # its last poll at 30, inside the window
    assert plan.next_interval(run_at(RunStatus.RUNNING, 25), 30) == 120  # the next would fall outside it
    middle = plan.next_interval(run_at(RunStatus.RUNNING, 41), 46)
    assert middle == 120  # past the early part, far from the band: the cap
    near = plan.next_interval(run_at(RunStatus.RUNNING, plan.band_start - 30), 0)
    assert near == pytest.approx(30, abs=0.01)  # straight to the band's start
    closer = plan.next_interval(run_at(RunStatus.RUNNING, plan.band_start - 2), 0)
    assert closer == pytest.approx(8.5)  # never finer than inside the band
    inside = plan.next_interval(run_at(RunStatus.RUNNING, 605), 0)
    assert inside == pytest.approx(8.5)  # 1.7 x the target lag
    later = plan.next_interval(run_at(RunStatus.RUNNING, plan.band_end + 200), 0)
    much_later = plan.next_interval(run_at(RunStatus.RUNNING, plan.band_end + 2000), 0)
    assert inside < later < much_later <= 120


def test_the_flows_schedule_never_waits_longer_than_the_poll_interval() -> None:
    """An early Error or a cancel is seen within the interval in every phase, as with fixed polling."""
    plan = make_schedule(HISTORY, 30)
    assert isinstance(plan, AdaptiveSchedule)
    plan.clock = lambda: NOW.timestamp()
    assert plan.band_interval == pytest.approx(8.5)  # the band's density does not follow the interval
    assert plan.first_interval() == pytest.approx(10)  # the early part: prefect-dbt's cadence
    ages = [0, 1, 10, 100, 300, plan.band_start - 1, plan.band_end + 1, plan.band_end + 10_000]
    delays = [plan.next_interval(run_at(RunStatus.RUNNING, age), 0) for age in ages]
    delays += [plan.next_interval(run_at(status, None), 0) for status in (RunStatus.QUEUED, RunStatus.STARTING)]
    assert max(delays) <= 30 and min(delays) >= 1
    # Queued: every 10 s through the first 90 s of the wait (the run's start is caught within 10 s, and its first
    # seconds get the early part); past that (run slots full), at the job's earliest plausible end, capped.
    assert plan.next_interval(run_at(RunStatus.QUEUED, None), 41) == pytest.approx(10)
    assert plan.next_interval(run_at(RunStatus.STARTING, None), 89) == pytest.approx(10)
    assert plan.next_interval(run_at(RunStatus.QUEUED, None), 91) == pytest.approx(30)
    # Counted from the run's creation when the read says it (a wait on a run queued long before it began).
    long_queued = run_at(RunStatus.QUEUED, None).model_copy(update={"created_at": NOW - timedelta(seconds=100)})
    assert plan.next_interval(long_queued, 5) == pytest.approx(30)
    just_queued = run_at(RunStatus.QUEUED, None).model_copy(update={"created_at": NOW - timedelta(seconds=50)})
    assert plan.next_interval(just_queued, 120) == pytest.approx(10)
    # A short job has an early part too, ending before its band (whose polls see its early ends).
    short = make_schedule([60.0, 62.0, 58.0, 61.0], 30)
    assert isinstance(short, AdaptiveSchedule) and 45 < short.earliest < 58
    assert short.early_until == 30 and short.first_interval() == pytest.approx(10)
    short.clock = lambda: NOW.timestamp()
    ages = [5.0]  # its first poll sees the run 5 s old (queued 2 s, starting 3 s)
    while ages[-1] < 70:
        ages.append(ages[-1] + short.next_interval(run_at(RunStatus.RUNNING, ages[-1]), ages[-1]))
    assert ages[:3] == [5, 15, 25]  # the early part: errors in the first 30 s seen within 10 s
    # Then straight to the band, never more than the interval (30 s) later; then the band's polls.
    assert ages[3] == pytest.approx(min(short.band_start, 25 + 30))
    assert ages[4] - ages[3] == pytest.approx(8.5)
    # A job so short that its band starts within the early part's window: the band's polls alone.
    brief = make_schedule([20.0, 21.0, 19.5, 20.5], 30)
    assert isinstance(brief, AdaptiveSchedule) and brief.early_until == pytest.approx(brief.band_start - 8.5)
    quick = make_schedule([6.0, 6.5, 5.5], 30)
    assert isinstance(quick, AdaptiveSchedule) and quick.earliest < 10
    assert quick.first_interval() == pytest.approx(quick.earliest)
    # A small interval lowers the band's and the early part's interval to it.
    small = make_schedule(HISTORY, 5)
    assert isinstance(small, AdaptiveSchedule) and small.band_interval == pytest.approx(5)
    assert small.first_interval() == 5
    # No history: every 10 s in the early part, then fixed polling at the interval.
    blind = make_schedule([], 30)
    assert isinstance(blind, AdaptiveSchedule) and blind.first_interval() == 10
    blind.clock = lambda: NOW.timestamp()
    assert blind.next_interval(run_at(RunStatus.RUNNING, 19), 24) == 10
    assert blind.next_interval(run_at(RunStatus.RUNNING, 21), 26) == 30


def test_queueing_is_tracked_apart_from_running() -> None:
    plan = schedule(target_lag_seconds=5, max_interval=1000)
    queued = plan.next_interval(run_at(RunStatus.QUEUED, None), 5000)  # long queue: not counted as run time
    assert queued == pytest.approx(plan.earliest) and queued < min(HISTORY)


def test_a_failed_step_means_poll_now() -> None:
    plan = schedule(min_interval=1)
    failed = [{"index": 4, "status": 20, "name": "Invoke dbt with `dbt build`"}]
    assert plan.next_interval(run_at(RunStatus.RUNNING, 10, failed), 10) == 1


def test_a_failed_freshness_step_the_run_went_past_keeps_the_schedule() -> None:
    # "Run source freshness" ends in error on a stale source and the run goes on for its whole length: polling every
    # second from then on would cost a request a second.
    plan = schedule(min_interval=1)
    steps = [
        {"index": 4, "status": 20, "name": "Invoke dbt with `dbt source freshness`"},
        {"index": 5, "status": 3, "name": "Invoke dbt with `dbt build`"},
    ]
    went_on = run_at(RunStatus.RUNNING, 100, steps)
    assert not went_on.latest_step_failed and plan.next_interval(went_on, 100) > 1
    assert went_on.failed_step is not None and went_on.failed_step.index == 4
    steps[1]["status"] = 20  # then `dbt build` fails the run: that is the failed step, and the end comes soon
    failed = run_at(RunStatus.RUNNING, 100, steps)
    assert failed.latest_step_failed and plan.next_interval(failed, 100) == 1
    assert failed.failed_step is not None and failed.failed_step.index == 5


def test_duration_model() -> None:
    model = DurationModel.fit(HISTORY)
    assert model is not None and model.count == 6
    assert model.quantile(0.5) == pytest.approx(606, rel=0.02)
    assert model.quantile(0.1) < model.quantile(0.9)
    assert DurationModel.fit([5.0]) is None


def test_rate_limiter_spaces_requests_and_honours_penalties() -> None:
    now = [0.0]
    limiter = RateLimiter(per_minute=600, burst=2, clock=lambda: now[0])  # about one every 0.1 s, bursts of 2
    step = limiter.interval
    assert 0.1 < step < 0.102
    assert [round(limiter.reserve(), 6) for _ in range(4)] == [0.0, 0.0, round(step, 6), round(2 * step, 6)]
    now[0] = 10.0
    limiter.penalize(3.0)
    assert limiter.reserve() == pytest.approx(3.0)
    assert limiter.penalties == 1


def test_a_429_slows_every_client_of_the_account(emulator: EmulatorServer) -> None:
    limiter = RateLimiter(per_minute=60_000)
    emulator.emulator.add_fault(Fault(kind="429", retry_after="0.6", times=1, path=r"/jobs/11/$"))
    with (
        DbtCloudClient(ACCOUNT, TOKEN, emulator.url, retry=FAST_RETRY, rate_limiter=limiter) as first,
        DbtCloudClient(ACCOUNT, TOKEN, emulator.url, retry=FAST_RETRY, rate_limiter=limiter) as second,
    ):
        waited: dict[str, float] = {}

        def other() -> None:
            deadline = time.monotonic() + 5
            while limiter.penalties == 0 and time.monotonic() < deadline:
                time.sleep(0.01)  # until the first client has had its 429
            started = time.monotonic()
            second.get_job(12)
            waited["second"] = time.monotonic() - started

        thread = threading.Thread(target=other)
        thread.start()
        first.get_job(11)
        thread.join()
    assert waited["second"] >= 0.4  # held back by the other client's 429 (0.6 s), not by its own
    assert limiter.penalties == 1


def test_shared_limiter_is_one_per_account() -> None:
    a = shared_limiter("https://x.example", 1)
    assert shared_limiter("https://x.example", 1) is a and shared_limiter("https://x.example", 2) is not a


@pytest.mark.parametrize(("per_minute", "burst"), [(1000, 20), (5000, 20), (60, 5), (30, 20)])
def test_no_rolling_minute_exceeds_the_limit(per_minute: float, burst: int) -> None:
    now = [0.0]
    limiter = RateLimiter(per_minute=per_minute, burst=burst, clock=lambda: now[0])
    sent: list[float] = []
    for _ in range(int(per_minute * 3)):  # a sustained overload: everyone asks at once, then sends on time
        sent.append(now[0] + limiter.reserve())
    sent.sort()
    window_start = 0
    for index, moment in enumerate(sent):
        while sent[window_start] <= moment - 60:
            window_start += 1
        assert index - window_start + 1 <= per_minute
    assert len(sent) / (sent[-1] / 60) > per_minute * 0.95  # and the limit is used, not wasted
