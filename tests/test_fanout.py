"""The fan-out flow: many jobs at once, one event loop, a constant number of task runs per dbt run; the soak."""

from __future__ import annotations

import logging
from typing import Any

import httpx
import pytest
from prefect import flow, task
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.concurrency.v1._asyncio import ConcurrencySlotAcquisitionError
from prefect.exceptions import PrefectHTTPStatusError

from bench.soak import TOKEN as SOAK_TOKEN
from bench.soak import run_soak
from dbt_cloud_gate.dbtcloud_api import DbtCloudClient
from dbt_cloud_gate.dbtcloud_api.emulator import EmulatorServer, JobSpec
from dbt_cloud_gate.dbtcloud_api.errors import DbtCloudNotFoundError
from dbt_cloud_gate.errors import DbtCloudNativeScheduleOn, DbtCloudRunsFailed
from dbt_cloud_gate.flows import fanout
from dbt_cloud_gate.flows.fanout import run_dbt_cloud_jobs
from dbt_cloud_gate.models import DbtCloudJobRequest
from dbt_cloud_gate.settings import WaitSettings
from dbt_cloud_gate.starting import read_jobs
from dbt_cloud_gate.tasks.start import trigger_dbt_cloud_job
from tests.conftest import TOKEN, AlertSink
from tests.test_flow import FAST, creds, multi_step_job, prefect_texts, requests_since, saved_webhook

pytestmark = pytest.mark.usefixtures("prefect_harness")


def task_runs_of(flow_run_id: object) -> list[str]:
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))  # type: ignore[list-item]
        )
    return sorted(r.name.rsplit("-", 1)[0] for r in runs)


def test_fan_out_mixed_outcomes(emulator: EmulatorServer, webhook: AlertSink) -> None:
    block = saved_webhook(webhook, "fanout-alerts")
    jobs: list[int | DbtCloudJobRequest] = [11, 11, 12, DbtCloudJobRequest(job_id=13, cause="with a cause")]
    with pytest.raises(DbtCloudRunsFailed) as info:
        run_dbt_cloud_jobs(jobs, creds(emulator), alert_blocks=[block], **FAST)
    failed_run = emulator.emulator.runs_of(12)[0]
    assert [f["run_id"] for f in info.value.failures] == [failed_run.id]
    assert f"job 12: run {failed_run.id} Error" in str(info.value)
    assert sorted(r.job_id for r in info.value.results) == [11, 11, 13]
    assert emulator.emulator.trigger_count == {11: 2, 12: 1, 13: 1}
    assert len(webhook.received) == 1 and str(failed_run.id) in webhook.received[0]["body"]
    causes = {run.cause for run in emulator.emulator.runs.values()}
    assert len(causes) == 4 and any(c.startswith("with a cause [dcg:") for c in causes)


def test_task_runs_per_dbt_run_do_not_grow_with_duration(emulator: EmulatorServer) -> None:
    counts = []
    for seconds in (0.2, 2.5):
        for job in (11, 13):
            emulator.emulator.set_job(job, run_seconds=seconds)
        state = run_dbt_cloud_jobs([11, 13, 11], creds(emulator), return_state=True, **FAST)
        assert state.is_completed()
        results = state.result()
        assert [r.job_id for r in results] == [11, 13, 11] and all(r.status == "Success" for r in results)
        counts.append(task_runs_of(state.state_details.flow_run_id))
    # Per fan-out of 3 runs: 3 triggers, 1 check of every job, 1 wait for all; whatever the duration.
    assert counts[0] == counts[1]
    assert counts[0].count("trigger-dbt-cloud-job") == 3 and counts[0].count("wait-for-dbt-cloud-runs") == 1
    assert counts[0].count("check-dbt-cloud-job-schedules") == 1 and len(counts[0]) == 5


def test_soak_under_faults_reduced(webhook: AlertSink) -> None:
    block = saved_webhook(webhook, "soak-alerts")
    report = run_soak(
        runs=30,
        jobs=6,
        fault_rate=0.10,
        seed=11,
        alert_blocks=[block],
        alert_texts=lambda: webhook.received,
        time_limit=240,
    )
    assert report.violations == [], report.summary()
    assert report.faulted > 0 and report.failed > 0 and report.succeeded > 0
    assert report.duplicate_triggers == 0 and report.audit_rows == report.succeeded
    assert report.alerts == report.failed
    texts = prefect_texts()
    assert SOAK_TOKEN not in texts and TOKEN not in texts


def test_fan_out_refuses_before_triggering_when_a_job_is_scheduled_in_dbt_cloud(emulator: EmulatorServer) -> None:
    with pytest.raises(DbtCloudNativeScheduleOn, match=r"job 13 \('scheduled'\)"):
        run_dbt_cloud_jobs([11, 13, 11], creds(emulator), native_schedule="fail", **FAST)
    assert emulator.emulator.trigger_count == {}


