"""Emulator behaviour that the client tests do not cover: admin endpoints, rate limit, jobs file, CLI."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from dbt_cloud_gate.dbtcloud_api import (
    DbtCloudClient,
    DbtCloudNotFoundError,
    DbtCloudRateLimitError,
    RetryPolicy,
    RunStatus,
)
from dbt_cloud_gate.dbtcloud_api.emulator import Emulator, EmulatorServer, Fault, JobSpec, StepSpec
from dbt_cloud_gate.dbtcloud_api.openapi import SpecValidator
from tests.conftest import ACCOUNT, FAST_RETRY, TOKEN


def test_admin_endpoints_add_faults_and_list_requests(emulator: EmulatorServer, client: DbtCloudClient) -> None:
    added = httpx.post(f"{emulator.url}/_emulator/faults", json={"kind": "5xx", "status": 503, "times": 1}, timeout=5)
    assert added.status_code == 200
    assert client.get_job(11).id == 11
    log = httpx.get(f"{emulator.url}/_emulator/requests", timeout=5).json()["data"]
    api = [r for r in log if r["path"].startswith("/api/")]
    assert [r["status"] for r in api] == [503, 200]
    assert all("Authorization" not in json.dumps(r) and TOKEN not in json.dumps(r) for r in log)
    bad = httpx.post(f"{emulator.url}/_emulator/faults", json={"kind": "5xx", "colour": "red"}, timeout=5)
    assert bad.status_code == 400 and "colour" in bad.json()["status"]["user_message"]
    changed = httpx.post(f"{emulator.url}/_emulator/jobs/11", json={"outcome": "error"}, timeout=5)
    assert changed.status_code == 200 and emulator.emulator.jobs[11].outcome == "error"
    assert httpx.delete(f"{emulator.url}/_emulator/faults", timeout=5).status_code == 200
    assert emulator.emulator.faults == []


def test_account_rate_limit_answers_429_with_retry_after() -> None:
    emulator = Emulator([JobSpec(id=1)], account_id=ACCOUNT, token=TOKEN, rate_limit_per_minute=3)
    with EmulatorServer(emulator) as server:
        policy = RetryPolicy(max_attempts=1)
        with DbtCloudClient(ACCOUNT, TOKEN, server.url, retry=policy) as c:
            for _ in range(3):
                c.get_job(1)
            with pytest.raises(DbtCloudRateLimitError) as info:
                c.get_job(1)
    assert info.value.retry_after is not None and 1 <= info.value.retry_after <= 60


def test_probability_faults_are_seeded_and_counted() -> None:
    emulator = Emulator([JobSpec(id=1)], account_id=ACCOUNT, token=TOKEN, seed=7)
    fault = emulator.add_fault(Fault(kind="5xx", probability=0.3))
    with EmulatorServer(emulator) as server, DbtCloudClient(ACCOUNT, TOKEN, server.url, retry=FAST_RETRY) as c:
        for _ in range(40):
            c.get_job(1)
    faulted = [r for r in emulator.requests if r.fault == "5xx"]
    assert 0 < len(faulted) == fault.hits < len(emulator.requests)
    assert sum(1 for r in emulator.requests if r.status == 200) == 40


def test_outcomes_cycle_and_history_runs_exist(client: DbtCloudClient) -> None:
    emulator = Emulator(
        [
            JobSpec(
                id=1,
                run_seconds=0.05,
                queue_seconds=0,
                start_seconds=0,
                outcomes=["error", "success"],
                history_seconds=[10.0, 12.0],
            )
        ],
        account_id=ACCOUNT,
        token=TOKEN,
    )
    with EmulatorServer(emulator) as server, DbtCloudClient(ACCOUNT, TOKEN, server.url, retry=FAST_RETRY) as c:
        history = c.list_runs(job_definition_id=1, status_in=[RunStatus.SUCCESS]).runs
        assert len(history) == 2
        durations = [(r.finished_at - r.started_at).total_seconds() for r in history if r.finished_at and r.started_at]
        assert durations == [10.0, 12.0]
        first = c.trigger_job_run(1, "a")
        second = c.trigger_job_run(1, "b")
        time.sleep(0.3)
        assert c.get_run(first.id).status is RunStatus.ERROR
        assert c.get_run(second.id).status is RunStatus.SUCCESS


def test_jobs_file_refuses_unknown_settings(tmp_path: Path) -> None:
    path = tmp_path / "jobs.json"
    path.write_text(json.dumps({"jobs": [{"id": 5, "run_seconds": 1, "durtion": 3}]}))
    with pytest.raises(ValueError, match="durtion"):
        Emulator.from_jobs_file(path)
    path.write_text(json.dumps({"jobs": [{"id": 5, "run_seconds": 1}]}))
    assert Emulator.from_jobs_file(path).jobs[5].run_seconds == 1


def test_command_line_starts_the_emulator(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.json"
    jobs.write_text(json.dumps([{"id": 77, "name": "cli job"}]))
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dbt_cloud_gate.dbtcloud_api.emulator",
            "--port",
            "0",
            "--jobs",
            str(jobs),
            "--token",
            "cli-token",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert "dbt Cloud emulator on http://127.0.0.1:" in line and "[77]" in line
        url = line.split(" on ")[1].split(" ")[0]
        with DbtCloudClient(1, "cli-token", url, retry=FAST_RETRY) as c:
            assert c.get_job(77).name == "cli job"
    finally:
        process.terminate()
        process.wait(timeout=10)


def multi_step_job(job_id: int = 21, **changes: object) -> JobSpec:
    """A job whose steps are `dbt seed`, `dbt run`, `dbt test`: the models' results are not in the last step."""
    settings: dict[str, object] = {
        "id": job_id,
        "queue_seconds": 0,
        "start_seconds": 0,
        "run_seconds": 0.1,
        "models": ["stg_orders", "orders"],
        "steps": [
            {"command": "dbt seed", "models": ["raw_orders"]},
            "dbt run",
            StepSpec("dbt test", tests=["not_null_orders_id", "unique_orders_id"]),
        ],
    }
    settings.update(changes)
    return JobSpec(**settings)  # type: ignore[arg-type]


