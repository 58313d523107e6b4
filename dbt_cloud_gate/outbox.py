"""The webhook receiver's durable outbox: a delivery is answered 2xx only once its event is a row here.

One SQLite file (stdlib ``sqlite3``), run on one thread of its own so that the event loop never waits on a disk::

    outbox(event_id TEXT PRIMARY KEY,   the Prefect event ID, uuid5(dbt eventId): a redelivery is the same row
           event TEXT,                  the event as Prefect's JSON
           received_at REAL,            unix time the receiver wrote it (the outbox's age comes from it)
           confirmed_at REAL NULL)      set once Prefect showed it stored; NULL while the event waits

Durability: WAL journal with ``synchronous=FULL``, so every commit fsyncs the WAL before the delivery is answered.
``NORMAL`` would survive a killed receiver just as well, but a power cut or kernel crash could drop the last commits,
and dbt Cloud never retries a delivery it got a 2xx for: an fsync per delivery (about a millisecond; deliveries
come one per run event) is the price of not losing one. A confirmed row stays as a tombstone for
``dedupe_seconds`` (one hour by default: dbt Cloud's five retries are done well within it), so that a late
redelivery makes no second event even after a restart; the in-memory cache in the receiver only saves the disk for
the common quick duplicate.

A full disk, a file over ``max_bytes`` (``SQLITE_FULL``), a lock held too long by another process or a damaged file
raise ``sqlite3.Error`` from :meth:`Outbox.put`: the receiver answers 503 and dbt Cloud retries.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

from prefect.events import Event

__all__ = [
    "OUTBOX_ENV",
    "Outbox",
    "OutboxError",
    "OutboxStats",
    "PendingEvent",
    "default_outbox_path",
]

OUTBOX_ENV = "DBT_CLOUD_GATE_OUTBOX"
DEFAULT_MAX_BYTES = 1024**3  # a Prefect outage of weeks at dbt Cloud's pace fits; a runaway one cannot fill a disk
T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    event_id TEXT PRIMARY KEY,
    event TEXT NOT NULL,
    received_at REAL NOT NULL,
    confirmed_at REAL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (received_at) WHERE confirmed_at IS NULL;
CREATE INDEX IF NOT EXISTS outbox_confirmed ON outbox (confirmed_at) WHERE confirmed_at IS NOT NULL;
"""


class OutboxError(RuntimeError):
    """The outbox cannot be opened: its folder cannot be made, the file is not an outbox, or another receiver
    holds it."""


def default_outbox_path(environ: Mapping[str, str] | None = None) -> Path:
    """``$DBT_CLOUD_GATE_OUTBOX``, else ``$XDG_STATE_HOME/dbt-cloud-gate/receiver-outbox.sqlite3`` (XDG's place
    for state that should survive a restart; ``~/.local/state`` when the variable is unset)."""
    env = os.environ if environ is None else environ
    if env.get(OUTBOX_ENV):
        return Path(env[OUTBOX_ENV]).expanduser()
    state = env.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "dbt-cloud-gate" / "receiver-outbox.sqlite3"


@dataclass(frozen=True)
class PendingEvent:
    """An event in the outbox that Prefect has not been seen to store yet."""

    event_id: str
    event: dict[str, Any]
    received_at: float


@dataclass(frozen=True)
class OutboxStats:
    """How far behind the forwarding is: events waiting, and the age of the oldest (``None`` when empty)."""

    depth: int
    oldest_age_seconds: float | None