def test_fan_out_reads_every_building_step_and_names_deadlines_and_missing_watermarks(
    emulator: EmulatorServer, webhook: AlertSink
) -> None:
    block = saved_webhook(webhook, "fanout-issue8-alerts")
    emulator.emulator.add_job(multi_step_job(21))
    emulator.emulator.set_job(12, outcome="success", finished_at_missing=True)
    emulator.emulator.set_job(13, queue_seconds=60)
    with pytest.raises(DbtCloudRunsFailed) as info:
        run_dbt_cloud_jobs(
            [21, 12, 13], creds(emulator), alert_blocks=[block], poll_interval_seconds=0.05, max_wait_seconds=3
        )
    [multi] = info.value.results
    assert [m.name for m in multi.models] == ["raw_orders", "stg_orders", "orders"]
    failures = {f["job_id"]: f for f in info.value.failures}
    assert "finished_at" in failures[12]["error"]
    assert "still queued after" in failures[13]["error"] and "never started" in failures[13]["error"]
    bodies = sorted(alert["body"] for alert in webhook.received)
    assert len(bodies) == 2 and any("never started" in b for b in bodies) and any("finished_at" in b for b in bodies)


def test_a_first_attempt_reads_its_jobs_once_and_searches_for_no_key(
    emulator: EmulatorServer, caplog: pytest.LogCaptureFixture
) -> None:
    """At defaults (a first attempt), before its triggers the fan-out reads its jobs in one page of the account's
    jobs (more than JOBS_READ_ONE_BY_ONE of them) and warns about job 13's own schedule, but searches for no key
    (no run can carry one yet). Then one list of each job's runs (its history, all jobs at once), and each run's
    first read after its schedule's first interval. Fixed cost per run: the trigger, the history, the results."""
    for job_id in (31, 32):
        emulator.emulator.add_job(JobSpec(id=job_id, name=f"j{job_id}", queue_seconds=0.05, run_seconds=0.3))
    caplog.set_level(logging.INFO)
    first = len(emulator.emulator.requests)
    jobs: list[int | DbtCloudJobRequest] = [11, 13, 11, 31, 32]
    results = run_dbt_cloud_jobs(jobs, creds(emulator), wait=WaitSettings(poll_interval_seconds=0.5))
    assert [r.job_id for r in results] == jobs and all(r.status == "Success" for r in results)
    sent = requests_since(emulator, first)
    first_trigger, last_trigger = min(r.at for r in sent["trigger"]), max(r.at for r in sent["trigger"])
    [listing] = sent["job"]
    assert listing.path.endswith("/jobs/") and listing.at < first_trigger, "one page of jobs, before the triggers"
    assert caplog.text.count("dbt Cloud job 13 ('scheduled') has its own dbt Cloud schedule on") == 1
    assert len(sent["trigger"]) == 5 and len(sent["artifact"]) <= 5 and not sent["other"], sent
    histories = sorted(r.query["job_definition_id"][0] for r in sent["list"])
    assert histories == ["11", "13", "31", "32"], "one list per job, its history; no search for a key"
    assert min(r.at for r in sent["list"]) > last_trigger
    # No read right after the triggers: the first waits the schedule's first interval (0.5 s here).
    assert min(r.at for r in sent["poll"]) - last_trigger >= 0.45


@pytest.mark.parametrize("jobs", [[11, 999], [11, 12, 13, 14, 999, 998]], ids=["one-by-one", "listing"])
def test_a_job_that_does_not_exist_refuses_the_fan_out_before_any_trigger(
    emulator: EmulatorServer, jobs: list[int | DbtCloudJobRequest]
) -> None:
    with pytest.raises(
        DbtCloudNotFoundError, match=r"job\(s\) (998, )?999 not found in account .*nothing was triggered"
    ):
        run_dbt_cloud_jobs(jobs, creds(emulator), wait=WaitSettings(poll_interval_seconds=0.2))
    assert emulator.emulator.trigger_count == {}


def test_jobs_are_read_in_pages_of_the_account_or_one_by_one_whichever_costs_less(
    emulator: EmulatorServer, client: DbtCloudClient
) -> None:
    """250 jobs in the account, so 3 pages of 100 by ID (11-14 and 100-195; 196-295; 296-345). Requests as
    (pages, single reads)."""
    for job_id in range(100, 346):
        emulator.emulator.add_job(JobSpec(id=job_id, name=f"j{job_id}"))

    def cost(ids: list[int]) -> tuple[int, int]:
        first = len(emulator.emulator.requests)
        found = read_jobs(client, ids)
        assert sorted(found) == sorted(set(ids)) and all(found[i].id == i for i in ids)
        pages = sum(r.path.endswith("/jobs/") for r in emulator.emulator.requests[first:])
        return pages, len(emulator.emulator.requests) - first - pages

    assert cost([12, 11]) == (0, 2)  # few: one by one
    assert cost([11, 12, 150, 180]) == (1, 0)  # all on the first page
    assert cost([11, 12, 150, 250]) == (1, 1)  # the last one alone: one read, not two more pages
    assert cost([11, 12, 13, 200, 210, 220, 300]) == (3, 0)  # four missing after a page: pages are cheaper