def test_artifacts_are_served_per_step_and_default_to_the_last(spec_validator: SpecValidator) -> None:
    emulator = Emulator([multi_step_job()], account_id=ACCOUNT, token=TOKEN, validator=spec_validator)
    with EmulatorServer(emulator) as server, DbtCloudClient(ACCOUNT, TOKEN, server.url, retry=FAST_RETRY) as c:
        run = c.trigger_job_run(21, "multi-step")
        time.sleep(0.3)
        run = c.get_run(run.id)
        assert run.job is not None and run.job.execute_steps == ["dbt seed", "dbt run", "dbt test"]
        steps = {s.index: s.name for s in run.run_steps}
        assert steps[4] == "Invoke dbt with `dbt seed`" and steps[6] == "Invoke dbt with `dbt test`"
        assert run.model_steps() == [4, 5]

        def ids(step: int | None) -> list[str]:
            return [
                r["unique_id"] for r in json.loads(c.get_run_artifact(run.id, "run_results.json", step=step))["results"]
            ]

        # Without `step`, the last step's artifact: the tests, as dbt Cloud does.
        assert [i.rsplit(".", 1)[0] for i in ids(None)] == [
            "test.analytics.not_null_orders_id",
            "test.analytics.unique_orders_id",
        ]
        assert ids(6) == ids(None)
        assert ids(4) == ["model.analytics.raw_orders"]
        assert ids(5) == ["model.analytics.stg_orders", "model.analytics.orders"]
        for no_results in (1, 3):  # clone, `dbt deps`
            with pytest.raises(DbtCloudNotFoundError):
                c.get_run_artifact(run.id, "run_results.json", step=no_results)
        with pytest.raises(DbtCloudNotFoundError):
            c.get_run_artifact(run.id, "run_results.json", step=7)
    assert not [r.spec_problems for r in emulator.requests if r.spec_problems]


def test_a_failing_test_step_fails_its_test_and_the_run() -> None:
    emulator = Emulator([multi_step_job(outcome="error", failing_model="orders")], account_id=ACCOUNT, token=TOKEN)
    with EmulatorServer(emulator) as server, DbtCloudClient(ACCOUNT, TOKEN, server.url, retry=FAST_RETRY) as c:
        run = c.trigger_job_run(21, "failing tests")
        time.sleep(0.3)
        run = c.get_run(run.id)
        assert run.status is RunStatus.ERROR and run.failed_step is not None and run.failed_step.index == 6
        tests = json.loads(c.get_run_artifact(run.id, "run_results.json"))["results"]
        assert [t["status"] for t in tests] == ["fail", "fail"]
        models = json.loads(c.get_run_artifact(run.id, "run_results.json", step=5))["results"]
        assert [m["status"] for m in models] == ["success", "success"]


