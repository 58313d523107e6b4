"""A migrated Prefect database to start test servers from.

A Prefect server on a new database first runs every migration: about 9 of the 15 CPU seconds, and 10 of the 17
wall seconds, of its start on 2 cores. The suite starts about fifteen servers (a test harness per xdist worker, the
e2e, receiver, waiter and stack tests' own), so each starts from a copy of one database migrated once per Prefect
version instead. A server on it still checks its migrations at start (all applied: nothing to do), so a copy that
does not match the installed Prefect is migrated as before, never used as it is. One test keeps a first start on a
new database, as a user's is: the stack test's first start.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import prefect

__all__ = ["migrated_database", "seed_prefect_home", "seeded_harness"]

_TIMEOUT_SECONDS = 180


def _template() -> Path:
    """Where the migrated database of this Prefect and this interpreter is kept (shared by the xdist workers)."""
    key = f"{prefect.__version__}-{hashlib.sha256(sys.executable.encode()).hexdigest()[:12]}"
    return Path(tempfile.gettempdir()) / f"dcg-prefect-db-{key}" / "prefect.db"


def migrated_database() -> Path:
    """The migrated database, built on first use (``prefect server database upgrade``) under a lock, so that
    concurrent workers build it once; a build that failed or was cut short leaves nothing behind."""
    template = _template()
    template.parent.mkdir(parents=True, exist_ok=True)
    with (template.parent / "lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not template.exists():
            building = template.with_name("building.db")
            building.unlink(missing_ok=True)
            url = f"sqlite+aiosqlite:///{building}"
            env = {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_")}
            env.update(
                PREFECT_HOME=str(template.parent / "home"),
                PREFECT_SERVER_ANALYTICS_ENABLED="false",
                PREFECT_API_DATABASE_CONNECTION_URL=url,  # Prefect before 3.2 reads this name
                PREFECT_SERVER_DATABASE_CONNECTION_URL=url,
            )
            subprocess.run(
                [sys.executable, "-m", "prefect", "server", "database", "upgrade", "-y"],
                env=env,
                check=True,
                capture_output=True,
                timeout=_TIMEOUT_SECONDS,
            )
            building.rename(template)
    return template


def _copy(source: Path, target: Path) -> None:
    """A consistent copy of SQLite database ``source`` (its write-ahead log included) at ``target``."""
    with contextlib.closing(sqlite3.connect(source)) as src, contextlib.closing(sqlite3.connect(target)) as dst:
        src.backup(dst)


def seed_prefect_home(home: Path) -> Path:
    """``home`` (a PREFECT_HOME for ``prefect server start``) with a copy of the migrated database as its
    ``prefect.db``, unless it has one already. Returns ``home``."""
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "prefect.db").exists():
        _copy(migrated_database(), home / "prefect.db")
    return home


@contextlib.contextmanager
def seeded_harness() -> Iterator[None]:
    """While entered, ``prefect_test_harness`` creates its database folder with a copy of the migrated database
    in it (the harness names its database ``prefect-test.db`` in a new ``mkdtemp()`` folder, Prefect 3.1 to 3.9)."""
    import prefect.testing.utilities as utilities

    template = migrated_database()
    original = utilities.mkdtemp  # type: ignore[attr-defined]

    def seeded_mkdtemp(*args: object, **kwargs: object) -> str:
        folder = original(*args, **kwargs)  # type: ignore[arg-type]
        _copy(template, Path(folder) / "prefect-test.db")
        return str(folder)

    utilities.mkdtemp = seeded_mkdtemp  # type: ignore[attr-defined]
    try:
        yield
    finally:
        utilities.mkdtemp = original  # type: ignore[attr-defined]