def test_a_retried_fan_out_searches_for_its_keys_and_triggers_nothing_twice(emulator: EmulatorServer) -> None:
    """The parent's retry re-runs the fan-out: it is no first attempt, so each trigger first looks for the run
    carrying its key, and finds it (the runs of the first attempt succeeded): no job is run twice."""
    attempts: list[int] = []

    @flow(retries=1, retry_delay_seconds=0)
    def parent() -> list[int]:
        results = run_dbt_cloud_jobs([11, 11], creds(emulator), wait=WaitSettings(poll_interval_seconds=0.2))
        attempts.append(len(attempts) + 1)
        if len(attempts) == 1:
            raise RuntimeError("a later step failed")
        return [r.run_id for r in results]

    first = len(emulator.emulator.requests)
    run_ids = parent()
    assert attempts == [1, 2] and emulator.emulator.trigger_count == {11: 2}
    assert sorted(run_ids) == sorted(run.id for run in emulator.emulator.runs_of(11))
    # The first attempt: job 11's history only. The retry: a search per trigger (2), then the history again.
    lists = requests_since(emulator, first)["list"]
    assert len(lists) == 4 and all(r.query["job_definition_id"] == ["11"] for r in lists), lists


class _FlakyPrefectApi:
    """Stands in for the trigger task where the Prefect API fails around it, which a real server does only under a
    load no test can time (503s of a busy database, concurrency slots not granted): the first ``failures``
    submissions of each job fail with ``error``, ``after_post`` saying whether the dbt Cloud run was triggered
    before the failure (the task's end not recorded) or not (its start refused); later ones are the real task."""

    def __init__(self, failures: int, error: Exception, after_post: bool) -> None:
        self.failures, self.error, self.after_post = failures, error, after_post
        self.submitted: dict[int, int] = {}

    def submit(self, *args: Any) -> Any:
        job_id = args[1]
        self.submitted[job_id] = self.submitted.get(job_id, 0) + 1
        if self.submitted[job_id] > self.failures:
            return trigger_dbt_cloud_job.submit(*args)
        error, after_post = self.error, self.after_post

        @task(name="flaky-prefect-api")
        def failing() -> int:
            if after_post:
                trigger_dbt_cloud_job.fn(*args)
            raise error

        return failing.submit()


def _prefect_503() -> Exception:
    request = httpx.Request("POST", "http://prefect.invalid/api/task_runs/")
    response = httpx.Response(503, request=request, json={"exception_message": "Service Unavailable"})
    return PrefectHTTPStatusError("Server error '503 Service Unavailable'", request=request, response=response)


@pytest.mark.parametrize(
    ("error", "after_post"),
    [(_prefect_503(), False), (_prefect_503(), True), (ConcurrencySlotAcquisitionError("slots on 'tag:x'"), False)],
    ids=["503-before-the-post", "503-after-the-post", "slot-not-granted"],
)
def test_a_passing_prefect_api_failure_around_a_trigger_is_submitted_again_and_doubles_nothing(
    emulator: EmulatorServer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    error: Exception,
    after_post: bool,
) -> None:
    flaky = _FlakyPrefectApi(2, error, after_post)
    monkeypatch.setattr(fanout, "trigger_dbt_cloud_job", flaky)
    monkeypatch.setattr(fanout, "PREFECT_API_BACKOFF_SECONDS", 0.01)
    results = run_dbt_cloud_jobs([11, 13], creds(emulator), wait=WaitSettings(poll_interval_seconds=0.2))
    assert sorted(r.job_id for r in results) == [11, 13] and all(r.status == "Success" for r in results)
    assert flaky.submitted == {11: 3, 13: 3}
    # One run per job: a run the failed attempt had started was found by its key and reused.
    assert emulator.emulator.trigger_count == {11: 1, 13: 1}
    assert caplog.text.count("failed in the Prefect API") == 4


def test_a_prefect_api_failure_that_persists_leaves_the_job_not_started_and_named(
    emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    flaky = _FlakyPrefectApi(fanout.PREFECT_API_ATTEMPTS, _prefect_503(), False)
    monkeypatch.setattr(fanout, "trigger_dbt_cloud_job", flaky)
    monkeypatch.setattr(fanout, "PREFECT_API_BACKOFF_SECONDS", 0.01)
    with pytest.raises(DbtCloudRunsFailed, match=r"1 of 1 .*job 11: run None not started.*503"):
        run_dbt_cloud_jobs([11], creds(emulator), wait=WaitSettings(poll_interval_seconds=0.2))
    assert flaky.submitted == {11: fanout.PREFECT_API_ATTEMPTS} and emulator.emulator.trigger_count == {}
