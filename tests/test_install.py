"""The distribution as a user installs it: one top-level package, production dependencies only, and our flow called
as a subflow from a user project that has its own ``flows``, ``tasks``, ``blocks`` and ``stack`` packages."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import venv
import zipfile
from pathlib import Path

import pytest
from prefect.settings import PREFECT_API_URL

from dbt_cloud_gate.dbtcloud_api.emulator import EmulatorServer
from tests.conftest import ACCOUNT, TOKEN

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)],
        check=True,
        timeout=300,
    )
    (built,) = out.glob("dbt_cloud_gate-*.whl")
    return built


def test_the_wheel_holds_one_top_level_package_and_production_dependencies(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = next(archive.read(n).decode() for n in names if n.endswith(".dist-info/METADATA"))
        entry_points = next(archive.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")} == {"dbt_cloud_gate"}
    # The repository's flows/, tasks/ and blocks/ are installed inside the namespace, as real files.
    for module in ("flows/dbt_cloud.py", "tasks/start.py", "blocks/dbt_cloud.py", "dbtcloud_api/client.py"):
        assert f"dbt_cloud_gate/{module}" in names
    required = [line.split(":", 1)[1].strip() for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    production = [r for r in required if "extra ==" not in r]
    # The local stand-ins (fakesnow and its DuckDB/pyarrow, the emulator's spec validation) only with [local].
    for stand_in in ("fakesnow", "jsonschema", "PyYAML"):
        assert not [r for r in production if r.lower().startswith(stand_in.lower())], production
        assert [r for r in required if r.lower().startswith(stand_in.lower()) and 'extra == "local"' in r]
    assert "dbt_cloud_gate = dbt_cloud_gate.blocks" in entry_points


USER_FLOW = """
import sys

from prefect import flow

import blocks, stack, tasks
from dbt_cloud_gate import DbtCloudCredentials, WaitSettings, run_dbt_cloud_job
from tasks.mine import double


@flow
def my_pipeline(job_id: int, url: str) -> str:
    credentials = DbtCloudCredentials(account_id={account}, api_token="{token}", access_url=url)
    dbt = run_dbt_cloud_job(job_id, credentials, wait=WaitSettings(poll_interval_seconds=0.2))
    return f"{{dbt.status}} {{dbt.finished_at is not None}} {{double(2)}} {{blocks.MINE}} {{stack.MINE}} {{tasks.MINE}}"


if __name__ == "__main__":
    print(my_pipeline(int(sys.argv[1]), sys.argv[2]))
    import dbt_cloud_gate
    print("ours from", dbt_cloud_gate.__file__)
"""


def test_a_user_project_with_its_own_flows_tasks_blocks_and_stack_calls_our_flow(
    wheel: Path, tmp_path: Path, emulator: EmulatorServer
) -> None:
    env_dir = tmp_path / "venv"
    # The venv sees this machine's installed dependencies (no download here); our wheel goes into the venv itself.
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", site, str(wheel)],
        check=True,
        timeout=300,
    )
    assert sorted(p.name for p in Path(site).iterdir() if not p.name.endswith(".dist-info")) == ["dbt_cloud_gate"]

    project = tmp_path / "project"
    for package in ("flows", "tasks", "blocks", "stack"):
        (project / package).mkdir(parents=True)
        (project / package / "__init__.py").write_text(f"MINE = '{package}-of-the-user'\n")
    (project / "tasks" / "mine.py").write_text("def double(x: int) -> int:\n    return 2 * x\n")
    (project / "flows" / "pipeline.py").write_text(textwrap.dedent(USER_FLOW.format(account=ACCOUNT, token=TOKEN)))

    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PREFECT_API_URL"] = str(PREFECT_API_URL.value())
    done = subprocess.run(
        [str(python), "-m", "flows.pipeline", "11", emulator.url],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert "Success True 4 blocks-of-the-user stack-of-the-user tasks-of-the-user" in lines
    # Our package came from the venv's wheel, not from this checkout.
    assert lines[-1].startswith("ours from " + site), lines[-1]
    assert emulator.emulator.trigger_count[11] == 1
