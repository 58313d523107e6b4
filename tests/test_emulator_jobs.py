"""The emulator's job operations (list, create, update, delete, rerun), run retries, the run-list filters of the
spec, 501 for what it lacks, and the manifest. Real HTTP on loopback, httpx as the client; every request here
follows the spec, so the recorded departures stay empty."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from dbt_cloud_gate.dbtcloud_api.emulator import EmulatorServer, JobSpec
from dbt_cloud_gate.dbtcloud_api.openapi import SpecValidator
from tests.conftest import ACCOUNT, data, serving

API = f"/api/v2/accounts/{ACCOUNT}/"
QUICK: dict[str, Any] = {"queue_seconds": 0, "start_seconds": 0, "run_seconds": 0.1}


def jobs() -> list[JobSpec]:
    return [
        JobSpec(id=1, name="Nightly build", project_id=1, environment_id=10, **QUICK),
        JobSpec(id=2, name="Hourly", project_id=2, environment_id=20, outcome="error", **QUICK),
        JobSpec(id=3, name="Nightly tests", project_id=3, environment_id=30, schedule_enabled=True, **QUICK),
    ]


@pytest.fixture
def server(spec_validator: SpecValidator) -> Iterator[EmulatorServer]:
    with serving(jobs(), spec_validator) as running:
        yield running


def ids(answer: httpx.Response) -> list[int]:
    return [item["id"] for item in data(answer)]


def as_request(job: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """A job object as the spec takes it: its nulls and empty strings left out (the spec allows neither)."""
    return {key: value for key, value in {**job, **changes}.items() if value not in (None, "")}


def trigger(http: httpx.Client, job_id: int, cause: str = "test") -> dict[str, Any]:
    return data(http.post(f"jobs/{job_id}/run/", json={"cause": cause}))


def test_jobs_list_filters_orders_and_pages(http: httpx.Client) -> None:
    assert ids(http.get("jobs/")) == [1, 2, 3]
    assert ids(http.get("jobs/", params={"project_id": 2})) == [2]
    assert ids(http.get("jobs/", params={"project_id__in": "[1,3]"})) == [1, 3]
    assert ids(http.get("jobs/", params={"environment_id": 30})) == [3]
    assert ids(http.get("jobs/", params={"name__icontains": "NIGHTLY"})) == [1, 3]
    assert ids(http.get("jobs/", params={"triggers_schedule": "true"})) == [3]
    assert ids(http.get("jobs/", params={"pk": 2})) == [2]
    assert ids(http.get("jobs/", params={"order_by": "-name"})) == [3, 1, 2]
    page = http.get("jobs/", params={"order_by": "-id", "limit": 2, "offset": 1}).json()
    assert [job["id"] for job in page["data"]] == [2, 1]
    assert page["extra"]["pagination"] == {"count": 2, "total_count": 3}
    assert http.get("jobs/", params={"order_by": "colour"}).status_code == 400


def test_job_create_update_delete(http: httpx.Client) -> None:
    template = data(http.get("jobs/1/"))
    created = data(http.post("jobs/", json=as_request(template, name="Copy")))
    assert created["id"] == 4 and created["name"] == "Copy" and created["execute_steps"] == ["dbt build"]
    assert created["project_id"] == 1 and created["state"] == 1
    created["triggers"]["schedule"] = True
    changes = {"execute_steps": ["dbt run", "dbt test"], "description": "two steps"}
    updated = data(http.post("jobs/4/", json=as_request(created, **changes)))
    assert updated["execute_steps"] == ["dbt run", "dbt test"] and updated["description"] == "two steps"
    assert ids(http.get("jobs/", params={"triggers_schedule": "true"})) == [3, 4]
    run = trigger(http, 4)
    assert run["job_definition_id"] == 4
    deleted = http.delete("jobs/4/")
    # The spec says 204 without a body; dbt Cloud answers 200 with the job, now state 2 (captured responses).
    assert deleted.status_code == 200 and deleted.json()["data"]["state"] == 2
    assert http.get("jobs/4/").status_code == 404
    assert http.post("jobs/4/run/", json={"cause": "gone"}).status_code == 404
    assert ids(http.get("jobs/")) == [1, 2, 3]
    assert ids(http.get("jobs/", params={"state": "deleted"})) == [4]
    assert ids(http.get("jobs/", params={"state": "all"})) == [1, 2, 3, 4]


def test_rerun_retries_a_failed_last_run_else_starts_a_new_one(http: httpx.Client) -> None:
    failed = trigger(http, 2)
    time.sleep(0.3)
    assert data(http.get(f"runs/{failed['id']}/"))["status"] == 20
    details = data(http.get(f"runs/{failed['id']}/retry/"))
    assert details == {"failed_step": "Invoke dbt with `dbt build`", "skipped_steps": []}
    retry = data(http.post("jobs/2/rerun/"))
    assert retry["retried_from_run_id"] == failed["id"]
    time.sleep(0.3)
    assert data(http.get(f"runs/{retry['id']}/"))["status"] == 10  # the retry outcome: success
    fresh = data(http.post("jobs/2/rerun/"))  # the last run succeeded: a new run of the job
    assert fresh["retried_from_run_id"] is None and fresh["id"] > retry["id"]
    ok = trigger(http, 1)
    time.sleep(0.3)
    assert http.get(f"runs/{ok['id']}/retry/").status_code == 400


def test_run_list_filters_of_the_spec_are_applied(http: httpx.Client) -> None:
    before = datetime.now(UTC) - timedelta(seconds=1)
    runs = [trigger(http, job_id) for job_id in (1, 2, 3, 1)]
    time.sleep(0.5)
    after = datetime.now(UTC) + timedelta(seconds=1)
    every = [run["id"] for run in runs]
    assert ids(http.get("runs/")) == every
    assert ids(http.get("runs/", params={"project_id": 1})) == [every[0], every[3]]
    assert ids(http.get("runs/", params={"project_id__in": "[2,3]"})) == every[1:3]
    assert ids(http.get("runs/", params={"environment_id": 20})) == [every[1]]
    assert ids(http.get("runs/", params={"id__gt": every[1]})) == every[2:]
    assert ids(http.get("runs/", params={"pk": every[2]})) == [every[2]]
    assert ids(http.get("runs/", params={"pk__in": f"[{every[0]},{every[3]}]"})) == [every[0], every[3]]
    assert ids(http.get("runs/", params={"deferring_run_id": every[0]})) == []
    assert ids(http.get("runs/", params={"status": 20})) == [every[1]]
    assert ids(http.get("runs/", params={"dbt_version": "1.8.0", "job_definition_id": 3})) == [every[2]]
    window = f"[{before.isoformat()},{after.isoformat()}]"
    assert ids(http.get("runs/", params={"created_at__range": window})) == every
    assert ids(http.get("runs/", params={"finished_at__range": window, "order_by": "-id"})) == every[::-1]
    old = f"[{(before - timedelta(days=1)).isoformat()},{before.isoformat()}]"
    assert ids(http.get("runs/", params={"created_at__range": old})) == []
    assert http.get("runs/", params={"created_at__range": "[yesterday,today]"}).status_code == 400


def test_an_operation_of_the_spec_not_emulated_answers_501_naming_it(
    server: EmulatorServer, http: httpx.Client
) -> None:
    answer = http.get("projects/")
    assert answer.status_code == 501
    assert "List Projects" in answer.json()["status"]["user_message"]
    assert http.get("jobs/99/").status_code == 404  # a missing object is a 404
    assert http.get("nothing/here/").status_code == 404  # no such operation at all
    assert server.emulator.requests.pop().spec_problems == [f"no operation in the spec matches {API}nothing/here/"]


def test_the_manifest_holds_nodes_sources_and_lineage(server: EmulatorServer, http: httpx.Client) -> None:
    server.emulator.set_job(1, models=["stg_orders", "stg_customers", "orders"])
    template = data(http.get("jobs/1/"))
    data(http.post("jobs/1/", json=as_request(template, execute_steps=["dbt run", "dbt test"])))
    run = trigger(http, 1)
    time.sleep(0.4)
    manifest = http.get(f"runs/{run['id']}/artifacts/manifest.json").json()
    assert set(manifest["sources"]) == {"source.analytics.raw.orders", "source.analytics.raw.customers"}
    models = {uid for uid, node in manifest["nodes"].items() if node["resource_type"] == "model"}
    assert models == {"model.analytics.stg_orders", "model.analytics.stg_customers", "model.analytics.orders"}
    parents = manifest["parent_map"]
    assert parents["model.analytics.orders"] == ["model.analytics.stg_orders", "model.analytics.stg_customers"]
    assert parents["model.analytics.stg_orders"] == ["source.analytics.raw.orders"]
    assert "model.analytics.orders" in manifest["child_map"]["model.analytics.stg_customers"]
    results = http.get(f"runs/{run['id']}/artifacts/run_results.json").json()["results"]
    tested = [r["unique_id"] for r in results]
    assert tested and all(parents[uid] for uid in tested)  # every test of the run is in the manifest, on a model
    for uid, above in parents.items():
        assert all(uid in manifest["child_map"][parent] for parent in above)