def test_jobs_file_describes_steps(tmp_path: Path) -> None:
    path = tmp_path / "jobs.json"
    path.write_text(json.dumps([{"id": 5, "steps": [{"command": "dbt run", "modles": ["x"]}]}]))
    with pytest.raises(ValueError, match="modles"):
        Emulator.from_jobs_file(path)
    path.write_text(json.dumps([{"id": 5, "steps": ["dbt deps", {"command": "dbt run", "models": ["x"]}]}]))
    job = Emulator.from_jobs_file(path).jobs[5]
    assert job.execute_steps == ["dbt deps", "dbt run"] and job.steps == [
        StepSpec("dbt deps"),
        StepSpec("dbt run", ["x"]),
    ]


_WITHOUT_MODULE = """
import json, sys
sys.modules[sys.argv[1]] = None  # as if the [local] extra were not installed
import dbt_cloud_gate.dbtcloud_api
loaded = sorted(m for m in ("yaml", "jsonschema", "referencing") if sys.modules.get(m) is not None)
loaded += sorted(m for m in sys.modules if m.startswith(("dbt_cloud_gate.dbtcloud_api.emulator", "dbt_cloud_gate.dbtcloud_api.openapi")))
errors = {}
for module in ("dbt_cloud_gate.dbtcloud_api.emulator", "dbt_cloud_gate.dbtcloud_api.openapi"):
    try:
        __import__(module)
    except ImportError as exc:
        errors[module] = [str(exc), exc.name]
print(json.dumps({"loaded": loaded, "errors": errors}))
"""


@pytest.mark.parametrize("missing", ["yaml", "jsonschema", "referencing"])
def test_without_the_local_extra_the_client_imports_and_the_emulator_says_what_to_install(missing: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _WITHOUT_MODULE, missing],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[1],
        check=True,
    )
    report = json.loads(done.stdout)
    assert report["loaded"] == []  # the client package needs none of the emulator's dependencies
    assert sorted(report["errors"]) == ["dbt_cloud_gate.dbtcloud_api.emulator", "dbt_cloud_gate.dbtcloud_api.openapi"]
    for message, name in report["errors"].values():
        assert name == missing
        assert repr(missing) in message
        assert "pip install 'dbt-cloud-gate[local]'" in message


_WITHOUT_FAKESNOW = """
import json, sys
sys.modules[sys.argv[1]] = None  # as if the [local] extra were not installed
from dbt_cloud_gate.stack.embedded import fakesnow_server
try:
    with fakesnow_server():
        pass
except ImportError as exc:
    print(json.dumps([str(exc), exc.name]))
"""


def test_without_the_local_extra_the_snowflake_stand_in_says_what_to_install() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _WITHOUT_FAKESNOW, "fakesnow"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[1],
        check=True,
    )
    message, name = json.loads(done.stdout)
    assert name == "fakesnow"
    assert "'fakesnow'" in message and "fakesnow[server]" in message
    assert "pip install 'dbt-cloud-gate[local]'" in message


def test_the_emulator_modules_import_no_loop() -> None:
    """state and webhooks once imported each other; no emulator module may import one that imports it back."""
    package = Path(__file__).resolve().parents[1] / "dbt_cloud_gate" / "dbtcloud_api" / "emulator"
    prefix = "dbt_cloud_gate.dbtcloud_api.emulator"
    graph: dict[str, set[str]] = {}
    for source in package.glob("*.py"):
        imported: set[str] = set()
        for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):  # TYPE_CHECKING imports count too
            if isinstance(node, ast.ImportFrom) and node.module == prefix:
                imported.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(prefix + "."):
                imported.add((node.module or "").rsplit(".", 1)[1])
        graph[source.stem] = imported & {path.stem for path in package.glob("*.py")} - {"__init__"}

    def reaches(start: str, target: str, seen: set[str]) -> bool:
        return any(
            after == target or (after not in seen and reaches(after, target, seen | {after})) for after in graph[start]
        )

    assert graph["state"] and "webhooks" in graph["routes"]  # the graph was read
    assert [name for name in graph if name != "__init__" and reaches(name, name, set())] == []