class Outbox:
    """The durable outbox at ``path``; :meth:`open` before use, :meth:`close` after.

    Every call runs on one worker thread that owns the connection, in order. ``busy_timeout_seconds`` bounds how
    long a write waits for a lock another process holds (then 503, not a hung delivery).
    """

    def __init__(
        self,
        path: Path,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        busy_timeout_seconds: float = 2.0,
        dedupe_seconds: float = 3600.0,
    ) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.busy_timeout_seconds = busy_timeout_seconds
        self.dedupe_seconds = dedupe_seconds
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None
        self._lock_file: IO[bytes] | None = None

    # -- life ------------------------------------------------------------------------------------------------

    def open(self) -> Outbox:
        """Create or open the file (and its folder), take its lock, set the pragmas. ``OutboxError`` if it cannot."""
        if self._executor is not None:
            return self
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock_file = self._take_lock()
        except OSError as exc:
            raise OutboxError(f"cannot use the outbox folder {self.path.parent}: {exc.strerror or exc}") from None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox")
        try:
            self._executor.submit(self._connect).result()
        except (sqlite3.Error, OSError) as exc:
            self.close()
            raise OutboxError(
                f"cannot open the outbox {self.path}: {exc}. Is it an outbox file (SQLite)? Move a damaged file "
                "aside (its events are lost to the receiver, not to dbt Cloud's retries if they are recent)."
            ) from None
        return self

    def _take_lock(self) -> IO[bytes]:
        lock = (self.path.parent / f"{self.path.name}.lock").open("ab")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise OutboxError(
                f"another receiver is using the outbox {self.path}: give each receiver its own (--outbox)"
            ) from None
        return lock

    def _connect(self) -> None:
        conn = sqlite3.connect(self.path, timeout=self.busy_timeout_seconds, isolation_level=None)
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise sqlite3.OperationalError(f"the file cannot be put in WAL mode (it is in {mode})")
            conn.execute("PRAGMA synchronous=FULL")
            conn.executescript(_SCHEMA)
            page_size = conn.execute("PRAGMA page_size").fetchone()[0]
            conn.execute(f"PRAGMA max_page_count={max(1, self.max_bytes // int(page_size))}")
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def close(self) -> None:
        """Close the connection, stop the thread, release the lock (a second close does nothing)."""
        if self._executor is not None:
            conn = self._conn
            if conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    self._executor.submit(conn.close).result()
            self._executor.shutdown(wait=True)
        self._executor, self._conn = None, None
        if self._lock_file is not None:
            self._lock_file.close()  # closing the file releases the flock
            self._lock_file = None

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        if self._executor is None or self._conn is None:
            raise sqlite3.ProgrammingError("the outbox is not open")
        conn = self._conn
        return await asyncio.get_running_loop().run_in_executor(self._executor, work, conn)

    # -- the receiver's side ---------------------------------------------------------------------------------

    async def put(self, event: Event) -> bool:
        """Write ``event`` durably (committed and fsynced on return); ``False`` if its ID was already there.

        Raises ``sqlite3.Error`` when the row could not be written: the delivery must not be acknowledged."""
        row = (str(event.id), event.model_dump_json(), time.time())

        def write(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute("INSERT OR IGNORE INTO outbox (event_id, event, received_at) VALUES (?, ?, ?)", row)
            return cursor.rowcount == 1

        return await self._run(write)

    async def stats(self) -> OutboxStats:
        """Depth and oldest age of the events waiting to be confirmed."""

        def read(conn: sqlite3.Connection) -> OutboxStats:
            depth, oldest = conn.execute(
                "SELECT count(*), min(received_at) FROM outbox WHERE confirmed_at IS NULL"
            ).fetchone()
            age = None if oldest is None else max(0.0, time.time() - float(oldest))
            return OutboxStats(depth=int(depth), oldest_age_seconds=age)

        return await self._run(read)

    # -- the forwarder's side --------------------------------------------------------------------------------

    async def pending(self, limit: int) -> list[PendingEvent]:
        """The ``limit`` oldest events not yet confirmed, oldest first."""

        def read(conn: sqlite3.Connection) -> list[PendingEvent]:
            rows = conn.execute(
                "SELECT event_id, event, received_at FROM outbox WHERE confirmed_at IS NULL "
                "ORDER BY received_at, event_id LIMIT ?",
                (limit,),
            ).fetchall()
            return [PendingEvent(event_id=r[0], event=json.loads(r[1]), received_at=float(r[2])) for r in rows]

        return await self._run(read)

    async def confirm(self, event_ids: Iterable[str]) -> int:
        """Mark these events stored in Prefect (they leave the depth) and drop tombstones past the dedupe window;
        the number newly confirmed."""
        now = time.time()
        rows = [(now, event_id) for event_id in event_ids]

        def write(conn: sqlite3.Connection) -> int:
            with conn:  # one transaction: one fsync for the batch
                conn.execute("BEGIN IMMEDIATE")
                before = conn.total_changes
                conn.executemany("UPDATE outbox SET confirmed_at = ? WHERE event_id = ? AND confirmed_at IS NULL", rows)
                confirmed = conn.total_changes - before
                conn.execute("DELETE FROM outbox WHERE confirmed_at < ?", (now - self.dedupe_seconds,))
            return confirmed

        return await self._run(write) if rows else 0
