"""The stack's guardian with real processes: a stack killed with SIGKILL leaves nothing running (its children and
their children, each in a session of its own, are stopped and its stack.json removed); a stack that stops normally
tells the guardian, which quits at once and touches nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from dbt_cloud_gate.stack.guardian import MARKER, _unlink_if_ours, marked_processes
from dbt_cloud_gate.stack.services import ROOT, alive, descendants

# A stand-in for the stack: a guardian, then a child in a session of its own that starts a grandchild (a server
# and its uvicorn, a worker and its flow run), then waits to be killed or told to stop normally.
FAKE_STACK = textwrap.dedent(
    """
    import subprocess, sys, time
    from pathlib import Path
    from dbt_cloud_gate.stack.guardian import Guardian
    state = Path(sys.argv[1])
    (state / "stack.json").write_text("{}")
    guardian = Guardian(state).start()
    grandchild = "import subprocess, time; subprocess.Popen(['sleep', '300']); time.sleep(300)"
    child = subprocess.Popen([sys.executable, "-c", grandchild], start_new_session=True)
    print(child.pid, flush=True)
    if sys.stdin.readline().strip() == "normal stop":
        guardian.stop()
        print("guardian", guardian.process, flush=True)
        time.sleep(300)
    """
)


def start_fake_stack(state: Path) -> tuple[subprocess.Popen[str], int]:
    stack = subprocess.Popen(
        [sys.executable, "-c", FAKE_STACK, str(state)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert stack.stdout is not None
    child = int(stack.stdout.readline())
    deadline = time.monotonic() + 20
    while len(descendants(child)) < 2:  # the grandchild is up
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return stack, child


def marker_of(pid: int) -> str:
    entries = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    [entry] = [e for e in entries if e.startswith(f"{MARKER}=".encode())]
    return entry.decode().split("=", 1)[1]


def test_a_killed_stack_leaves_nothing_running(tmp_path: Path) -> None:
    stack, child = start_fake_stack(tmp_path)
    tree = descendants(child)
    marker = marker_of(child)
    assert marker == f"{tmp_path}#{stack.pid}" and set(tree) <= marked_processes(marker)
    os.kill(stack.pid, signal.SIGKILL)
    stack.wait(timeout=10)
    deadline = time.monotonic() + 30
    while any(alive(p) for p in tree) or (tmp_path / "stack.json").exists():  # the file goes after the sweep
        assert time.monotonic() < deadline, "the killed stack's processes still run, or its stack.json is left"
        time.sleep(0.1)
    assert not marked_processes(marker)


def test_a_normal_stop_tells_the_guardian_which_quits_and_touches_nothing(tmp_path: Path) -> None:
    stack, child = start_fake_stack(tmp_path)
    tree = descendants(child)
    try:
        assert stack.stdin is not None and stack.stdout is not None
        stack.stdin.write("normal stop\n")
        stack.stdin.flush()
        assert stack.stdout.readline().strip() == "guardian None"  # it exited within Guardian.stop
        time.sleep(1)
        assert all(alive(p) for p in tree) and (tmp_path / "stack.json").exists()
    finally:
        for pid, _ in tree:
            os.kill(pid, signal.SIGKILL)
        stack.kill()
        stack.wait(timeout=10)


def test_the_sweep_removes_the_dead_stacks_info_file_but_not_a_newer_stacks(tmp_path: Path) -> None:
    info = tmp_path / "stack.json"
    info.write_text('{"pid": 4242}')
    _unlink_if_ours(info, "1234")  # a stack started meanwhile on the same state wrote it
    assert info.exists()
    _unlink_if_ours(info, "4242")
    assert not info.exists()
