"""Conformance: dbt-cloud-cli (data-mie, 0.9.1), a dbt Cloud client nobody here wrote, drives the emulator.

The CLI speaks https only: the emulator serves TLS with a certificate from a local authority (trustme), which the
CLI's ``requests`` trusts through ``REQUESTS_CA_BUNDLE``. The CLI runs in-process (click's runner), over real
sockets. It asks for paths without their trailing slash and sends JSON nulls for every option left unset, as it does
against dbt Cloud: each test checks the answer, and that the emulator recorded those departures from the spec while
answering as dbt Cloud does.
"""

from __future__ import annotations

import inspect
import json
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

trustme = pytest.importorskip("trustme", reason="the [dev] extra's trustme makes the test certificate")
cli_module = pytest.importorskip("dbt_cloud.cli", reason="the [dev] extra's dbt-cloud-cli is the client under test")

from click.testing import CliRunner, Result  # noqa: E402

from dbt_cloud_gate.dbtcloud_api.emulator import Emulator, EmulatorServer, JobSpec, StepSpec  # noqa: E402
from dbt_cloud_gate.dbtcloud_api.openapi import SpecValidator  # noqa: E402
from tests.conftest import ACCOUNT, TOKEN  # noqa: E402

INSTANT: dict[str, Any] = {"queue_seconds": 0, "start_seconds": 0, "run_seconds": 0}
Cli = Callable[..., Result]


def cli_jobs() -> list[JobSpec]:
    """Runs that end the moment they are triggered (``--wait`` sees the end on its first look, with no 5 s nap)."""
    steps = [StepSpec("dbt seed", models=["raw_orders"]), StepSpec("dbt run"), StepSpec("dbt test")]
    return [
        JobSpec(id=1, name="Nightly build", **INSTANT),
        JobSpec(id=2, name="Failing build", outcome="error", **INSTANT),
        JobSpec(id=3, name="Cancelled by dbt Cloud", outcome="cancelled", **INSTANT),
        JobSpec(id=4, name="Long build", project_id=2, queue_seconds=0, start_seconds=0, run_seconds=600),
        JobSpec(id=5, name="Seed, run, test", steps=steps, **INSTANT),
        JobSpec(id=6, name="Many runs", project_id=3, history_seconds=[1.0] * 130, **INSTANT),
    ]


@pytest.fixture(scope="module")
def authority(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, Path]:
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    bundle = tmp_path_factory.mktemp("tls") / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    return context, bundle


@pytest.fixture
def server(spec_validator: SpecValidator, authority: tuple[ssl.SSLContext, Path]) -> Iterator[EmulatorServer]:
    emulator = Emulator(cli_jobs(), account_id=ACCOUNT, token=TOKEN, validator=spec_validator)
    with EmulatorServer(emulator, ssl_context=authority[0]) as running:
        yield running


@pytest.fixture
def cli(server: EmulatorServer, authority: tuple[ssl.SSLContext, Path]) -> Cli:
    env = {
        "DBT_CLOUD_HOST": f"127.0.0.1:{server.port}",
        "DBT_CLOUD_API_TOKEN": TOKEN,
        "DBT_CLOUD_ACCOUNT_ID": str(ACCOUNT),
        "REQUESTS_CA_BUNDLE": str(authority[1]),
        "LOG_LEVEL": "WARNING",
    }
    # Click before 8.2 (under Prefect's floor) mixes stderr, where the CLI reports progress, into stdout.
    separate = {"mix_stderr": False} if "mix_stderr" in inspect.signature(CliRunner).parameters else {}
    runner = CliRunner(**separate)

    def invoke(*args: str) -> Result:
        return runner.invoke(cli_module.dbt_cloud, list(args), env=env, catch_exceptions=False)

    return invoke


def answer(result: Result) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def departures(server: EmulatorServer) -> list[str]:
    return [problem for request in server.emulator.requests for problem in request.spec_problems]


def test_the_emulator_serves_https_and_names_it_in_href(server: EmulatorServer, cli: Cli) -> None:
    assert server.url.startswith("https://127.0.0.1:")
    run = answer(cli("job", "run", "--job-id", "1"))["data"]
    assert run["href"] == f"{server.url}/deploy/{ACCOUNT}/projects/1/runs/{run['id']}/"


