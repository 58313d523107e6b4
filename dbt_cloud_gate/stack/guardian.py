"""The stack's guardian: when the stack process dies without stopping its services (SIGKILL, the OOM killer), a
small process of its own stops every process the stack started, so that nothing is left running.

The stack cannot do it itself once killed, and its children live in sessions of their own (a terminal's Ctrl-C
must not reach them), so nothing else would: a Prefect server and receiver holding their ports, a worker still
starting flow runs. Every process the stack starts, and every process those start (the server's uvicorn, the
worker's flow runs), inherits :data:`MARKER` in its environment, unique to one start of the stack. The guardian
holds the read end of a pipe whose only write end is the stack's: end of file without a ``stop`` line means the
stack is gone; it then stops (SIGTERM, then SIGKILL after 5 s) every process whose environment carries the marker,
until none is left, and removes the stack's ``stack.json`` (if it still names the dead stack). It also holds the
stack's lock file open until then, so that no new stack starts on the same state while it sweeps. A stack that
stops normally writes ``stop`` last (its own shutdown stopped everything) and waits for the guardian to exit. What
it does goes to ``STATE/guardian.log``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

from dbt_cloud_gate.stack.processes import ProcessId, alive, holds_environment, start_time, stop_processes

__all__ = ["MARKER", "Guardian", "marked_processes"]

# The environment variable every process of one stack start carries: "<state folder>#<stack PID>".
MARKER = "DBT_CLOUD_GATE_STACK"
# How long the guardian keeps sweeping for processes started while it stopped the others (a worker's last run).
SWEEP_SECONDS = 20.0


def marked_processes(marker: str) -> set[ProcessId]:
    """Live processes (other than this one) whose environment holds ``MARKER=marker``."""
    found: set[ProcessId] = set()
    for proc in Path("/proc").glob("[0-9]*"):
        pid = int(proc.name)
        if pid == os.getpid() or not holds_environment(pid, MARKER, marker):
            continue
        started = start_time(pid)
        if started is not None and alive((pid, started)):
            found.add((pid, started))
    return found


def sweep(marker: str, timeout: float = SWEEP_SECONDS) -> int:
    """Stop every process carrying ``marker`` until none is left or ``timeout`` passes; returns how many were
    stopped."""
    stopped: set[ProcessId] = set()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = marked_processes(marker)
        if not found:
            break
        stopped |= found
        stop_processes(found)
        time.sleep(0.2)
    return len(stopped)


class Guardian:
    """The stack's side: starts the guardian process and, on a normal stop, tells it to quit."""

    def __init__(self, state: Path, lock_fd: int | None = None) -> None:
        self.marker = f"{state}#{os.getpid()}"
        self.state = state
        self.lock_fd = lock_fd
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Guardian:
        """Mark this process's environment (children inherit it) and start the guardian in a session of its own."""
        os.environ[MARKER] = self.marker
        env = {key: value for key, value in os.environ.items() if key != MARKER}
        with (self.state / "guardian.log").open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "dbt_cloud_gate.stack.guardian"],
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                pass_fds=() if self.lock_fd is None else (self.lock_fd,),  # the stack's lock, held until its sweep ends
            )
        stdin = self.process.stdin
        assert stdin is not None
        stdin.write(f"{self.marker}\n{self.state / 'stack.json'}\n".encode())
        stdin.flush()
        return self

    def stop(self) -> None:
        """The stack stopped its services itself: the guardian quits without a sweep."""
        if os.environ.get(MARKER) == self.marker:
            del os.environ[MARKER]
        if self.process is None or self.process.stdin is None:
            return
        try:
            self.process.stdin.write(b"stop\n")
            self.process.stdin.close()
        except OSError:  # it died: nothing to tell
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None

    def __enter__(self) -> Guardian:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def _say(message: str) -> None:
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}", flush=True)


def _unlink_if_ours(info_file: Path, stack_pid: str) -> None:
    """Remove the stack's info file, unless it names another stack (one started meanwhile)."""
    try:
        pid = json.loads(info_file.read_text()).get("pid")
    except (OSError, ValueError, AttributeError):
        pid = None
    if pid is None or str(pid) == stack_pid:
        info_file.unlink(missing_ok=True)


def watch(source: IO[bytes]) -> int:
    """The guardian's side: read the marker and the stack's info file, wait for ``stop`` or end of file."""
    marker = source.readline().decode().strip()
    info_file = Path(source.readline().decode().strip())
    if not marker:
        return 2
    while True:
        line = source.readline()
        if line.strip() == b"stop":
            return 0
        if not line:  # end of file without a stop: the stack died
            _say(f"The stack {marker} ended without stopping its processes: stopping them.")
            stopped = sweep(marker)
            _say(f"Stopped {stopped} process(es); nothing of that stack runs any more.")
            _unlink_if_ours(info_file, marker.rsplit("#", 1)[-1])  # last: its absence says the guardian is done
            return 0


def main() -> int:
    """Entry point of the guardian process (started by :class:`Guardian`; not for users)."""
    for stop in (signal.SIGINT, signal.SIGHUP):  # only the stack's end decides
        signal.signal(stop, signal.SIG_IGN)
    return watch(sys.stdin.buffer)


if __name__ == "__main__":
    raise SystemExit(main())
