"""The README's first command, ``python -m flows.demo``, as a newcomer runs it: a success says so on one line with no
warning on the console; a failure ends with its one-line verdict and a hint, its tracebacks behind ``--verbose``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dbt_cloud_gate.stack.services import ROOT

# Slow: a subprocess each. They run on the session's test server (the demo uses the server its profile names), not
# on a temporary server of their own: that start would cost 20-30 s of CPU each.
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]


def demo(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    from prefect.settings import PREFECT_API_URL

    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "DBT_CLOUD_"))}
    return subprocess.run(
        [sys.executable, "-m", "flows.demo", "--data-dir", str(tmp_path / "fakesnow"), *args],
        cwd=ROOT,
        env={**env, "PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_API_URL": str(PREFECT_API_URL.value())},
        capture_output=True,
        text=True,
        timeout=240,
        stdin=subprocess.DEVNULL,
    )


def test_a_successful_demo_prints_its_result_and_no_warning(tmp_path: Path) -> None:
    done = demo(tmp_path)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert "status=Success" in done.stdout and "rows_loaded: orders=3 customers=3" in done.stdout
    noise = [line for line in output.splitlines() if "WARNING" in line or "Warning" in line or "Session login" in line]
    assert not noise, noise


def test_a_failed_demo_ends_with_its_verdict_and_a_hint_and_hides_tracebacks(tmp_path: Path) -> None:
    done = demo(tmp_path, "--job-id", "102")
    output = done.stdout + done.stderr
    assert done.returncode == 1, output[-4000:]
    assert "Traceback" not in output and len(output.splitlines()) < 40, output
    verdict, hint = done.stdout.strip().splitlines()[-2:]
    assert verdict.startswith("run_id=") and "status=Error" in verdict and "(nothing loaded)" in verdict
    assert "--verbose" in hint


def test_real_mode_never_loads_the_demo_targets_into_a_real_account(capsys: pytest.CaptureFixture[str]) -> None:
    from dbt_cloud_gate.flows.demo import main

    with pytest.raises(SystemExit) as exited:
        main(["--real", "--snowflake", "prod-snowflake", "--job-id", "12345"])
    assert exited.value.code == 2 and "--real needs --targets FILE" in capsys.readouterr().err