def test_job_get_and_list(server: EmulatorServer, cli: Cli) -> None:
    job = answer(cli("job", "get", "--job-id", "4", "--include-related", "environment"))["data"]
    assert (job["id"], job["name"], job["project_id"]) == (4, "Long build", 2)
    assert job["environment"]["id"] == job["environment_id"]
    listed = answer(cli("job", "list", "--order-by", "-id", "--limit", "3"))
    assert [j["id"] for j in listed["data"]] == [6, 5, 4]
    assert listed["extra"]["pagination"] == {"count": 3, "total_count": 6}
    assert [j["id"] for j in answer(cli("job", "list", "--project-id", "2"))["data"]] == [4]
    # The CLI leaves the trailing slash off: each request was redirected (308), and that is recorded.
    assert sum("lacks its trailing slash" in p for p in departures(server)) == 3


def test_job_run_with_overrides(server: EmulatorServer, cli: Cli) -> None:
    result = cli(
        "job", "run", "--job-id", "1", "--cause", "from the cli", "--git-branch", "feature/x",
        "--threads-override", "8", "--steps-override", "['dbt run --select orders']",
    )  # fmt: skip
    run = answer(result)["data"]
    assert run["job_definition_id"] == 1 and run["git_branch"] == "feature/x"
    record = server.emulator.runs[run["id"]]
    assert record.cause == "from the cli" and record.steps == ["dbt run --select orders"]
    assert record.overrides["threads_override"] == 8 and "azure_pull_request_id" not in record.overrides
    # The nulls the CLI sends for unset overrides are taken as absent (dbt Cloud does) and recorded as departures.
    assert any("azure_pull_request_id: None is not of type 'integer'" in p for p in departures(server))


@pytest.mark.parametrize(("job_id", "code", "status"), [(1, 0, 10), (2, 1, 20), (3, 1, 30)])
def test_job_run_wait_exit_codes(cli: Cli, job_id: int, code: int, status: int) -> None:
    result = cli("job", "run", "--job-id", str(job_id), "--wait")
    assert result.exit_code == code, result.output
    run = json.loads(result.stdout)["data"]
    assert run["status"] == status and run["job_definition_id"] == job_id
    if code:
        assert f"Job run failed with {'ERROR' if status == 20 else 'CANCELLED'} status" in result.stderr


def test_run_get_with_related_objects(cli: Cli) -> None:
    started = answer(cli("job", "run", "--job-id", "5", "--cause", "related"))["data"]
    args = ("run", "get", "--run-id", str(started["id"]), "--include-related", "trigger")
    run = answer(cli(*args, "--include-related", "run_steps"))["data"]  # sent as ["trigger", "run_steps"]
    assert run["trigger"]["cause"] == "related"
    assert [step["name"] for step in run["run_steps"]][-3:] == [
        "Invoke dbt with `dbt seed`",
        "Invoke dbt with `dbt run`",
        "Invoke dbt with `dbt test`",
    ]


def test_run_list_with_filters_and_paginate(cli: Cli) -> None:
    ok = answer(cli("job", "run", "--job-id", "1"))["data"]
    failed = answer(cli("job", "run", "--job-id", "2"))["data"]
    listed = answer(cli("run", "list", "--status", "Failed", "--order-by", "-id"))["data"]
    assert [run["id"] for run in listed] == [failed["id"]]
    listed = answer(cli("run", "list", "--job-id", "1", "--limit", "5"))["data"]
    assert [run["id"] for run in listed] == [ok["id"]]
    first_page = answer(cli("run", "list", "--project-id", "3"))
    assert len(first_page["data"]) == 100 and first_page["extra"]["pagination"]["total_count"] == 130
    every = answer(cli("run", "list", "--project-id", "3", "--paginate"))["data"]
    assert len(every) == 130 and len({run["id"] for run in every}) == 130
    assert {run["job_definition_id"] for run in every} == {6}


def test_run_cancel(server: EmulatorServer, cli: Cli) -> None:
    running = answer(cli("job", "run", "--job-id", "4"))["data"]
    cancelled = answer(cli("run", "cancel", "--run-id", str(running["id"])))["data"]
    assert cancelled["status"] == 30 and cancelled["is_cancelled"] is True
    assert answer(cli("run", "get", "--run-id", str(running["id"])))["data"]["status_humanized"] == "Cancelled"


