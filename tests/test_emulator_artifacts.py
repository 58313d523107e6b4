"""The steps a job's checkboxes add and the artifacts they leave, as dbt Cloud serves them: "Run source freshness"
(a ``dbt source freshness`` first step whose Error leaves the run a Success, and its ``sources.json``), a listed
``dbt source freshness`` that fails the run, and "Generate docs on run" (a last ``dbt docs generate`` step and its
``catalog.json``). Real HTTP on loopback, httpx as the client; every request follows the spec."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import httpx
import pytest

from dbt_cloud_gate.dbtcloud_api import DbtCloudClient, RunStatus
from dbt_cloud_gate.dbtcloud_api.emulator import Emulator, EmulatorServer, JobSpec
from dbt_cloud_gate.dbtcloud_api.openapi import SpecValidator
from tests.conftest import ACCOUNT, FAST_RETRY, TOKEN, api, data, serving

API = f"/api/v2/accounts/{ACCOUNT}/"
QUICK: dict[str, Any] = {"queue_seconds": 0, "start_seconds": 0, "run_seconds": 0.2}
MODELS = ["stg_orders", "stg_customers", "stg_payments", "stg_items", "orders"]
STALE: dict[str, Any] = {"orders": "error", "customers": "warn", "payments": "runtime error"}
HOUR = {"hour": 3600, "day": 86400, "minute": 60}


def jobs() -> list[JobSpec]:
    return [
        JobSpec(id=1, name="Freshness first", models=MODELS, run_generate_sources=True, stale_sources=STALE, **QUICK),
        JobSpec(id=2, name="Listed freshness", steps=["dbt source freshness", "dbt build"], models=MODELS, **QUICK),
        JobSpec(id=3, name="Docs", execute_steps=["dbt run", "dbt test"], generate_docs=True, **QUICK),
        JobSpec(id=4, name="Docs, failing", generate_docs=True, outcome="error", **QUICK),
    ]


@pytest.fixture
def server(spec_validator: SpecValidator) -> Iterator[EmulatorServer]:
    with serving(jobs(), spec_validator) as running:
        yield running


def finished_run(http: httpx.Client, job_id: int, **body: Any) -> dict[str, Any]:
    """Trigger the job and read the run once it has ended, with its steps."""
    run = data(http.post(f"jobs/{job_id}/run/", json={"cause": "test", **body}))
    deadline = time.monotonic() + 10
    while True:
        run = data(http.get(f"runs/{run['id']}/", params={"include_related": "run_steps"}))
        if run["is_complete"] or time.monotonic() > deadline:
            return run
        time.sleep(0.05)


def artifact(http: httpx.Client, run: dict[str, Any], name: str, step: int | None = None) -> httpx.Response:
    return http.get(f"runs/{run['id']}/artifacts/{name}", params={} if step is None else {"step": step})


def steps(run: dict[str, Any]) -> list[tuple[int, str, int]]:
    return [(step["index"], step["name"], step["status"]) for step in run["run_steps"]]


def test_a_stale_source_errs_the_freshness_step_and_the_run_still_succeeds(http: httpx.Client) -> None:
    run = finished_run(http, 1)
    assert run["status"] == 10 and run["has_sources_generated"] is True and run["has_docs_generated"] is False
    assert steps(run)[3:] == [
        (4, "Invoke dbt with `dbt source freshness`", 20),  # dbt exits 1; the checkbox step does not fail the run
        (5, "Invoke dbt with `dbt build`", 10),
    ]
    log = run["run_steps"][3]["logs"]
    assert "ERROR STALE freshness of raw.orders" in log and "WARN freshness of raw.customers" in log
    assert "PASS freshness of raw.items" in log
    assert data(http.get(f"runs/{run['id']}/artifacts/")) == ["manifest.json", "run_results.json", "sources.json"]
    sources = artifact(http, run, "sources.json", step=4).json()
    assert artifact(http, run, "sources.json").json() == sources  # the run's target/ keeps it
    assert sources["metadata"]["dbt_schema_version"] == "https://schemas.getdbt.com/dbt/sources/v3.json"
    manifest = artifact(http, run, "manifest.json").json()
    results = {result["unique_id"]: result for result in sources["results"]}
    assert set(results) == set(manifest["sources"])  # every source of the project, by its manifest ID
    statuses = {uid.rsplit(".", 1)[1]: result["status"] for uid, result in results.items()}
    assert statuses == {"orders": "error", "customers": "warn", "payments": "runtime error", "items": "pass"}
    failed = results["source.analytics.raw.payments"]  # the query failed: dbt writes no timestamps
    assert set(failed) == {"unique_id", "error", "status"} and "raw.payments" in failed["error"]
    for uid, result in results.items():
        if result["status"] == "runtime error":
            continue
        criteria = result["criteria"]
        assert criteria == manifest["sources"][uid]["freshness"]
        age = result["max_loaded_at_time_ago_in_s"]
        loaded, snapshotted = (datetime.fromisoformat(result[key]) for key in ("max_loaded_at", "snapshotted_at"))
        assert (snapshotted - loaded).total_seconds() == pytest.approx(age)
        warn, error = (criteria[key]["count"] * HOUR[criteria[key]["period"]] for key in ("warn_after", "error_after"))
        expected = "error" if age > error else "warn" if age > warn else "pass"
        assert result["status"] == expected, uid
    # The freshness step writes sources.json and no run_results.json; the build step the reverse.
    assert artifact(http, run, "run_results.json", step=4).status_code == 404
    assert artifact(http, run, "sources.json", step=5).status_code == 404
    assert artifact(http, run, "run_results.json").json()["args"]["which"] == "build"
    assert [r["id"] for r in data(http.get("runs/", params={"has_sources_generated": "true"}))] == [run["id"]]


def test_our_client_reads_sources_json_and_sees_the_freshness_step(server: EmulatorServer) -> None:
    with DbtCloudClient(ACCOUNT, TOKEN, server.url, retry=FAST_RETRY) as client:
        run = client.trigger_job_run(1, "client")
        time.sleep(0.4)
        run = client.get_run(run.id, ("run_steps",))
        assert run.status == 10 and run.model_steps() == [5]
        assert [step.dbt_command for step in run.run_steps][3:] == ["source freshness", "build"]
        assert b'"status": "error"' in client.get_run_artifact(run.id, "sources.json", step=4)


def test_a_run_failed_after_an_errored_freshness_step_names_the_step_that_failed_it(server: EmulatorServer) -> None:
    server.emulator.set_job(1, outcome="error")  # freshness errs on stale sources, then `dbt build` fails the run
    with DbtCloudClient(ACCOUNT, TOKEN, server.url, retry=FAST_RETRY) as client:
        run = client.trigger_job_run(1, "client")
        time.sleep(0.4)
        run = client.get_run(run.id, ("run_steps",))
    assert run.status == RunStatus.ERROR and [step.index for step in run.run_steps if step.failed] == [4, 5]
    assert run.failed_step is not None and run.failed_step.dbt_command == "build" and run.latest_step_failed


def test_a_listed_freshness_step_fails_the_run_on_an_error_stale_source(server: EmulatorServer) -> None:
    with api(server) as http:
        server.emulator.set_job(2, stale_sources={"customers": "warn"})
        warned = finished_run(http, 2)  # a warning: dbt exits 0
        assert warned["status"] == 10 and [status for *_, status in steps(warned)][3:] == [10, 10]
        server.emulator.set_job(2, stale_sources={"orders": "error", "customers": "warn"})
        failed = finished_run(http, 2)
        assert failed["status"] == 20 and failed["status_message"] == "ERROR STALE freshness of raw.orders"
        assert steps(failed)[3:] == [(4, "Invoke dbt with `dbt source freshness`", 20)]  # `dbt build` never ran
        details = data(http.get(f"runs/{failed['id']}/retry/"))
        assert details == {
            "failed_step": "Invoke dbt with `dbt source freshness`",
            "skipped_steps": ["Invoke dbt with `dbt build`"],
        }
        assert data(http.get(f"runs/{failed['id']}/artifacts/")) == ["manifest.json", "sources.json"]
        assert artifact(http, failed, "run_results.json").status_code == 404


def test_generate_docs_adds_a_last_step_and_its_catalog(http: httpx.Client) -> None:
    run = finished_run(http, 3)
    assert run["has_docs_generated"] is True and run["has_sources_generated"] is False
    assert [name for _, name, _ in steps(run)][3:] == [
        "Invoke dbt with `dbt run`",
        "Invoke dbt with `dbt test`",
        "Invoke dbt with `dbt docs generate`",
    ]
    assert "Catalog written to" in run["run_steps"][-1]["logs"]
    assert data(http.get(f"runs/{run['id']}/artifacts/")) == ["catalog.json", "manifest.json", "run_results.json"]
    catalog = artifact(http, run, "catalog.json").json()
    assert catalog == artifact(http, run, "catalog.json", step=6).json()
    assert catalog["metadata"]["dbt_schema_version"] == "https://schemas.getdbt.com/dbt/catalog/v1.json"
    manifest = artifact(http, run, "manifest.json").json()
    models = {uid for uid, node in manifest["nodes"].items() if node["resource_type"] == "model"}
    assert set(catalog["nodes"]) == models and set(catalog["sources"]) == set(manifest["sources"])
    for uid, table in catalog["nodes"].items():
        assert table["unique_id"] == uid and table["metadata"]["name"] == manifest["nodes"][uid]["name"].upper()
        assert [column["index"] for column in table["columns"].values()] == [1, 2]
    # Without `step`, run_results.json is the last step's: the docs step's compile results, as dbt Cloud serves it.
    last = artifact(http, run, "run_results.json").json()
    assert last["args"]["which"] == "generate" and {r["status"] for r in last["results"]} == {"success"}
    assert {r["unique_id"] for r in last["results"]} >= models
    tests = artifact(http, run, "run_results.json", step=5).json()
    assert tests["args"]["which"] == "test" and {r["status"] for r in tests["results"]} == {"pass"}
    assert artifact(http, run, "catalog.json", step=5).status_code == 404


def test_docs_follow_the_trigger_override_and_a_failed_run_skips_them(http: httpx.Client) -> None:
    skipped = finished_run(http, 3, generate_docs_override=False)
    assert skipped["has_docs_generated"] is False and "dbt docs generate" not in str(steps(skipped))
    assert artifact(http, skipped, "catalog.json").status_code == 404
    forced = finished_run(http, 1, generate_docs_override=True)
    assert forced["run_steps"][-1]["name"] == "Invoke dbt with `dbt docs generate`"
    failed = finished_run(http, 4)  # the chain stops at the failed step: no docs
    assert failed["status"] == 20 and failed["has_docs_generated"] is False
    assert steps(failed)[-1] == (4, "Invoke dbt with `dbt build`", 20)
    assert data(http.get(f"runs/{failed['id']}/retry/"))["skipped_steps"] == ["Invoke dbt with `dbt docs generate`"]
    assert artifact(http, failed, "catalog.json").status_code == 404


def test_the_checkboxes_round_trip_through_the_job_object(http: httpx.Client) -> None:
    job = data(http.get("jobs/3/"))
    assert (job["generate_docs"], job["run_generate_sources"]) == (True, False)
    job.update(generate_docs=False, run_generate_sources=True)
    sent = {key: value for key, value in job.items() if value is not None and value != ""}
    assert data(http.post("jobs/3/", json=sent))["run_generate_sources"] is True
    run = finished_run(http, 3)  # the job's only source is fresh
    assert [name for _, name, _ in steps(run)][3] == "Invoke dbt with `dbt source freshness`"
    assert {r["status"] for r in artifact(http, run, "sources.json").json()["results"]} == {"pass"}
    assert run["has_docs_generated"] is False


def test_stale_sources_are_checked_where_they_enter() -> None:
    with pytest.raises(ValueError, match=r"stale_sources\['orders'\] is 'late'; use one of warn, error"):
        JobSpec(id=9, stale_sources={"orders": "late"})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match=r"names \['order'\].*its sources are \['orders'\]"):
        JobSpec(id=9, stale_sources={"order": "error"})
    emulator = Emulator(jobs(), account_id=ACCOUNT, token=TOKEN)
    with pytest.raises(ValueError, match="stale_sources names"):
        emulator.set_job(3, stale_sources={"nothing": "warn"})
    assert emulator.jobs[3].stale_sources == {}  # a refused change leaves the job as it was
    reply = emulator.handle("POST", "/_emulator/jobs/3", {}, b'{"stale_sources": {"orders": "warm"}}')
    assert reply.status == 400 and b"'warm'" in reply.body
