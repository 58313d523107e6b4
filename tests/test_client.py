"""The client against the emulator over real loopback HTTP: endpoints, paging, errors, retries."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from datetime import UTC, datetime

import httpx
import pytest

from dbt_cloud_gate.dbtcloud_api import (
    AsyncDbtCloudClient,
    DbtCloudAmbiguousTriggerError,
    DbtCloudAPIError,
    DbtCloudAuthError,
    DbtCloudBadRequestError,
    DbtCloudClient,
    DbtCloudConfigError,
    DbtCloudError,
    DbtCloudNotFoundError,
    DbtCloudRateLimitError,
    DbtCloudServerError,
    DbtCloudTransportError,
    RetryPolicy,
    Run,
    RunStatus,
    Timeouts,
    parse_retry_after,
)
from dbt_cloud_gate.dbtcloud_api.emulator import EmulatorServer, Fault, http_date
from tests.conftest import ACCOUNT, FAST_RETRY, TOKEN

ALL_OVERRIDES = {
    "git_sha": "0123abcd",
    "git_branch": "feature/x",
    "azure_pull_request_id": 1,
    "github_pull_request_id": 2,
    "gitlab_merge_request_id": 3,
    "non_native_pull_request_id": 4,
    "schema_override": "dbt_ci",
    "dbt_version_override": "1.8.0",
    "threads_override": 8,
    "target_name_override": "ci",
    "generate_docs_override": True,
    "timeout_seconds_override": 600,
    "steps_override": ["dbt seed", "dbt build --select orders+"],
}


def wait(client: DbtCloudClient, run_id: int, timeout: float = 10.0) -> Run:
    deadline = time.monotonic() + timeout
    while True:
        run = client.get_run(run_id)
        if run.is_terminal:
            return run
        assert time.monotonic() < deadline, f"run {run_id} stuck in {run.status}"
        time.sleep(0.05)


def api_requests(server: EmulatorServer, method: str | None = None, suffix: str = "") -> list[object]:
    return [r for r in server.emulator.requests if (method is None or r.method == method) and r.path.endswith(suffix)]


def test_trigger_with_every_override_and_read_back(client: DbtCloudClient, emulator: EmulatorServer) -> None:
    run = client.trigger_job_run(11, "nightly load", **ALL_OVERRIDES)
    assert run.status is RunStatus.QUEUED and run.job_id == 11
    sent = api_requests(emulator, "POST", "/jobs/11/run/")
    assert len(sent) == 1
    assert sent[0].body == {"cause": "nightly load", **ALL_OVERRIDES}  # type: ignore[attr-defined]
    read = client.get_run(run.id)
    assert read.trigger is not None and read.trigger.cause == "nightly load"
    assert read.trigger.steps_override == ALL_OVERRIDES["steps_override"]
    assert read.git_branch == "feature/x"
    assert read.job is not None and read.job.id == 11


def test_run_goes_through_every_status_with_exact_timestamps(client: DbtCloudClient, emulator: EmulatorServer) -> None:
    run = client.trigger_job_run(11, "watch statuses")
    seen: list[RunStatus | int] = []
    deadline = time.monotonic() + 10
    while not run.is_terminal:
        run = client.get_run(run.id)
        if not seen or seen[-1] != run.status:
            seen.append(run.status)
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert seen[0] in (RunStatus.QUEUED, RunStatus.STARTING) and seen[-1] is RunStatus.SUCCESS
    assert RunStatus.RUNNING in seen
    internal = emulator.emulator.runs[run.id]
    assert run.finished_at == datetime.fromtimestamp(internal.finished, UTC)
    assert run.started_at == datetime.fromtimestamp(internal.started, UTC)
    assert run.created_at == datetime.fromtimestamp(internal.created, UTC)
    assert run.finished_at is not None and run.finished_at.tzinfo == UTC
    assert [step.status for step in run.run_steps] == [RunStatus.SUCCESS] * len(run.run_steps)
    assert run.run_steps[-1].name == "Invoke dbt with `dbt build`"


def test_error_run_has_failed_step_with_logs(client: DbtCloudClient) -> None:
    run = wait(client, client.trigger_job_run(12, "will fail").id)
    assert run.status is RunStatus.ERROR and run.is_error
    step = run.failed_step
    assert step is not None and step.name == "Invoke dbt with `dbt build`"
    assert any("Database Error in model orders" in line for line in step.last_log_lines())


def test_second_run_of_a_job_queues_behind_the_first(client: DbtCloudClient) -> None:
    first = client.trigger_job_run(11, "first")
    second = client.trigger_job_run(11, "second")
    first_done = wait(client, first.id)
    second_done = wait(client, second.id)
    assert first_done.finished_at is not None and second_done.dequeued_at is not None
    assert second_done.dequeued_at >= first_done.finished_at


def test_list_runs_paging_filters_and_order(client: DbtCloudClient, emulator: EmulatorServer) -> None:
    ids = [client.trigger_job_run(13, f"page {i}").id for i in range(7)]
    page = client.list_runs(job_definition_id=13, order_by="-id", limit=3)
    assert [r.id for r in page.runs] == sorted(ids, reverse=True)[:3]
    assert page.total_count == 7 and page.count == 3
    every = list(client.iter_runs(job_definition_id=13, page_size=3))
    assert [r.id for r in every] == ids
    offsets = [r.query.get("offset") for r in api_requests(emulator, "GET", "/runs/")]  # type: ignore[attr-defined]
    assert offsets[-3:] == [["0"], ["3"], ["6"]]
    queued = client.list_runs(job_definition_id=13, status_in=[RunStatus.QUEUED, RunStatus.STARTING, 3])
    assert {r.id for r in queued.runs} <= set(ids) and queued.total_count >= 1
    status_params = [r.query.get("status__in") for r in api_requests(emulator, "GET", "/runs/")]  # type: ignore[attr-defined]
    assert ["[1,2,3]"] in status_params
    assert list(client.iter_runs(job_definition_id=13, page_size=2, max_runs=3)).__len__() == 3
    with pytest.raises(DbtCloudConfigError, match="limit"):
        client.list_runs(limit=101)
    with pytest.raises(DbtCloudConfigError, match="order_by"):
        client.list_runs(order_by="name")


def test_cancel_and_cancel_again(client: DbtCloudClient) -> None:
    run = client.trigger_job_run(14, "to cancel")
    cancelled = client.cancel_run(run.id)
    assert cancelled.status is RunStatus.CANCELLED and cancelled.is_cancelled
    assert cancelled.finished_at is not None
    assert client.cancel_run(run.id).status is RunStatus.CANCELLED


def test_cancel_a_running_run_lets_the_next_start(client: DbtCloudClient) -> None:
    slow = client.trigger_job_run(14, "long")
    queued = client.trigger_job_run(14, "behind it")
    time.sleep(0.2)
    assert client.get_run(slow.id).status in (RunStatus.STARTING, RunStatus.RUNNING)
    assert client.get_run(queued.id).status is RunStatus.QUEUED
    client.cancel_run(slow.id)
    time.sleep(0.2)
    assert client.get_run(queued.id).status in (RunStatus.STARTING, RunStatus.RUNNING)


def test_retry_failed_run_from_point_of_failure(client: DbtCloudClient) -> None:
    failed = wait(client, client.trigger_job_run(12, "fails first").id)
    assert failed.status is RunStatus.ERROR
    retried = client.retry_run(failed.id)
    assert retried.id != failed.id and retried.job_id == 12
    assert wait(client, retried.id).status is RunStatus.SUCCESS
    ok = wait(client, client.trigger_job_run(11, "fine").id)
    with pytest.raises(DbtCloudBadRequestError, match="did not fail") as info:
        client.retry_run(ok.id)
    assert info.value.status_code == 400 and info.value.user_message


def test_artifacts_list_and_raw_download(client: DbtCloudClient) -> None:
    run = wait(client, client.trigger_job_run(12, "artifacts").id)
    assert client.list_run_artifacts(run.id) == ["manifest.json", "run_results.json"]
    raw = client.get_run_artifact(run.id, "run_results.json")
    document = json.loads(raw)
    statuses = {r["unique_id"]: r["status"] for r in document["results"]}
    assert statuses == {
        "model.analytics.stg_orders": "success",
        "model.analytics.orders": "error",
        "model.analytics.customers": "skipped",
    }
    assert json.loads(client.get_run_artifact(run.id, "run_results.json", step=4)) == document
    with pytest.raises(DbtCloudNotFoundError):
        client.get_run_artifact(run.id, "catalog.json")
    with pytest.raises(DbtCloudNotFoundError):
        client.get_run_artifact(run.id, "run_results.json", step=99)
    with pytest.raises(DbtCloudConfigError, match="relative file path"):
        client.get_run_artifact(run.id, "../secrets")


def test_job_read_and_whole_job_update(client: DbtCloudClient, emulator: EmulatorServer) -> None:
    job = client.get_job(13)
    assert job.schedule_enabled and job.name == "scheduled"
    job.triggers.schedule = False
    job.description = "Owned by Prefect deployment etl/nightly"
    updated = client.update_job(job)
    assert not updated.schedule_enabled and updated.description == job.description
    assert not client.get_job(13).schedule_enabled
    body = api_requests(emulator, "POST", "/jobs/13/")[-1].body  # type: ignore[attr-defined]
    assert body["name"] == "scheduled" and body["execute_steps"] == ["dbt build"] and body["settings"]


def test_bad_job_update_gets_field_errors(client: DbtCloudClient, emulator: EmulatorServer) -> None:
    emulator.allow_invalid = True  # type: ignore[attr-defined]
    job = client.get_job(11).model_dump(mode="json")
    job["name"] = ""
    with pytest.raises(DbtCloudBadRequestError) as info:
        client.update_job(job)
    assert info.value.field_errors and "name" in str(info.value)
    assert len(api_requests(emulator, "POST", "/jobs/11/")) == 1  # never retried


def test_wrong_token_is_401_not_retried_and_not_leaked(
    emulator: EmulatorServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "tok_WRONG_9876543210"
    with DbtCloudClient(ACCOUNT, wrong, emulator.url, retry=FAST_RETRY) as bad:
        with pytest.raises(DbtCloudAuthError) as info:
            bad.get_run(1)
        assert "token" in str(info.value).lower() and "GET /api/v2/accounts/4242/runs/1/" in str(info.value)
        assert wrong not in str(info.value) and wrong not in repr(info.value) and wrong not in repr(bad)
    assert len(emulator.emulator.requests) == 1
    assert wrong not in caplog.text and TOKEN not in caplog.text


def test_bearer_scheme_is_accepted(emulator: EmulatorServer) -> None:
    response = httpx.get(
        f"{emulator.url}/api/v2/accounts/{ACCOUNT}/jobs/11/", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5
    )
    assert response.status_code == 200 and response.json()["data"]["id"] == 11
    other = httpx.get(
        f"{emulator.url}/api/v2/accounts/{ACCOUNT}/jobs/11/", headers={"Authorization": f"Basic {TOKEN}"}, timeout=5
    )
    assert other.status_code == 401 and other.json()["status"]["is_success"] is False


def test_headers_sent(client: DbtCloudClient, emulator: EmulatorServer) -> None:
    seen: dict[str, str] = {}

    def hook(request: httpx.Request) -> None:
        seen.update({k.lower(): v for k, v in request.headers.items()})

    client._http.event_hooks["request"].append(hook)
    client.get_job(11)
    assert seen["authorization"] == f"Token {TOKEN}"
    assert seen["accept"] == "application/json"
    assert seen["user-agent"].startswith("dbt-cloud-gate/")
    assert emulator.emulator.requests[-1].auth_scheme == "Token"


def test_unknown_run_is_404_without_retry(client: DbtCloudClient, emulator: EmulatorServer) -> None:
    with pytest.raises(DbtCloudNotFoundError, match="run ID"):
        client.get_run(999)
    assert len(emulator.emulator.requests) == 1


def test_404_grace_window_for_a_fresh_run(client: DbtCloudClient, emulator: EmulatorServer) -> None:
    emulator.emulator.add_fault(Fault(kind="not_found_fresh", fresh_seconds=1.0))
    run = client.trigger_job_run(11, "fresh")
    read = client.get_run(run.id)
    assert read.id == run.id
    gets = api_requests(emulator, "GET", f"/runs/{run.id}/")
    assert len(gets) >= 2 and gets[0].status == 404  # type: ignore[attr-defined]
    # A client that did not trigger the run, asked for no grace, gets the 404 at once.
    emulator.emulator.add_fault(Fault(kind="not_found_fresh", fresh_seconds=5))
    other_run = client.trigger_job_run(11, "fresh 2")
    with DbtCloudClient(ACCOUNT, TOKEN, emulator.url, retry=FAST_RETRY) as other:
        with pytest.raises(DbtCloudNotFoundError):
            other.get_run(other_run.id)
        # ...and with an explicit grace it retries until the window (0.2 s) closes.
        started = time.monotonic()
        with pytest.raises(DbtCloudNotFoundError):
            other.get_run(other_run.id, not_found_grace_seconds=0.2)
        assert time.monotonic() - started >= 0.2


def test_429_with_retry_after_seconds_is_honoured(client: DbtCloudClient, emulator: EmulatorServer) -> None:
    emulator.emulator.add_fault(Fault(kind="429", retry_after="0.3", times=2, path=r"/jobs/11/$"))
    started = time.monotonic()
    assert client.get_job(11).id == 11
    assert time.monotonic() - started >= 0.6
    assert [r.status for r in api_requests(emulator, "GET", "/jobs/11/")] == [429, 429, 200]  # type: ignore[attr-defined]


def test_429_with_http_date_retry_after(client: DbtCloudClient, emulator: EmulatorServer) -> None:
    emulator.emulator.add_fault(Fault(kind="429", retry_after=http_date(1.5), times=1))
    started = time.monotonic()
    assert client.get_job(11).id == 11
    assert time.monotonic() - started >= 0.4  # the date has one-second resolution


def test_429_without_retry_after_backs_off_then_gives_up(emulator: EmulatorServer) -> None:
    emulator.emulator.add_fault(Fault(kind="429"))
    policy = RetryPolicy(max_attempts=3, backoff_initial_seconds=0.01, max_elapsed_seconds=5)
    with DbtCloudClient(ACCOUNT, TOKEN, emulator.url, retry=policy) as c:
        with pytest.raises(DbtCloudRateLimitError, match="rate limit") as info:
            c.get_job(11)
    assert info.value.retry_after is None and info.value.status_code == 429
    assert len(emulator.emulator.requests) == 3


def test_retry_after_longer_than_budget_fails_fast(emulator: EmulatorServer) -> None:
    emulator.emulator.add_fault(Fault(kind="429", retry_after="30"))
    policy = RetryPolicy(max_attempts=5, max_elapsed_seconds=2)
    with DbtCloudClient(ACCOUNT, TOKEN, emulator.url, retry=policy) as c:
        started = time.monotonic()
        with pytest.raises(DbtCloudRateLimitError) as info:
            c.get_job(11)
    assert time.monotonic() - started < 1 and info.value.retry_after == 30


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_5xx_html_is_retried_on_reads(client: DbtCloudClient, emulator: EmulatorServer, status: int) -> None:
    emulator.emulator.add_fault(Fault(kind="5xx", status=status, times=2))
    assert client.get_job(11).id == 11
    assert [r.status for r in emulator.emulator.requests] == [status, status, 200]


def test_5xx_that_persists_names_the_html_page(emulator: EmulatorServer) -> None:
    emulator.emulator.add_fault(Fault(kind="5xx", status=502))
    with DbtCloudClient(
        ACCOUNT, TOKEN, emulator.url, retry=RetryPolicy(max_attempts=2, backoff_initial_seconds=0.01)
    ) as c:
        with pytest.raises(DbtCloudServerError) as info:
            c.get_run(5)
    message = str(info.value)
    assert "502" in message and "text/html" in message and "Bad Gateway" in message and "<" not in message
    assert "gave up after 2 attempt(s)" in message


def test_drop_on_read_is_retried(client: DbtCloudClient, emulator: EmulatorServer) -> None:
    emulator.emulator.add_fault(Fault(kind="drop", times=1))
    assert client.get_job(11).id == 11
    assert len(emulator.emulator.requests) == 2


def test_slow_read_times_out_and_is_retried(emulator: EmulatorServer) -> None:
    emulator.emulator.add_fault(Fault(kind="slow", delay=0.5, times=1))
    with DbtCloudClient(ACCOUNT, TOKEN, emulator.url, retry=FAST_RETRY, timeouts=Timeouts(read=0.2)) as c:
        assert c.get_job(11).id == 11
    assert len(emulator.emulator.requests) == 2


@pytest.mark.parametrize(
    ("fault", "runs_created"),
    [
        (Fault(kind="5xx", status=503, method="POST", times=1), 0),
        (Fault(kind="drop", method="POST", times=1), 0),
        (Fault(kind="lost_response", method="POST", times=1), 1),
        (Fault(kind="slow", delay=0.6, method="POST", times=1), 1),
    ],
    ids=["503", "drop", "lost-response", "read-timeout"],
)
def test_ambiguous_trigger_is_reported_never_resent(emulator: EmulatorServer, fault: Fault, runs_created: int) -> None:
    emulator.emulator.add_fault(fault)
    with DbtCloudClient(ACCOUNT, TOKEN, emulator.url, retry=FAST_RETRY, timeouts=Timeouts(read=0.3)) as c:
        with pytest.raises(DbtCloudAmbiguousTriggerError) as info:
            c.trigger_job_run(11, "ambiguous abc123")
        assert info.value.job_id == 11 and info.value.cause == "ambiguous abc123"
        assert "may or may not" in str(info.value)
        assert len(api_requests(emulator, "POST", "/run/")) == 1
        time.sleep(0.7)  # let a slow request finish on the server side
        assert emulator.emulator.trigger_count.get(11, 0) == runs_created
        found = c.find_runs_by_cause(11, "abc123")
        assert len(found) == runs_created


def test_429_on_trigger_is_safe_to_retry(client: DbtCloudClient, emulator: EmulatorServer) -> None:
    emulator.emulator.add_fault(Fault(kind="429", retry_after="0", method="POST", times=1))
    run = client.trigger_job_run(11, "after 429")
    assert run.id and emulator.emulator.trigger_count[11] == 1


def test_connection_refused_trigger_is_retried_then_transport_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    policy = RetryPolicy(max_attempts=3, backoff_initial_seconds=0.01)
    with DbtCloudClient(ACCOUNT, TOKEN, f"http://127.0.0.1:{port}", retry=policy) as c:
        with pytest.raises(DbtCloudTransportError, match="gave up after 3 attempt") as info:
            c.trigger_job_run(11, "nobody home")
    assert TOKEN not in str(info.value)


def test_cause_is_cut_to_255_with_a_warning(
    client: DbtCloudClient, emulator: EmulatorServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="dbt_cloud_gate.dbtcloud_api")
    client.trigger_job_run(11, "x" * 300)
    assert len(api_requests(emulator, "POST")[-1].body["cause"]) == 255  # type: ignore[attr-defined]
    assert "cut" in caplog.text
    with pytest.raises(DbtCloudConfigError, match="cause"):
        client.trigger_job_run(11, "   ")


def test_emulator_refuses_overlong_cause_in_the_real_shape(emulator: EmulatorServer) -> None:
    response = httpx.post(
        f"{emulator.url}/api/v2/accounts/{ACCOUNT}/jobs/11/run/",
        json={"cause": "y" * 256},
        headers={"Authorization": f"Token {TOKEN}"},
        timeout=5,
    )
    assert response.status_code == 400
    body = response.json()
    assert body["status"]["is_success"] is False and "255" in body["data"]["cause"][0]


def test_bad_input_is_refused_before_sending(client: DbtCloudClient, emulator: EmulatorServer) -> None:
    with pytest.raises(DbtCloudConfigError, match="steps_override"):
        client.trigger_job_run(11, "c", steps_override=[])
    with pytest.raises(DbtCloudConfigError, match="Unknown trigger override"):
        client.trigger_job_run(11, "c", thread_override=3)
    with pytest.raises(DbtCloudConfigError, match="job_id"):
        client.trigger_job_run(0, "c")
    with pytest.raises(DbtCloudConfigError, match="token"):
        DbtCloudClient(ACCOUNT, "  ", emulator.url)
    assert emulator.emulator.requests == []


def test_token_never_in_errors_or_logs(emulator: EmulatorServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    emulator.emulator.add_fault(Fault(kind="5xx", status=500, path=r"/jobs/11/$"))
    emulator.emulator.add_fault(Fault(kind="lost_response", method="POST"))
    errors: list[DbtCloudError] = []
    with DbtCloudClient(
        ACCOUNT, TOKEN, emulator.url, retry=RetryPolicy(max_attempts=2, backoff_initial_seconds=0.01)
    ) as c:
        for action in (lambda: c.get_job(11), lambda: c.trigger_job_run(11, "x"), lambda: c.get_run(12345)):
            with pytest.raises(DbtCloudError) as info:
                action()
            errors.append(info.value)
    assert {type(e) for e in errors} == {DbtCloudServerError, DbtCloudAmbiguousTriggerError, DbtCloudNotFoundError}
    for error in errors:
        assert TOKEN not in str(error) and TOKEN not in repr(error) and TOKEN not in str(error.__dict__)
    assert TOKEN not in caplog.text


def test_error_hierarchy() -> None:
    for cls in (
        DbtCloudAuthError,
        DbtCloudNotFoundError,
        DbtCloudBadRequestError,
        DbtCloudRateLimitError,
        DbtCloudServerError,
    ):
        assert issubclass(cls, DbtCloudAPIError) and issubclass(cls, DbtCloudError)
    assert issubclass(DbtCloudTransportError, DbtCloudError)
    assert issubclass(DbtCloudAmbiguousTriggerError, DbtCloudError)


def test_errors_survive_pickling() -> None:
    import pickle

    error = DbtCloudAmbiguousTriggerError("boom", job_id=3, cause="c", method="POST", path="/p", status_code=502)
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.job_id, copy.cause, copy.status_code, str(copy)) == (3, "c", 502, "boom")


def test_parse_retry_after() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("-3") == 0.0
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert parse_retry_after("Thu, 01 Jan 2026 00:00:10 GMT", now=now) == 10.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


def test_async_client_same_paths(emulator: EmulatorServer) -> None:
    emulator.emulator.add_fault(Fault(kind="429", retry_after="0.1", times=1, method="GET"))

    async def scenario() -> tuple[Run, list[int], Run]:
        async with AsyncDbtCloudClient(ACCOUNT, TOKEN, emulator.url, retry=FAST_RETRY) as c:
            run = await c.trigger_job_run(11, "async", steps_override=["dbt run"])
            while not run.is_terminal:
                await asyncio.sleep(0.05)
                run = await c.get_run(run.id)
            ids = [r.id async for r in c.iter_runs(job_definition_id=11, page_size=1)]
            slow = await c.trigger_job_run(14, "async cancel")
            cancelled = await c.cancel_run(slow.id)
            found = await c.find_runs_by_cause(11, "async")
            assert [r.id for r in found] == [run.id]
            assert await c.list_run_artifacts(run.id) == ["manifest.json", "run_results.json"]
            assert json.loads(await c.get_run_artifact(run.id, "run_results.json"))["results"]
            job = await c.get_job(13)
            job.triggers.schedule = False
            assert not (await c.update_job(job)).schedule_enabled
            with pytest.raises(DbtCloudNotFoundError):
                await c.get_run(1)
            return run, ids, cancelled

    run, ids, cancelled = asyncio.run(scenario())
    assert run.status is RunStatus.SUCCESS and run.finished_at is not None
    assert ids == [run.id]
    assert cancelled.status is RunStatus.CANCELLED
    assert emulator.emulator.requests[1].status == 429 or any(r.status == 429 for r in emulator.emulator.requests)


# -- answers that are not the run asked for, or not dbt Cloud's at all (issue 8, 4.1 and 4.3) --------------------


def test_a_run_read_back_must_be_the_run_asked_for() -> None:
    from dbt_cloud_gate.dbtcloud_api import DbtCloudRunMismatchError
    from tests.scripted_server import Answer, ScriptedServer, envelope, run_data

    def respond(method: str, path: str) -> Answer:
        if path.endswith("/runs/"):  # a listing of job 11 that holds a run of job 12
            return Answer(body={**envelope([run_data(5, 10, job_id=11), run_data(6, 10, job_id=12)])})
        return Answer(body=envelope(run_data(8, 30)))  # every single-run read answers run 8

    with ScriptedServer(respond) as server, DbtCloudClient(ACCOUNT, TOKEN, server.url, retry=FAST_RETRY) as c:
        with pytest.raises(DbtCloudRunMismatchError, match="run 8, not run 7"):
            c.get_run(7)
        with pytest.raises(DbtCloudRunMismatchError, match="run 8, not run 7"):
            c.cancel_run(7)
        with pytest.raises(DbtCloudRunMismatchError, match="job 12, not of job 11"):
            c.list_runs(job_definition_id=11)
        assert c.get_run(8).id == 8 and c.cancel_run(8).id == 8
        with pytest.raises(DbtCloudRunMismatchError, match="job 11, not of job 99"):
            c.get_run(8, job_id=99)
        assert sum(1 for s in server.seen if s.path.endswith("/runs/7/")) == FAST_RETRY.max_unreadable_attempts


@pytest.mark.parametrize(
    "answer",
    [
        {"body": "<html><body>Please sign in</body></html>", "content_type": "text/html"},
        {"body": {"id": 1, "status": 1}},
        {
            "body": {
                "status": {"code": 200},
                "data": {"id": 9, "account_id": 4242, "job_definition_id": 12, "status": 1},
            }
        },
    ],
    ids=["html-200", "not-the-envelope", "a-run-of-another-job"],
)
def test_a_trigger_answered_with_something_else_is_ambiguous_never_resent(answer: dict[str, object]) -> None:
    from tests.scripted_server import Answer, ScriptedServer

    with ScriptedServer(lambda method, path: Answer(**answer)) as server:  # type: ignore[arg-type]
        with DbtCloudClient(ACCOUNT, TOKEN, server.url, retry=FAST_RETRY) as c:
            with pytest.raises(DbtCloudAmbiguousTriggerError, match="may or may not") as info:
                c.trigger_job_run(11, "nightly [key-1]")
        assert len(server.seen) == 1
    assert info.value.job_id == 11 and info.value.cause == "nightly [key-1]" and TOKEN not in str(info.value)


# -- deadlines (issue 8, 4.4) ---------------------------------------------------------------------------------------


def test_request_deadline_bounds_a_call_whatever_the_server_does() -> None:
    from dbt_cloud_gate.dbtcloud_api import DbtCloudDeadlineExceeded, request_deadline
    from tests.scripted_server import Answer, ScriptedServer, envelope, run_data

    slow = Answer(body=envelope(run_data(7, 10)), delay=40)
    trickled = Answer(body=envelope({**run_data(7, 10), "pad": "x" * 3000}), trickle=0.01)
    for answer in (slow, trickled):
        with ScriptedServer(lambda method, path, a=answer: a) as server:  # type: ignore[misc]
            with DbtCloudClient(ACCOUNT, TOKEN, server.url, retry=FAST_RETRY) as c:
                started = time.monotonic()
                with request_deadline(started + 1.0), pytest.raises(DbtCloudDeadlineExceeded, match="deadline"):
                    c.get_run(7)
                assert time.monotonic() - started < 2.5  # not 40 s, not the whole trickle
                # A trigger cut by the deadline may have started a run: ambiguous, never resent.
                with request_deadline(time.monotonic() + 0.5), pytest.raises(DbtCloudAmbiguousTriggerError):
                    c.trigger_job_run(11, "cut")
            assert sum(1 for s in server.seen if s.method == "POST") == 1


def test_total_timeout_ends_an_attempt_that_trickles() -> None:
    from tests.scripted_server import Answer, ScriptedServer, envelope, run_data

    trickled = Answer(body=envelope({**run_data(7, 10), "pad": "x" * 3000}), trickle=0.01)
    policy = RetryPolicy(max_attempts=2, backoff_initial_seconds=0.01)
    with ScriptedServer(lambda method, path: trickled) as server:
        with DbtCloudClient(ACCOUNT, TOKEN, server.url, retry=policy, timeouts=Timeouts(read=5, total=0.7)) as c:
            started = time.monotonic()
            with pytest.raises(DbtCloudTransportError, match="gave up after 2 attempt"):
                c.get_run(7)
            assert 1.3 < time.monotonic() - started < 4
        assert len(server.seen) == 2


def test_no_retry_sleeps_past_the_deadline(emulator: EmulatorServer) -> None:
    from dbt_cloud_gate.dbtcloud_api import DbtCloudDeadlineExceeded, request_deadline
    from dbt_cloud_gate.dbtcloud_api.ratelimit import RateLimiter

    emulator.emulator.add_fault(Fault(kind="429", retry_after="30"))
    policy = RetryPolicy(max_attempts=5, max_elapsed_seconds=100, max_retry_after_seconds=60)
    limiter = RateLimiter(per_minute=6000)
    with DbtCloudClient(ACCOUNT, TOKEN, emulator.url, retry=policy, rate_limiter=limiter) as c:
        started = time.monotonic()
        with request_deadline(started + 2), pytest.raises(DbtCloudRateLimitError):
            c.get_job(11)
        assert time.monotonic() - started < 1.5  # the 30 s Retry-After does not fit: no sleep
        # The account is now held back 30 s by the 429: a call due in 2 s is not even sent.
        sent = len(emulator.emulator.requests)
        with request_deadline(time.monotonic() + 2), pytest.raises(DbtCloudDeadlineExceeded, match="rate limit"):
            c.get_job(11)
        assert len(emulator.emulator.requests) == sent


@pytest.mark.parametrize("value", [0, -1, 2**63, True, "11", 11.0, None])
def test_impossible_ids_are_refused_before_any_request(
    client: DbtCloudClient, emulator: EmulatorServer, value: object
) -> None:
    calls = [
        lambda: client.get_run(value),  # type: ignore[arg-type]
        lambda: client.trigger_job_run(value, "c"),  # type: ignore[arg-type]
        lambda: client.cancel_run(value),  # type: ignore[arg-type]
        lambda: client.get_job(value),  # type: ignore[arg-type]
    ]
    if value is not None:  # job_id=None means "job unknown"
        calls.append(lambda: client.get_run(5, job_id=value))  # type: ignore[arg-type]
    for call in calls:
        with pytest.raises(ValueError, match=r"dbt Cloud ID|positive integer"):
            call()
    with pytest.raises(ValueError, match="account_id"):
        DbtCloudClient(value, TOKEN, emulator.url)  # type: ignore[arg-type]
    assert emulator.emulator.requests == []


@pytest.mark.parametrize(
    ("make", "named"),
    [
        (lambda: Timeouts(read=float("nan")), "Timeouts.read"),
        (lambda: Timeouts(total=float("inf")), "Timeouts.total"),
        (lambda: Timeouts(connect=0), "Timeouts.connect"),
        (lambda: Timeouts(pool=-1), "Timeouts.pool"),
        (lambda: RetryPolicy(max_elapsed_seconds=float("nan")), "max_elapsed_seconds"),
        (lambda: RetryPolicy(backoff_initial_seconds=float("inf")), "backoff_initial_seconds"),
        (lambda: RetryPolicy(backoff_max_seconds=-1), "backoff_max_seconds"),
        (lambda: RetryPolicy(max_retry_after_seconds=float("nan")), "max_retry_after_seconds"),
        (lambda: RetryPolicy(max_attempts=True), "max_attempts"),
        (lambda: RetryPolicy(max_attempts=2.5), "max_attempts"),
        (lambda: RetryPolicy(max_unreadable_attempts=0), "max_unreadable_attempts"),
    ],
)
def test_timeouts_and_retry_policy_refuse_what_is_not_finite(make: object, named: str) -> None:
    with pytest.raises(DbtCloudConfigError, match=named):
        make()  # type: ignore[operator]


def test_deadlines_must_be_finite() -> None:
    from dbt_cloud_gate.dbtcloud_api import request_deadline

    for bad in (float("nan"), float("inf")):
        with pytest.raises(DbtCloudConfigError, match="finite"), request_deadline(bad):
            pass
