"""Processes named by PID and start time, their trees read from /proc, and how the stack stops them (Linux).

Standard library only: the stack's guardian (:mod:`.guardian`) imports this and must start in a fraction of a
second.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

__all__ = [
    "ProcessId",
    "alive",
    "become_subreaper",
    "descendants",
    "holds_environment",
    "kill_process_tree",
    "start_time",
    "stop_orphans",
    "stop_process_tree",
    "stop_processes",
]

# prctl's option that makes a process adopt its descendants' orphans (linux/prctl.h).
PR_SET_CHILD_SUBREAPER = 36

# A process is named by its PID and its start time (field 22 of /proc/PID/stat), so that a PID reused after
# the process ended is never taken for it.
ProcessId = tuple[int, int]


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent PID, start time) of a live process, or None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[1]), int(fields[19])


def start_time(pid: int) -> int | None:
    """When process ``pid`` started (in clock ticks since boot), or None when there is no such process."""
    found = _stat(pid)
    return None if found is None else found[1]


def holds_environment(pid: int, name: str, value: str) -> bool:
    """Whether process ``pid`` started with ``name=value`` in its environment (False when it is gone, or not ours
    to read)."""
    try:
        return f"{name}={value}".encode() in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False


def descendants(pid: int) -> list[ProcessId]:
    """The process ``pid`` and every live descendant, walked through /proc."""
    children: dict[int, list[ProcessId]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        found = _stat(int(stat.parent.name))
        if found is not None:
            children.setdefault(found[0], []).append((int(stat.parent.name), found[1]))
    own = _stat(pid)
    if own is None:
        return []
    todo, tree = [(pid, own[1])], []
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current[0], []))
    return tree


def alive(process: ProcessId) -> bool:
    """Whether this very process (PID and start time) still runs (a zombie does not count)."""
    found = _stat(process[0])
    if found is None or found[1] != process[1]:
        return False
    try:
        state = Path(f"/proc/{process[0]}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _signal_all(processes: set[ProcessId], signum: int) -> None:
    for process in processes:
        if alive(process):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(process[0], signum)


def stop_process_tree(process: subprocess.Popen[Any], timeout: float = 30.0, signum: int = signal.SIGTERM) -> None:
    """Stop ``process`` with ``signum`` and, once it exits or ``timeout`` passes, every process it started.

    The tree is re-read while waiting, so children started during the shutdown are stopped too; what is
    still alive 5 s after a SIGTERM is killed."""
    tracked: set[ProcessId] = set(descendants(process.pid))
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signum)
        deadline = time.monotonic() + timeout
        while process.poll() is None and time.monotonic() < deadline:
            tracked.update(p for own in list(tracked) if alive(own) for p in descendants(own[0]))
            time.sleep(0.1)
    stop_processes({p for p in tracked if p[0] != process.pid})
    if process.poll() is None:
        process.kill()
    process.wait(timeout=30)


def become_subreaper() -> bool:
    """Make this process the one that adopts its descendants' orphans (Linux's PR_SET_CHILD_SUBREAPER), so that the
    flow-run processes of a worker that died stay below it and :func:`stop_orphans` can stop them; False where the
    system has no such call."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def stop_processes(processes: set[ProcessId], timeout: float = 5.0) -> None:
    """SIGTERM each of ``processes`` still alive, SIGKILL what is left after ``timeout``."""
    _signal_all(processes, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while any(alive(p) for p in processes) and time.monotonic() < deadline:
        time.sleep(0.1)
    _signal_all(processes, signal.SIGKILL)


def stop_orphans(timeout: float = 5.0, keep: subprocess.Popen[Any] | None = None) -> None:
    """Stop every process still below this one (but ``keep``) and reap them: what the services' own stop could not
    reach, such as the flow runs of a worker that died."""
    kept = {keep.pid} if keep is not None else set()
    stop_processes({p for p in descendants(os.getpid()) if p[0] != os.getpid() and p[0] not in kept}, timeout)
    with contextlib.suppress(ChildProcessError):
        while (pid := os.waitpid(-1, os.WNOHANG)[0]) > 0 and pid not in kept:
            pass


def kill_process_tree(process: subprocess.Popen[Any]) -> None:
    """SIGKILL ``process`` and every descendant at once: a crash, as when the machine dies.

    Each is frozen (SIGSTOP) before any is killed: else a process that outlives its child by a moment (Prefect's
    runner, a worker) could still report that child's death, which a machine that dies never does."""
    tree = set(descendants(process.pid))
    _signal_all(tree, signal.SIGSTOP)
    tree |= set(descendants(process.pid))  # started while the first ones were being frozen
    _signal_all(tree, signal.SIGSTOP)
    _signal_all(tree, signal.SIGKILL)
    process.wait(timeout=30)
