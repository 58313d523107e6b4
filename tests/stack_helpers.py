"""Helpers of the tests that run ``python -m dbt_cloud_gate.stack`` as a user does (tests/test_stack*.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.settings import PREFECT_API_URL, temporary_settings

from dbt_cloud_gate.stack.services import ROOT, alive, descendants, fakesnow_connector
from tests.prefect_db import seed_prefect_home

START_TIMEOUT = 240.0


class RunningStack:
    """A ``python -m dbt_cloud_gate.stack`` process (its environment: ours and ``env``) and what it wrote to
    STATE/stack.json once ready. Its Prefect server starts on a copy of a migrated database unless ``fresh``."""

    def __init__(self, state: Path, port: int = 0, env: dict[str, str] | None = None, fresh: bool = False) -> None:
        self.state = state
        if not fresh:  # the Prefect server's database: a copy of a migrated one (tests/prefect_db.py)
            seed_prefect_home(state / "prefect")
        self.output = state.parent / f"{state.name}-console.log"
        with self.output.open("ab") as sink:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "dbt_cloud_gate.stack", "--state-dir", str(state), "--port", str(port)],
                cwd=ROOT,
                stdout=sink,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **(env or {})},
            )
        deadline = time.monotonic() + START_TIMEOUT
        while not (state / "stack.json").exists():
            assert self.process.poll() is None, self.console()
            assert time.monotonic() < deadline, f"the stack did not start in {START_TIMEOUT} s:\n{self.console()}"
            time.sleep(0.5)
        self.info: dict[str, Any] = json.loads((state / "stack.json").read_text())

    def console(self) -> str:
        return self.output.read_text(errors="replace")[-6000:]

    @contextmanager
    def client(self) -> Iterator[SyncPrefectClient]:
        with temporary_settings({PREFECT_API_URL: self.info["api_url"]}), get_client(sync_client=True) as client:
            yield client

    def stop(self, signum: int) -> list[tuple[int, int]]:
        """Send ``signum``, wait for the exit; returns the processes of the stack that still run (none expected)."""
        tree = descendants(self.process.pid)
        self.process.send_signal(signum)
        code = self.process.wait(timeout=90)
        assert code == 0, self.console()
        assert "Stopped" in self.console()
        assert not (self.state / "stack.json").exists()
        return [p for p in tree if alive(p)] + processes_using(self.state)


def processes_using(state: Path) -> list[tuple[int, int]]:
    """Live processes whose environment or command line names the state folder (started after any snapshot)."""
    needle = str(state).encode()
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        if int(proc.name) == os.getpid():
            continue
        try:
            if needle in (proc / "environ").read_bytes() or needle in (proc / "cmdline").read_bytes():
                found.append((int(proc.name), 0))
        except OSError:
            continue
    return found


def wait_state(client: SyncPrefectClient, flow_run_id: Any, accept: set[str], timeout: float = 180) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        flow_run = client.read_flow_run(flow_run_id)
        if flow_run.state is not None and flow_run.state.type.value in accept:
            return flow_run
        assert time.monotonic() < deadline, f"flow run still {flow_run.state}"
        time.sleep(0.3)


def child(stack: RunningStack, marker: bytes) -> tuple[int, int]:
    """The stack's child process whose command line holds ``marker`` (b"worker\\x00start", b"server\\x00start")."""
    (found,) = [p for p in descendants(stack.process.pid)[1:] if marker in Path(f"/proc/{p[0]}/cmdline").read_bytes()]
    return found


def wait_console(stack: RunningStack, text: str, count: int = 1, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while stack.console().count(text) < count:
        assert stack.process.poll() is None and time.monotonic() < deadline, stack.console()
        time.sleep(0.3)


def rows(info: dict[str, Any], statement: str) -> list[tuple[Any, ...]]:
    with fakesnow_connector(info["snowflake"]).get_connection() as connection:
        cursor = connection.cursor()
        cursor.execute(statement)
        return list(cursor.fetchall())
