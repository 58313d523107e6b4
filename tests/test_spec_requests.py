"""Every request the client can send validates against the real OpenAPI spec."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from dbt_cloud_gate.dbtcloud_api import DbtCloudClient, Job, RunStatus
from dbt_cloud_gate.dbtcloud_api.openapi import SpecValidator
from tests.conftest import FIXTURES
from tests.test_client import ALL_OVERRIDES


def _built_requests() -> list[httpx.Request]:
    client = DbtCloudClient(1, "t0ken-for-spec", "https://cloud.getdbt.com")
    job_fixture = Job.model_validate(json.loads((FIXTURES / "job_get_response.json").read_text())["data"])
    calls: list[Any] = [
        client.trigger_call(7, "minimal", {}),
        client.trigger_call(7, "everything", ALL_OVERRIDES),
        client.get_run_call(5, ("run_steps", "job", "trigger"), None),
        client.get_run_call(5, (), None),
        client.list_runs_call(
            {
                "job_definition_id": 7,
                "status_in": [RunStatus.QUEUED, RunStatus.STARTING, RunStatus.RUNNING],
                "order_by": "-id",
                "include_related": ("trigger",),
            },
            100,
            200,
        ),
        client.list_runs_call({}, 1, 0),
        client.cancel_call(5),
        client.retry_call(5),
        client.list_artifacts_call(5),
        client.get_artifact_call(5, "run_results.json", None),
        client.get_artifact_call(5, "run/jaffle_shop/data/raw_orders.csv", 2),
        client.get_job_call(7),
        client.update_job_call(job_fixture),
    ]
    built = [client._http.build_request(**client._request(call)) for call in calls]
    client.close()
    return built


def _validate(validator: SpecValidator, request: httpx.Request) -> list[str]:
    split = urlsplit(str(request.url))
    body = json.loads(request.content) if request.content else None
    return validator.validate(request.method, split.path, parse_qs(split.query), body, has_body=bool(request.content))


def test_every_client_request_matches_the_spec(spec_validator: SpecValidator) -> None:
    requests = _built_requests()
    assert len(requests) == 13
    for request in requests:
        assert _validate(spec_validator, request) == [], f"{request.method} {request.url}"


def test_update_body_fills_what_an_older_job_object_lacks() -> None:
    requests = _built_requests()
    update = json.loads(requests[-1].content)
    for required in ("errors_on_lint_failure", "run_compare_changes", "run_lint", "settings", "triggers", "execution"):
        assert required in update
    assert "dbt_version" not in update  # null in the job: dropped, the spec does not allow null


@pytest.mark.parametrize(
    ("method", "path", "query", "body", "problem"),
    [
        ("POST", "/api/v2/accounts/1/jobs/2/run/", {}, {}, "'cause' is a required property"),
        ("POST", "/api/v2/accounts/1/jobs/2/run/", {}, {"cause": "c", "threads_override": "4"}, "not of type"),
        ("GET", "/api/v2/accounts/1/runs/", {"status__in": ["1,2"]}, None, "bracketed"),
        ("GET", "/api/v2/accounts/1/runs/", {"limits": ["1"]}, None, "not in the spec"),
        ("GET", "/api/v2/accounts/x/runs/", {}, None, "integer"),
        ("PUT", "/api/v2/accounts/1/runs/5/", {}, None, "not allowed"),
        ("GET", "/api/v3/accounts/1/runs/", {}, None, "no operation"),
    ],
)
def test_validator_catches_bad_requests(
    spec_validator: SpecValidator, method: str, path: str, query: dict[str, list[str]], body: Any, problem: str
) -> None:
    problems = spec_validator.validate(method, path, query, body, has_body=body is not None)
    assert any(problem in p for p in problems), problems
