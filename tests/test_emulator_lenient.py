"""The emulator answers as dbt Cloud does where dbt Cloud is more lenient than its spec, and records each departure.

Real HTTP on loopback, httpx as the client (no redirects followed unless a test asks).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from dbt_cloud_gate.dbtcloud_api.emulator import Emulator, EmulatorServer
from dbt_cloud_gate.dbtcloud_api.openapi import SpecValidator
from tests.conftest import ACCOUNT, TOKEN, fast_jobs

API = f"/api/v2/accounts/{ACCOUNT}/"


@pytest.fixture
def server(spec_validator: SpecValidator) -> Iterator[EmulatorServer]:
    with EmulatorServer(Emulator(fast_jobs(), account_id=ACCOUNT, token=TOKEN, validator=spec_validator)) as running:
        yield running


@pytest.fixture
def http(server: EmulatorServer) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Token {TOKEN}"}
    with httpx.Client(base_url=server.url + API, headers=headers, timeout=10) as client:
        yield client


def problems(server: EmulatorServer) -> list[list[str]]:
    return [r.spec_problems for r in server.emulator.requests]


@pytest.mark.parametrize("method", ["GET", "POST", "DELETE"])
def test_a_path_without_its_slash_is_redirected_308_with_its_query(
    server: EmulatorServer, http: httpx.Client, method: str
) -> None:
    answer = http.request(method, "runs/1/retry", params={"include_related": "trigger,job"})
    assert answer.status_code == 308
    assert answer.headers["location"] == f"{API}runs/1/retry/?include_related=trigger%2Cjob"
    assert server.emulator.requests[-1].status == 308
    assert problems(server) == [[f"{API}runs/1/retry lacks its trailing slash (answered 308 to {API}runs/1/retry/)"]]


def test_a_redirected_trigger_keeps_its_method_and_body(server: EmulatorServer, http: httpx.Client) -> None:
    answer = http.post("jobs/11/run", json={"cause": "through the 308"}, follow_redirects=True)
    assert answer.status_code == 200 and answer.json()["data"]["job_definition_id"] == 11
    assert [(r.method, r.path, r.status) for r in server.emulator.requests] == [
        ("POST", f"{API}jobs/11/run", 308),
        ("POST", f"{API}jobs/11/run/", 200),
    ]
    assert server.emulator.trigger_count[11] == 1


def test_an_artifact_path_is_not_redirected(server: EmulatorServer, http: httpx.Client) -> None:
    run = http.post("jobs/11/run/", json={"cause": "artifact"}).json()["data"]
    time.sleep(0.5)
    answer = http.get(f"runs/{run['id']}/artifacts/manifest.json")
    assert answer.status_code == 200 and "nodes" in answer.json()
    assert problems(server) == [[], []]


def test_nulls_for_optional_fields_are_absent_but_recorded(server: EmulatorServer, http: httpx.Client) -> None:
    body = {"cause": "cli", "git_branch": None, "azure_pull_request_id": None, "steps_override": None}
    answer = http.post("jobs/11/run/", json=body, params={"include_related": '["trigger"]'})
    assert answer.status_code == 200
    run = http.get(f"runs/{answer.json()['data']['id']}/", params={"include_related": "trigger"}).json()["data"]
    assert run["git_branch"] == "main" and "azure_pull_request_id" not in run["trigger"]
    recorded = problems(server)[0]
    assert any("azure_pull_request_id: None is not of type 'integer'" in p for p in recorded)
    assert any("git_branch" in p for p in recorded) and problems(server)[1] == []


def test_a_null_cause_is_still_refused(http: httpx.Client) -> None:
    answer = http.post("jobs/11/run/", json={"cause": None})
    assert answer.status_code == 400
    assert "'cause' is a required property" in str(answer.json()["data"])


def test_unknown_query_parameters_are_ignored_and_recorded(server: EmulatorServer, http: httpx.Client) -> None:
    answer = http.get("jobs/11/", params={"order_by": "id", "colour": "red"})
    assert answer.status_code == 200 and answer.json()["data"]["id"] == 11
    assert sorted(problems(server)[0]) == [
        f"query parameter 'colour' is not in the spec for GET {'/api/v2/accounts/{account_id}/jobs/{id}/'}",
        f"query parameter 'order_by' is not in the spec for GET {'/api/v2/accounts/{account_id}/jobs/{id}/'}",
    ]
    # A parameter of the spec with a value it cannot take is still a 400.
    assert http.get("runs/", params={"limit": "many"}).status_code == 400


@pytest.mark.parametrize(
    "params",
    [
        {"include_related": '["trigger", "run_steps"]'},
        {"include_related": "trigger, run_steps"},
        {"include_related": "trigger,run_steps"},
        {"include_related": "[trigger,run_steps]"},
        httpx.QueryParams([("include_related", "trigger"), ("include_related", "run_steps")]),
    ],
)
def test_include_related_is_read_in_every_form(
    server: EmulatorServer, http: httpx.Client, params: httpx.QueryParams | dict[str, str]
) -> None:
    run = http.post("jobs/11/run/", json={"cause": "forms"}).json()["data"]
    time.sleep(0.5)
    data = http.get(f"runs/{run['id']}/", params=params).json()["data"]
    assert data["trigger"]["cause"] == "forms"
    assert [step["index"] for step in data["run_steps"]] == [1, 2, 3, 4]
    assert problems(server) == [[], []]


def test_a_job_read_includes_related_objects(http: httpx.Client) -> None:
    plain = http.get("jobs/11/").json()["data"]
    assert "most_recent_run" not in plain
    first = http.post("jobs/11/run/", json={"cause": "first"}).json()["data"]
    time.sleep(0.5)
    second = http.post("jobs/11/run/", json={"cause": "second"}).json()["data"]
    job = http.get("jobs/11/", params={"include_related": "environment,most_recent_run,most_recent_completed_run"})
    data = job.json()["data"]
    assert data["environment"]["id"] == plain["environment_id"]
    assert data["most_recent_run"]["id"] == second["id"]
    assert data["most_recent_completed_run"]["id"] == first["id"]


def test_a_served_job_posted_back_unchanged_is_accepted(server: EmulatorServer, http: httpx.Client) -> None:
    job = http.get("jobs/11/").json()["data"]
    assert job["dbt_version"] is None and job["description"] == ""
    job["name"] = "renamed"
    answer = http.post("jobs/11/", json=job)
    assert answer.status_code == 200, answer.text
    assert answer.json()["data"]["name"] == "renamed" and answer.json()["data"]["created_at"] == job["created_at"]
    recorded = problems(server)[1]
    assert any("dbt_version" in p for p in recorded) and any("description" in p for p in recorded)


def test_the_href_names_the_address_the_client_reached(server: EmulatorServer, http: httpx.Client) -> None:
    run = http.post("jobs/11/run/", json={"cause": "href"}).json()["data"]
    assert run["href"].startswith(f"http://127.0.0.1:{server.port}/deploy/{ACCOUNT}/projects/1/runs/")
    relayed = http.get(
        f"runs/{run['id']}/", headers={"Host": "dbt.example.test:8443", "X-Forwarded-Proto": "https"}
    ).json()["data"]
    assert relayed["href"] == f"https://dbt.example.test:8443/deploy/{ACCOUNT}/projects/1/runs/{run['id']}/"
