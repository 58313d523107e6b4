"""``python -m flows.demo --webhooks`` as a user runs it: a temporary Prefect server, the emulator, the webhook
receiver and a subscription; the wait ends on the webhook, long before the safety-net poll."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from dbt_cloud_gate.stack.services import ROOT

pytestmark = pytest.mark.slow

LINE = re.compile(
    r"^webhooks: run_id=(?P<run>\d+) status=(?P<status>\w+) returned (?P<lag>-?[\d.]+) s after the run's end; "
    r"polled (?P<polls>\d+) time\(s\) \(safety net every 60 s\)$",
    re.MULTILINE,
)


def run_demo(*args: str) -> tuple[int, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_API")}
    done = subprocess.run(
        [sys.executable, "-m", "flows.demo", "--webhooks", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    return done.returncode, done.stdout + done.stderr


def test_the_demo_shows_a_wait_ended_by_the_webhook() -> None:
    # Job 101 only: each case costs a Prefect server start.
    returncode, output = run_demo()
    found = LINE.search(output)
    assert found is not None, output[-6000:]
    assert (returncode, found["status"]) == (0, "Success"), output[-6000:]
    # The safety net polls every 60 s: a return within seconds of the end, after one read, is the webhook's doing.
    assert 0 <= float(found["lag"]) < 10 and int(found["polls"]) == 1, found.group(0)
    assert "the poll after a wake-up saw it end" in output
    # The subscription was closed before the server stopped: no reconnect attempts to a stopped server.
    assert "reconnecting" not in output
