"""The Prefect layer against the emulator, in one Prefect test server: trigger, wait, branch."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from prefect import flow, task
from prefect.blocks.notifications import CustomWebhookNotificationBlock
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun
from prefect.client.schemas.sorting import ArtifactSort
from prefect.logging.handlers import APILogHandler
from pydantic import ValidationError

from dbt_cloud_gate.blocks.dbt_cloud import DbtCloudCredentials, resolve_credentials
from dbt_cloud_gate.cancellation import _CANCEL_CONTEXT, credentials_of_flow_run
from dbt_cloud_gate.dbtcloud_api import DbtCloudAuthError, DbtCloudClient, DbtCloudConfigError, Run, RunStatus
from dbt_cloud_gate.dbtcloud_api.emulator import EmulatorServer, Fault, JobSpec, StepSpec
from dbt_cloud_gate.errors import (
    DbtCloudJobAlreadyRunning,
    DbtCloudNativeScheduleOn,
    DbtCloudRunCancelled,
    DbtCloudRunError,
    DbtCloudRunFailed,
    DbtCloudRunInvalid,
    DbtCloudRunTimedOut,
)
from dbt_cloud_gate.flows.dbt_cloud import run_dbt_cloud_job
from dbt_cloud_gate.flows.fanout import run_dbt_cloud_jobs
from dbt_cloud_gate.keys import cause_with_key, idempotency_key
from dbt_cloud_gate.models import DbtCloudRunResult
from dbt_cloud_gate.outcomes import build_result, judge
from dbt_cloud_gate.settings import WaitSettings
from dbt_cloud_gate.tasks.start import start_dbt_cloud_run, trigger_dbt_cloud_job
from dbt_cloud_gate.tasks.wait import wait_for_dbt_cloud_run, wait_for_dbt_cloud_runs
from tests.conftest import ACCOUNT, FAST_RETRY, TOKEN, AlertSink

pytestmark = pytest.mark.usefixtures("prefect_harness")

FAST: dict[str, Any] = {"poll_interval_seconds": 0.05, "max_wait_seconds": 20}


def creds(emulator: EmulatorServer, token: str = TOKEN) -> DbtCloudCredentials:
    return DbtCloudCredentials(account_id=ACCOUNT, api_token=token, access_url=emulator.url)


def saved_webhook(receiver: AlertSink, name: str) -> str:
    CustomWebhookNotificationBlock(
        name="tests",
        url=receiver.url,
        json_data={"subject": "{{subject}}", "body": "{{body}}"},
        allow_private_urls=True,
    ).save(name, overwrite=True)
    return f"custom-webhook/{name}"


def runs_of(emulator: EmulatorServer, job_id: int) -> list[Any]:
    return [r for r in emulator.emulator.runs_of(job_id)]


def prefect_texts() -> str:
    """Every log line, artifact and dbt-cloud event the Prefect server holds, as one text."""
    APILogHandler().flush()
    with get_client(sync_client=True) as client:
        logs = client.read_logs()
        artifacts = client.read_artifacts(sort=ArtifactSort.CREATED_DESC)  # this test's are the newest
        events = client.request("POST", "/events/filter", json={"filter": {"event": {"prefix": ["dbt-cloud."]}}})
    texts = [log.message for log in logs]
    texts += [str(a.data) + str(a.description) for a in artifacts]
    texts.append(events.text)
    return "\n".join(texts)


def dbt_events(run_id: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 10
    while True:
        with get_client(sync_client=True) as client:
            response = client.request(
                "POST",
                "/events/filter",
                json={"filter": {"any_resource": {"id": [f"dbt-cloud.run.{run_id}"]}}, "limit": 50},
            )
        found = response.json()["events"]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def wait_for_status(emulator: EmulatorServer, run_filter: Any, status: RunStatus, timeout: float = 10) -> int:
    deadline = time.monotonic() + timeout
    with DbtCloudClient(ACCOUNT, TOKEN, emulator.url, retry=FAST_RETRY) as client:
        while time.monotonic() < deadline:
            for run in list(emulator.emulator.runs.values()):
                if run_filter(run) and client.get_run(run.id, ()).status == status:
                    return run.id
            time.sleep(0.05)
    raise AssertionError(f"no run reached {status}")


def test_success_returns_exact_finished_at_models_artifacts_and_event(emulator: EmulatorServer) -> None:
    # A run of 1.5 s, so that 0.05 s polls see it several times even on a loaded machine (4 test workers, 2 cores).
    emulator.emulator.add_job(dataclasses.replace(emulator.emulator.jobs[11], run_seconds=1.5))
    result = run_dbt_cloud_job(11, creds(emulator), cause="nightly", **FAST)
    assert isinstance(result, DbtCloudRunResult)
    internal = emulator.emulator.runs[result.run_id]
    assert result.status == "Success" and result.job_id == 11 and result.account_id == ACCOUNT
    assert result.finished_at == datetime.fromtimestamp(internal.finished, UTC)
    assert result.started_at == datetime.fromtimestamp(internal.started, UTC)
    assert result.duration_seconds == pytest.approx(internal.run_s, abs=1e-5)
    assert result.url.startswith(emulator.url) and str(result.run_id) in result.url
    assert result.cause is not None and result.cause.startswith("nightly [dcg:")
    assert [(m.name, m.status) for m in result.models] == [("stg_orders", "success"), ("orders", "success")]
    assert emulator.emulator.trigger_count[11] == 1
    # The wait polled while the run ran (a run of 1.5 s at 0.05 s polls), and the result is the last poll's.
    polls = [r for r in emulator.emulator.requests if r.path.endswith(f"/runs/{result.run_id}/")]
    assert len(polls) >= 3
    with get_client(sync_client=True) as client:
        keys = {a.key for a in client.read_artifacts(sort=ArtifactSort.CREATED_DESC) if a.key}
    assert {"dbt-cloud-job-11-run", "dbt-cloud-job-11-summary", "dbt-cloud-job-11-models"} <= keys
    events = dbt_events(result.run_id)
    assert [e["event"] for e in events] == ["dbt-cloud.run.succeeded"]
    event = events[0]
    assert event["payload"]["finished_at"] == result.finished_at.isoformat()  # type: ignore[union-attr]
    related = {r["prefect.resource.id"]: r["prefect.resource.role"] for r in event["related"]}
    assert related["dbt-cloud.job.11"] == "job" and related[f"dbt-cloud.account.{ACCOUNT}"] == "account"


def test_error_alerts_and_fails(emulator: EmulatorServer, webhook: AlertSink) -> None:
    block = saved_webhook(webhook, "error-alerts")
    with pytest.raises(DbtCloudRunFailed) as info:
        run_dbt_cloud_job(12, creds(emulator), alert_blocks=[block], **FAST)
    error = info.value
    assert error.status == "Error" and str(error.run_id) in error.url and isinstance(error, DbtCloudRunError)
    # The exception (so the flow run's state message) names where it failed, not only that it did.
    assert "(status Error) at step 4 (Invoke dbt with `dbt build`), failing models: orders (error): " in str(error)
    assert len(webhook.received) == 1
    alert = webhook.received[0]
    assert str(error.run_id) in alert["body"] and "Error" in alert["body"] and error.url in alert["body"]
    assert "Invoke dbt with `dbt build`" in alert["body"] and "Database Error in model orders" in alert["body"]
    assert "Failing models: orders (error)" in alert["body"]
    assert "failed" in alert["subject"]
    assert TOKEN not in str(alert)
    assert [e["event"] for e in dbt_events(error.run_id)] == ["dbt-cloud.run.failed"]


def test_alert_delivery_failure_does_not_hide_the_run_failure(emulator: EmulatorServer) -> None:
    # A saved block whose endpoint is down: the alert fails to go out, the run's failure still surfaces.
    CustomWebhookNotificationBlock(
        name="down", url="http://127.0.0.1:9/hook", json_data={"body": "{{body}}"}, allow_private_urls=True
    ).save("endpoint-down", overwrite=True)
    with pytest.raises(DbtCloudRunFailed):
        run_dbt_cloud_job(12, creds(emulator), alert_blocks=["custom-webhook/endpoint-down"], **FAST)


def test_alert_blocks_that_cannot_be_loaded_are_refused_before_anything_is_triggered(
    emulator: EmulatorServer,
) -> None:
    with pytest.raises(ValueError, match=r"'custom-webhook/does-not-exist'.*'no-slash'.*Nothing was triggered") as info:
        run_dbt_cloud_job(12, creds(emulator), alert_blocks=["custom-webhook/does-not-exist", "no-slash"], **FAST)
    assert "'.." not in str(info.value) and ".. " not in str(info.value)  # no doubled full stop
    with pytest.raises(ValueError, match="custom-webhook/does-not-exist"):
        run_dbt_cloud_jobs([12], creds(emulator), alert_blocks=["custom-webhook/does-not-exist"], **FAST)
    assert emulator.emulator.trigger_count.get(12, 0) == 0 and not emulator.emulator.runs_of(12)


def test_cancelled_from_outside_mid_run_is_a_failure(emulator: EmulatorServer) -> None:
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            run_dbt_cloud_job(14, creds(emulator), **FAST)
        except Exception as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    run_id = wait_for_status(emulator, lambda r: r.job_id == 14, RunStatus.RUNNING)
    emulator.emulator.cancel(run_id)
    thread.join(timeout=30)
    assert isinstance(outcome.get("error"), DbtCloudRunCancelled)
    assert outcome["error"].run_id == run_id and outcome["error"].status == "Cancelled"


def test_stuck_in_queue_past_deadline_cancels_and_times_out(emulator: EmulatorServer) -> None:
    emulator.emulator.set_job(11, queue_seconds=60)
    started = time.monotonic()
    with pytest.raises(DbtCloudRunTimedOut) as info:
        run_dbt_cloud_job(11, creds(emulator), poll_interval_seconds=0.1, max_wait_seconds=0.6)
    assert time.monotonic() - started < 15
    run_id = info.value.run_id
    assert run_id in emulator.emulator.runs
    cancels = [r for r in emulator.emulator.requests if r.path.endswith(f"/runs/{run_id}/cancel/")]
    assert len(cancels) == 1
    with DbtCloudClient(ACCOUNT, TOKEN, emulator.url) as client:
        assert client.get_run(run_id).status is RunStatus.CANCELLED
    assert [e["event"] for e in dbt_events(run_id)] == ["dbt-cloud.run.timed-out"]


def test_on_timeout_leave_does_not_cancel(emulator: EmulatorServer) -> None:
    emulator.emulator.set_job(11, queue_seconds=60)
    with pytest.raises(DbtCloudRunTimedOut) as info:
        run_dbt_cloud_job(11, creds(emulator), poll_interval_seconds=0.1, max_wait_seconds=0.4, on_timeout="leave")
    assert not [r for r in emulator.emulator.requests if r.path.endswith("/cancel/")]
    with DbtCloudClient(ACCOUNT, TOKEN, emulator.url) as client:
        assert client.get_run(info.value.run_id).status is RunStatus.QUEUED


@pytest.mark.parametrize(
    "fault",
    [
        Fault(kind="429", retry_after="0.1", method="GET", times=3),
        Fault(kind="429", method="GET", times=3),
        Fault(kind="5xx", status=502, method="GET", times=3),
        Fault(kind="drop", method="GET", times=3),
        Fault(kind="slow", delay=0.2, method="GET", times=3),
        Fault(kind="not_found_fresh", fresh_seconds=1.0),  # wide: the first poll may come late on a loaded machine
        Fault(kind="5xx", status=503, method="GET", probability=0.3),
    ],
    ids=["429-retry-after", "429", "502-html", "drop", "slow", "fresh-404", "random-503"],
)
def test_faults_during_the_wait_do_not_change_the_outcome(emulator: EmulatorServer, fault: Fault) -> None:
    emulator.emulator.add_fault(fault)
    result = run_dbt_cloud_job(11, creds(emulator), **FAST)
    assert result.status == "Success" and emulator.emulator.trigger_count[11] == 1
    assert fault.hits >= 1


@pytest.mark.parametrize(
    "fault",
    [
        Fault(kind="lost_response", method="POST", times=1),
        Fault(kind="5xx", status=502, method="POST", times=1),
        Fault(kind="drop", method="POST", times=1),
    ],
    ids=["created-but-answer-lost", "502-not-created", "dropped-not-created"],
)
def test_ambiguous_trigger_starts_exactly_one_run(emulator: EmulatorServer, fault: Fault) -> None:
    emulator.emulator.add_fault(fault)
    result = run_dbt_cloud_job(11, creds(emulator), **FAST)
    assert result.status == "Success"
    assert emulator.emulator.trigger_count[11] == 1 and len(runs_of(emulator, 11)) == 1


def test_flow_retry_after_failure_mid_wait_reuses_the_same_run(emulator: EmulatorServer) -> None:
    # A 403 on a poll kills the wait (as a crashed worker would); the flow's retry must resume the same run.
    emulator.emulator.add_fault(Fault(kind="status", status=403, method="GET", path=r"/runs/\d+/$", times=1))
    retrying = run_dbt_cloud_job.with_options(retries=1, retry_delay_seconds=0)
    result = retrying(11, creds(emulator), **FAST)
    assert result.status == "Success"
    assert emulator.emulator.trigger_count[11] == 1 and len(runs_of(emulator, 11)) == 1


def test_prefect_cancellation_cancels_the_dbt_cloud_run(emulator: EmulatorServer) -> None:
    creds(emulator).save("cancel-test", overwrite=True)
    state_box: dict[str, Any] = {}

    def run() -> None:
        state_box["state"] = run_dbt_cloud_job(14, "cancel-test", return_state=True, **FAST)

    thread = threading.Thread(target=run)
    thread.start()
    run_id = wait_for_status(emulator, lambda r: r.job_id == 14, RunStatus.RUNNING)
    with get_client(sync_client=True) as client:
        flow_runs = [
            fr
            for fr in client.read_flow_runs()
            if fr.parameters.get("job_id") == 14
            and fr.parameters.get("credentials") == "cancel-test"
            and not fr.state.is_final()
        ]
        assert len(flow_runs) == 1
    # What Prefect does on a cancellation request: run the flow's on_cancellation hooks.
    for hook in run_dbt_cloud_job.on_cancellation_hooks:
        hook(run_dbt_cloud_job, flow_runs[0], flow_runs[0].state)
    thread.join(timeout=30)
    with DbtCloudClient(ACCOUNT, TOKEN, emulator.url) as c:
        assert c.get_run(run_id).status is RunStatus.CANCELLED
    assert state_box["state"].is_failed()


def test_if_running_modes(emulator: EmulatorServer) -> None:
    with DbtCloudClient(ACCOUNT, TOKEN, emulator.url, retry=FAST_RETRY) as client:
        # Long enough to be still in flight for both calls below on a loaded machine (a flow call takes ~1 s there).
        emulator.emulator.set_job(11, run_seconds=6.0)
        existing = client.trigger_job_run(11, "started elsewhere")
        emulator.emulator.set_job(11, run_seconds=1.0)
        with pytest.raises(DbtCloudJobAlreadyRunning, match=str(existing.id)):
            run_dbt_cloud_job(11, creds(emulator), if_running="fail", **FAST)
        reused = run_dbt_cloud_job(11, creds(emulator), if_running="reuse", **FAST)
        assert reused.run_id == existing.id and emulator.emulator.trigger_count[11] == 1
        # Nothing in flight: "reuse" and "fail" trigger a run of their own.
        fresh = run_dbt_cloud_job(11, creds(emulator), if_running="fail", **FAST)
        assert fresh.run_id != existing.id and emulator.emulator.trigger_count[11] == 2
        queued_behind = client.trigger_job_run(11, "another")
        triggered = run_dbt_cloud_job(11, creds(emulator), if_running="trigger", **FAST)
        assert triggered.run_id not in (existing.id, queued_behind.id)
        assert triggered.started_at is not None
        assert client.get_run(queued_behind.id).finished_at <= triggered.started_at  # type: ignore[operator]


def test_retry_failed_run_from_point_of_failure(emulator: EmulatorServer) -> None:
    with pytest.raises(DbtCloudRunFailed) as info:
        run_dbt_cloud_job(12, creds(emulator), **FAST)
    result = run_dbt_cloud_job(12, creds(emulator), retry_failed_run_id=info.value.run_id, **FAST)
    assert result.status == "Success" and result.run_id != info.value.run_id
    assert emulator.emulator.runs[result.run_id].retry_of == info.value.run_id


def test_wrong_token_fails_fast_with_a_clear_message(emulator: EmulatorServer) -> None:
    started = time.monotonic()
    with pytest.raises(DbtCloudAuthError, match="Check the API token"):
        run_dbt_cloud_job(11, creds(emulator, token="tok_wrong_1234567"), **FAST)
    assert time.monotonic() - started < 10
    assert len(emulator.emulator.requests) == 1


def test_subflow_of_sync_and_async_parents(emulator: EmulatorServer) -> None:
    credentials = creds(emulator)

    @flow
    def sync_parent() -> datetime | None:
        return run_dbt_cloud_job(11, credentials, **FAST).finished_at

    @flow
    async def async_parent() -> datetime | None:
        return (await run_dbt_cloud_job(11, credentials, **FAST)).finished_at

    @flow
    def halting_parent() -> str:
        run_dbt_cloud_job(12, credentials, **FAST)
        return "downstream ran"  # must never happen

    @flow
    def state_parent() -> str:
        state = run_dbt_cloud_job(12, credentials, return_state=True, **FAST)
        return "failed" if state.is_failed() else "ok"

    assert isinstance(sync_parent(), datetime)
    assert isinstance(asyncio.run(async_parent()), datetime)
    with pytest.raises(DbtCloudRunFailed):
        halting_parent()
    assert state_parent() == "failed"


def test_credentials_from_environment_and_saved_block(
    emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(DbtCloudConfigError, match="DBT_CLOUD_ACCOUNT_ID and DBT_CLOUD_API_TOKEN"):
        resolve_credentials(None)
    monkeypatch.setenv("DBT_CLOUD_ACCOUNT_ID", str(ACCOUNT))
    with pytest.raises(DbtCloudConfigError, match="set DBT_CLOUD_API_TOKEN"):
        resolve_credentials(None)
    monkeypatch.setenv("DBT_CLOUD_API_TOKEN", TOKEN)
    monkeypatch.setenv("DBT_CLOUD_ACCESS_URL", emulator.url)
    assert run_dbt_cloud_job(11, **FAST).status == "Success"
    monkeypatch.setenv("DBT_CLOUD_ACCESS_URL", "http://dbt.example.com")
    with pytest.raises(DbtCloudConfigError, match="plain http"):
        resolve_credentials(None)
    monkeypatch.delenv("DBT_CLOUD_ACCESS_URL")  # the block named below has its own access URL
    creds(emulator).save("env-named", overwrite=True)
    monkeypatch.setenv("DBT_CLOUD_CREDENTIALS_BLOCK", "env-named")
    assert resolve_credentials(None).access_url == emulator.url
    assert resolve_credentials("dbt-cloud-gate-credentials/env-named").account_id == ACCOUNT
    with pytest.raises(DbtCloudConfigError, match="No saved dbt Cloud credentials block named 'nope'"):
        resolve_credentials("nope")


def test_bad_parameters_are_refused(emulator: EmulatorServer) -> None:
    with pytest.raises(ValueError, match=r"poll_interval_seconds\n  Input should be greater than 0"):
        run_dbt_cloud_job(11, creds(emulator), poll_interval_seconds=0)
    with pytest.raises(Exception, match="if_running"):
        run_dbt_cloud_job(11, creds(emulator), if_running="maybe")  # type: ignore[arg-type]
    # The grouped form, as a deployment's parameters pass it: refused by Prefect's parameter validation, naming
    # the field, before anything is triggered.
    for bad, field in (
        ({"wait": {"max_wait_seconds": float("nan")}}, "max_wait_seconds"),
        ({"wait": {"poll_interval_seconds": -5}}, "poll_interval_seconds"),
        ({"start": {"run_id": 5, "retry_failed_run_id": 6}}, "exclude each other"),
        ({"trigger": {"steps_override": []}}, "steps_override"),
        ({"trigger": {"threads_override": 0}}, "threads_override"),
        ({"job_id": True}, "job_id"),
    ):
        with pytest.raises(Exception, match=field):
            run_dbt_cloud_job(**{"job_id": 11, "credentials": creds(emulator), **bad})
    assert emulator.emulator.trigger_count == {}


def test_token_absent_from_logs_artifacts_events_and_alerts(emulator: EmulatorServer, webhook: AlertSink) -> None:
    block = saved_webhook(webhook, "leak-check")
    run_dbt_cloud_job(11, creds(emulator), **FAST)
    with pytest.raises(DbtCloudRunFailed):
        run_dbt_cloud_job(12, creds(emulator), alert_blocks=[block], **FAST)
    with pytest.raises(DbtCloudAuthError):
        run_dbt_cloud_job(11, creds(emulator, token="tok_other_secret_99"), **FAST)
    everything = prefect_texts()
    assert "dbt Cloud run" in everything and "dbt-cloud.run." in everything
    assert TOKEN not in everything and "tok_other_secret_99" not in everything
    assert webhook.received and TOKEN not in str(webhook.received)


def test_block_registers_with_the_prefect_cli() -> None:
    import os
    import subprocess
    import sys

    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    done = subprocess.run(
        [sys.executable, "-m", "prefect", "block", "register", "-m", "dbt_cloud_gate.blocks.dbt_cloud"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    with get_client(sync_client=True) as client:
        block_type = client.read_block_type_by_slug("dbt-cloud-gate-credentials")
    assert block_type.name == "dbt Cloud Gate Credentials"
    assert block_type.code_example and "DbtCloudCredentials(" in block_type.code_example
    from importlib.metadata import entry_points

    assert [e.value for e in entry_points(group="prefect.collections") if e.name == "dbt_cloud_gate"] == [
        "dbt_cloud_gate.blocks"
    ]


def test_long_cause_keeps_the_key_within_255(emulator: EmulatorServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="dbt_cloud_gate.dbtcloud_api")
    result = run_dbt_cloud_job(11, creds(emulator), cause="c" * 300, **FAST)
    cause = emulator.emulator.runs[result.run_id].cause
    assert len(cause) == 255 and cause.endswith(":11]") and "[dcg:" in cause
    assert "to leave room for the" in caplog.text


def multi_step_job(job_id: int = 21) -> JobSpec:
    return JobSpec(
        id=job_id,
        queue_seconds=0.05,
        start_seconds=0.05,
        run_seconds=0.3,
        models=["stg_orders", "orders"],
        steps=[StepSpec("dbt seed", models=["raw_orders"]), StepSpec("dbt run"), StepSpec("dbt test")],
    )


def test_multi_step_job_models_come_from_every_step_that_builds(emulator: EmulatorServer) -> None:
    emulator.emulator.add_job(multi_step_job())
    result = run_dbt_cloud_job(21, creds(emulator), **FAST)
    assert [(m.name, m.resource_type, m.status) for m in result.models] == [
        ("raw_orders", "model", "success"),
        ("stg_orders", "model", "success"),
        ("orders", "model", "success"),
    ]
    # One artifact request per step that can build models (seed, run), none for the test step or the last step.
    reads = [r.query.get("step") for r in emulator.emulator.requests if r.path.endswith("/run_results.json")]
    assert sorted(reads, key=str) == [["4"], ["5"]]


def test_a_failed_step_that_carries_the_token_is_named_without_it(emulator: EmulatorServer) -> None:
    # The failed step's name goes into the exception and the state message; a command may carry the token.
    emulator.emulator.add_job(
        JobSpec(
            id=22,
            queue_seconds=0.05,
            start_seconds=0.05,
            run_seconds=0.3,
            models=["orders"],
            outcome="error",
            failing_model="orders",
            steps=[StepSpec(f"dbt build --vars '{{api_key: {TOKEN}}}'")],
        )
    )
    with pytest.raises(DbtCloudRunFailed) as info:
        run_dbt_cloud_job(22, creds(emulator), **FAST)
    assert "at step 4 (Invoke dbt with `dbt build --vars '{api_key: ***}'`)" in str(info.value)
    assert TOKEN not in str(info.value)


def test_build_result_refuses_a_success_without_finished_at(emulator: EmulatorServer) -> None:
    run = Run(id=5, account_id=ACCOUNT, status=RunStatus.SUCCESS, finished_at=None)
    with pytest.raises(DbtCloudRunInvalid, match="without finished_at"):
        build_result(run, 11, creds(emulator), [])
    verdict = judge(run)
    assert verdict.outcome == "failed" and verdict.error is DbtCloudRunInvalid
    # A failed run has no result at all, and the type itself refuses a success without a watermark.
    with pytest.raises(ValueError, match="only a Success has a result"):
        build_result(Run(id=6, account_id=ACCOUNT, status=RunStatus.ERROR), 11, creds(emulator), [])
    fields = {"run_id": 5, "job_id": 11, "account_id": ACCOUNT, "status": "Success", "started_at": None}
    fields |= {"duration_seconds": None, "url": "https://x", "cause": None}
    with pytest.raises(ValidationError, match="finished_at"):
        DbtCloudRunResult(status_code=10, finished_at=None, **fields)
    with pytest.raises(ValidationError, match="status_code"):
        DbtCloudRunResult(status_code=20, finished_at=datetime.now(UTC), **fields)


def test_success_without_finished_at_alerts_and_fails(emulator: EmulatorServer, webhook: AlertSink) -> None:
    block = saved_webhook(webhook, "watermark-alerts")
    emulator.emulator.set_job(11, finished_at_missing=True)
    with pytest.raises(DbtCloudRunError) as info:
        run_dbt_cloud_job(11, creds(emulator), alert_blocks=[block], poll_interval_seconds=0.05, max_wait_seconds=3)
    assert isinstance(info.value, DbtCloudRunInvalid) and "finished_at" in str(info.value)
    assert len(webhook.received) == 1 and "finished_at" in webhook.received[0]["body"]
    assert emulator.emulator.trigger_count[11] == 1


def test_timeout_reports_where_the_run_stood_at_the_deadline(emulator: EmulatorServer, webhook: AlertSink) -> None:
    block = saved_webhook(webhook, "deadline-alerts")
    emulator.emulator.set_job(11, queue_seconds=60)
    with pytest.raises(DbtCloudRunTimedOut) as queued:
        run_dbt_cloud_job(11, creds(emulator), alert_blocks=[block], poll_interval_seconds=0.1, max_wait_seconds=0.8)
    assert "still queued after" in str(queued.value) and "never started" in str(queued.value)
    assert "still queued after" in webhook.received[0]["body"] and "never started" in webhook.received[0]["body"]
    with pytest.raises(DbtCloudRunTimedOut) as running:
        run_dbt_cloud_job(14, creds(emulator), alert_blocks=[block], poll_interval_seconds=0.1, max_wait_seconds=1.5)
    assert "running for" in str(running.value) and "never started" not in str(running.value)
    assert "running for" in webhook.received[1]["body"]
    # The status after the cancel is reported as such, never as the state at the deadline.
    assert running.value.status == "Cancelled" and "Status now Cancelled" in str(running.value)


def test_tasks_carry_prefect_retries_and_no_timeout_prefect_cannot_enforce() -> None:
    assert trigger_dbt_cloud_job.retries >= 1 and trigger_dbt_cloud_job.retry_condition_fn is not None
    # In an async flow's worker thread a Prefect timeout cannot interrupt a sync task and only warns: each
    # attempt and wait ends by its own request deadline instead.
    for task_ in (trigger_dbt_cloud_job, start_dbt_cloud_run, wait_for_dbt_cloud_run, wait_for_dbt_cloud_runs):
        assert task_.timeout_seconds is None, task_.name


def test_a_healthy_run_logs_no_warning(emulator: EmulatorServer) -> None:
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append  # type: ignore[method-assign]
    loggers = [logging.getLogger(), logging.getLogger("prefect"), logging.getLogger("dbt_cloud_gate")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        result = run_dbt_cloud_job(11, creds(emulator), wait=WaitSettings(**FAST))
        (other,) = run_dbt_cloud_jobs([11], creds(emulator), wait=WaitSettings(**FAST))
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
    assert result.status == other.status == "Success"
    assert not records, sorted({record.getMessage()[:200] for record in records})


@pytest.mark.parametrize(
    "faults",
    [
        [Fault(kind="slow", delay=5, method="POST", times=1)],
        [
            Fault(kind="lost_response", method="POST", times=1),
            Fault(kind="slow", delay=5, method="GET", path=r"/runs/$", skip=1, times=1),
        ],
    ],
    ids=["answer-after-task-timeout", "lost-answer-then-search-hangs"],
)
def test_trigger_task_retry_after_an_ambiguous_trigger_starts_one_run(
    emulator: EmulatorServer, faults: list[Fault]
) -> None:
    for fault in faults:
        emulator.emulator.add_fault(fault)
    credentials = creds(emulator)
    # Prefect's own retry of the task: the first attempt is cut by the task's timeout after the run was created.
    trigger = trigger_dbt_cloud_job.with_options(retries=1, retry_delay_seconds=0, timeout_seconds=2)

    @flow
    def parent() -> int:
        key = idempotency_key(11)
        return trigger(credentials, 11, cause_with_key("task retry", key), key)

    run_id = parent()
    assert all(f.hits == 1 for f in faults)
    assert [r.id for r in runs_of(emulator, 11)] == [run_id] and emulator.emulator.trigger_count[11] == 1


def _parent_retried(credentials: DbtCloudCredentials, shape: str) -> Any:
    @flow
    def middle() -> int:
        return run_dbt_cloud_job(11, credentials, **FAST).run_id

    @task
    def in_task() -> int:
        return run_dbt_cloud_job(11, credentials, **FAST).run_id

    @flow(retries=1, retry_delay_seconds=0)
    def parent() -> int:
        if shape == "parent":
            return run_dbt_cloud_job(11, credentials, **FAST).run_id
        if shape == "grandparent":
            return middle()
        return in_task()

    return parent


@pytest.mark.parametrize("shape", ["parent", "grandparent", "subflow-in-a-task"])
def test_ancestor_retry_after_a_failure_mid_wait_reuses_the_run(emulator: EmulatorServer, shape: str) -> None:
    # A 403 on a poll kills the wait; the subflow fails, then its parent; the ROOT's retry must find the run.
    emulator.emulator.add_fault(Fault(kind="status", status=403, method="GET", path=r"/runs/\d+/$", times=1))
    run_id = _parent_retried(creds(emulator), shape)()
    assert [r.id for r in runs_of(emulator, 11)] == [run_id] and emulator.emulator.trigger_count[11] == 1


def test_two_calls_of_one_job_in_one_parent_start_two_runs(emulator: EmulatorServer) -> None:
    credentials = creds(emulator)

    @flow
    def twice() -> list[int]:
        return [run_dbt_cloud_job(11, credentials, **FAST).run_id for _ in range(2)]

    first, second = twice()
    assert first != second and emulator.emulator.trigger_count[11] == 2


def _cancel_mid_run(emulator: EmulatorServer, credentials: Any, forget: bool) -> tuple[int, Any]:
    state_box: dict[str, Any] = {}

    def run() -> None:
        state_box["state"] = run_dbt_cloud_job(14, credentials, return_state=True, **FAST)

    thread = threading.Thread(target=run)
    thread.start()
    run_id = wait_for_status(emulator, lambda r: r.job_id == 14, RunStatus.RUNNING)
    with get_client(sync_client=True) as client:
        flow_runs = [
            fr
            for fr in client.read_flow_runs()
            if fr.parameters.get("job_id") == 14 and fr.state is not None and not fr.state.is_final()
        ]
    assert len(flow_runs) == 1
    if forget:  # the hook runs in another process (the runner's): nothing kept in memory
        _CANCEL_CONTEXT.clear()
    for hook in run_dbt_cloud_job.on_cancellation_hooks:
        hook(run_dbt_cloud_job, flow_runs[0], flow_runs[0].state)
    # The hook itself cancelled the run (not the wait's deadline, 20 s later).
    with DbtCloudClient(ACCOUNT, TOKEN, emulator.url) as c:
        assert c.get_run(run_id).status is RunStatus.CANCELLED
    thread.join(timeout=30)
    return run_id, state_box.get("state")


@pytest.mark.parametrize("how", ["instance", "saved-instance-other-process", "name-other-process"])
def test_prefect_cancellation_cancels_the_dbt_cloud_run_however_credentials_are_given(
    emulator: EmulatorServer, how: str
) -> None:
    credentials: DbtCloudCredentials | str = creds(emulator)
    if how != "instance":
        creds(emulator).save("cancel-how", overwrite=True)
        credentials = "cancel-how" if how.startswith("name") else DbtCloudCredentials.load("cancel-how")
    run_id, state = _cancel_mid_run(emulator, credentials, forget=how.endswith("other-process"))
    assert state is not None and state.is_failed()
    assert [r.id for r in runs_of(emulator, 14)] == [run_id]
    with pytest.raises(DbtCloudRunCancelled):
        state.result()


def test_unsaved_block_in_another_process_says_why_it_cannot_cancel(emulator: EmulatorServer) -> None:
    stored = run_dbt_cloud_job.serialize_parameters({"job_id": 14, "credentials": creds(emulator)})
    assert stored["credentials"]["api_token"] == "**********"
    with pytest.raises(DbtCloudConfigError, match="unsaved DbtCloudCredentials block"):
        credentials_of_flow_run(FlowRun(flow_id=uuid.uuid4(), parameters=stored))


def requests_since(emulator: EmulatorServer, start: int) -> dict[str, list[Any]]:
    """The requests the emulator got from index ``start`` on, by kind."""
    kinds: dict[str, list[Any]] = {"list": [], "job": [], "trigger": [], "poll": [], "artifact": [], "other": []}
    for r in emulator.emulator.requests[start:]:
        if r.method == "GET" and r.path.endswith("/runs/"):
            kinds["list"].append(r)
        elif r.method == "GET" and "/jobs/" in r.path:
            kinds["job"].append(r)
        elif r.method == "POST" and r.path.endswith("/run/"):
            kinds["trigger"].append(r)
        elif r.method == "GET" and "/artifacts/" in r.path:
            kinds["artifact"].append(r)
        elif r.method == "GET" and "/runs/" in r.path:
            kinds["poll"].append(r)
        else:
            kinds["other"].append(r)
    return kinds


def test_a_run_costs_one_request_besides_the_trigger_and_the_reads_of_the_run(
    emulator: EmulatorServer, caplog: pytest.LogCaptureFixture
) -> None:
    """At default settings, a first attempt reads nothing before its trigger: one list of the job's newest runs,
    sent when the first poll is due, is that poll AND the schedule's history (the job's own schedule is checked on the
    job every read of the run carries); every later
    poll carries steps and trigger, so no re-read; the results come from one artifact read. With
    ``if_running="reuse"`` the list comes before the trigger (it must look for a run in flight) and serves the
    history too: one request more."""
    history = [1.0, 1.05, 0.95, 1.02]
    emulator.emulator.add_job(
        JobSpec(id=21, name="steady", queue_seconds=0.05, start_seconds=0.05, run_seconds=1.0, history_seconds=history)
    )
    caplog.set_level(logging.INFO)
    for if_running, besides in (("trigger", 1), ("reuse", 2)):
        start = len(emulator.emulator.requests)
        result = run_dbt_cloud_job(21, creds(emulator), poll_interval_seconds=0.5, if_running=if_running)
        assert result.status == "Success" and [m.name for m in result.models] == ["stg_orders", "orders"]
        sent = requests_since(emulator, start)
        assert len(sent["list"]) == 1 and len(sent["trigger"]) == 1, sent
        (listing,) = sent["list"]
        assert set(",".join(listing.query["include_related"]).split(",")) == {"trigger", "job"}
        assert listing.query["limit"] == ["100"] and listing.query["order_by"] == ["-id"]
        assert not sent["job"] and not sent["other"], "the schedule check, the history and the re-read are gone"
        assert len(sent["artifact"]) == 1
        assert all("run_steps" in ",".join(p.query["include_related"]) for p in sent["poll"])
        first_read = sent["poll"][0] if if_running == "reuse" else listing
        assert first_read.at - sent["trigger"][0].at >= 0.45, "the first read waits the schedule's first interval"
        if if_running == "trigger":
            assert listing.at > sent["trigger"][0].at and sent["poll"][0].at > listing.at
        reads_of_the_run = len(sent["poll"]) + (if_running == "trigger")  # the list, when it is the first poll
        assert sum(len(v) for v in sent.values()) - len(sent["trigger"]) - reads_of_the_run == besides
        # The history that list carried shaped the schedule (a band, not the no-history fallback).
        assert f"Polling dbt Cloud run {result.run_id}: AdaptiveSchedule(band" in caplog.text
        caplog.clear()


def test_the_schedule_check_reads_the_job_only_when_the_runs_do_not_say_it_is_off(
    emulator: EmulatorServer, caplog: pytest.LogCaptureFixture
) -> None:
    # Job 13 has its own dbt Cloud schedule on and no runs yet: under "fail" the job is read (its runs cannot
    # say), and the flow refuses before anything is triggered.
    start = len(emulator.emulator.requests)
    with pytest.raises(DbtCloudNativeScheduleOn):
        run_dbt_cloud_job(13, creds(emulator), native_schedule="fail", **FAST)
    assert len(requests_since(emulator, start)["job"]) == 1 and not emulator.emulator.trigger_count.get(13)
    # Under "warn", a first attempt reads nothing before its trigger: the warning comes from the job the wait's
    # reads carry, with no read of the job.
    start = len(emulator.emulator.requests)
    with caplog.at_level(logging.WARNING):
        run_dbt_cloud_job(13, creds(emulator), **FAST)
    assert not requests_since(emulator, start)["job"] and "has its own dbt Cloud schedule on" in caplog.text
    # Now it has a run, served with the job (schedule on): "fail" reads the job for the message, and refuses.
    start = len(emulator.emulator.requests)
    with pytest.raises(DbtCloudNativeScheduleOn, match="has its own dbt Cloud schedule on"):
        run_dbt_cloud_job(13, creds(emulator), native_schedule="fail", **FAST)
    assert len(requests_since(emulator, start)["job"]) == 1 and emulator.emulator.trigger_count[13] == 1
    # Turned off in dbt Cloud: the runs' job says so, and no job read follows.
    emulator.emulator.job_objects[13]["triggers"]["schedule"] = False
    start = len(emulator.emulator.requests)
    run_dbt_cloud_job(13, creds(emulator), native_schedule="fail", **FAST)
    assert not requests_since(emulator, start)["job"]


def test_a_retry_waits_on_its_own_run_even_under_if_running_fail(emulator: EmulatorServer) -> None:
    """The run in flight that carries this flow run's key is its own, not another pipeline's: a retry reuses it,
    where if_running='fail' would refuse a run started elsewhere."""
    emulator.emulator.set_job(11, run_seconds=1.0)
    # A 403 on a poll kills the wait mid-run; the flow's retry finds its run still running.
    emulator.emulator.add_fault(Fault(kind="status", status=403, method="GET", path=r"/runs/\d+/$", times=1))
    retrying = run_dbt_cloud_job.with_options(retries=1, retry_delay_seconds=0)
    result = retrying(11, creds(emulator), if_running="fail", **FAST)
    assert result.status == "Success"
    assert emulator.emulator.trigger_count[11] == 1 and [r.id for r in runs_of(emulator, 11)] == [result.run_id]


def test_a_flow_timeout_ends_the_wait_and_cancels_the_run(emulator: EmulatorServer) -> None:
    """Prefect cannot interrupt the wait task inside the async flow: the wait ends before the flow's (or its
    caller's) timeout_seconds on its own, cancels the dbt Cloud run, and the flow fails as timed out."""
    credentials = creds(emulator)
    started = time.monotonic()
    state = run_dbt_cloud_job.with_options(timeout_seconds=4)(
        14, credentials, poll_interval_seconds=0.2, return_state=True
    )
    assert state.is_failed() and time.monotonic() - started < 20  # the run itself takes 30 s
    with pytest.raises(DbtCloudRunTimedOut):
        state.result()
    (own,) = runs_of(emulator, 14)
    assert own.cancelled_at is not None

    @flow(timeout_seconds=4)
    def parent() -> None:
        run_dbt_cloud_job(14, credentials, poll_interval_seconds=0.2)

    started = time.monotonic()
    assert parent(return_state=True).is_failed() and time.monotonic() - started < 20
    assert all(run.cancelled_at is not None for run in runs_of(emulator, 14))


def test_a_run_started_elsewhere_is_left_running_at_the_deadline(emulator: EmulatorServer) -> None:
    """if_running='reuse' waits on another pipeline's run: its own deadline must not cancel that run."""
    with DbtCloudClient(ACCOUNT, TOKEN, emulator.url, retry=FAST_RETRY) as client:
        other = client.trigger_job_run(14, "another pipeline")
        with pytest.raises(DbtCloudRunTimedOut, match="left running"):
            run_dbt_cloud_job(14, creds(emulator), if_running="reuse", poll_interval_seconds=0.2, max_wait_seconds=2)
        assert client.get_run(other.id, ()).status == RunStatus.RUNNING
        assert emulator.emulator.runs[other.id].cancelled_at is None