def test_run_artifacts_by_step(cli: Cli) -> None:
    run_id = str(answer(cli("job", "run", "--job-id", "5"))["data"]["id"])
    assert answer(cli("run", "list-artifacts", "--run-id", run_id))["data"] == ["manifest.json", "run_results.json"]
    last = answer(cli("run", "get-artifact", "--run-id", run_id, "--path", "run_results.json"))
    assert last["args"]["which"] == "test"
    seeded = answer(cli("run", "get-artifact", "--run-id", run_id, "--path", "run_results.json", "--step", "4"))
    assert [r["unique_id"] for r in seeded["results"]] == ["model.analytics.raw_orders"]
    built = answer(cli("run", "get-artifact", "--run-id", run_id, "--path", "run_results.json", "--step", "5"))
    assert [r["unique_id"] for r in built["results"]] == ["model.analytics.stg_orders", "model.analytics.orders"]
    manifest = answer(cli("run", "get-artifact", "--run-id", run_id, "--path", "manifest.json"))
    assert "source.analytics.raw.orders" in manifest["sources"]


def test_freshness_and_docs_checkboxes(server: EmulatorServer, cli: Cli) -> None:
    # An error-stale source errs the "Run source freshness" step, not the run: `--wait` exits 0, as on dbt Cloud.
    server.emulator.set_job(1, run_generate_sources=True, generate_docs=True, stale_sources={"orders": "error"})
    run = answer(cli("job", "run", "--job-id", "1", "--wait"))["data"]
    assert run["status"] == 10 and run["has_sources_generated"] and run["has_docs_generated"]
    run_id = str(run["id"])
    listed = answer(cli("run", "list-artifacts", "--run-id", run_id))["data"]
    assert listed == ["catalog.json", "manifest.json", "run_results.json", "sources.json"]
    sources = answer(cli("run", "get-artifact", "--run-id", run_id, "--path", "sources.json", "--step", "4"))
    assert [(r["unique_id"], r["status"]) for r in sources["results"]] == [("source.analytics.raw.orders", "error")]
    catalog = answer(cli("run", "get-artifact", "--run-id", run_id, "--path", "catalog.json"))
    assert set(catalog["nodes"]) == {"model.analytics.stg_orders", "model.analytics.orders"}
    steps = answer(cli("run", "get", "--run-id", run_id, "--include-related", "run_steps"))["data"]["run_steps"]
    assert [(s["name"], s["status"]) for s in steps][3:] == [
        ("Invoke dbt with `dbt source freshness`", 20),
        ("Invoke dbt with `dbt build`", 10),
        ("Invoke dbt with `dbt docs generate`", 10),
    ]


def test_job_create_export_import_delete(server: EmulatorServer, cli: Cli, tmp_path: Path) -> None:
    created = answer(
        cli(
            "job", "create", "--project-id", "1", "--environment-id", "1", "--name", "Made by the CLI",
            "--execute-steps", "['dbt build --select orders']", "--schedule-cron", "0 5 * * *",
        )
    )["data"]  # fmt: skip
    assert created["id"] == 7 and created["execute_steps"] == ["dbt build --select orders"]
    assert created["schedule"]["cron"] == "0 5 * * *" and created["state"] == 1
    exported = tmp_path / "job.json"
    assert cli("job", "export", "--job-id", "7", "--file", str(exported)).exit_code == 0
    assert "id" not in json.loads(exported.read_text())
    imported = answer(cli("job", "import", "--file", str(exported)))["data"]
    assert imported["id"] == 8 and imported["name"] == "Made by the CLI"
    assert imported["execute_steps"] == created["execute_steps"]
    # The spec says 204 and no body; dbt Cloud answers 200 with the job, now state 2 (the CLI prints it).
    deleted = answer(cli("job", "delete", "--job-id", "7"))["data"]
    assert deleted["id"] == 7 and deleted["state"] == 2
    assert [job["id"] for job in answer(cli("job", "list"))["data"]] == [1, 2, 3, 4, 5, 6, 8]
    assert server.emulator.job_objects[7]["state"] == 2
