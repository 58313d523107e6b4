"""The audit history of loads and the per-target write lock: Snowflake I/O on a DB-API cursor.

The audit table (default ``DBT_CLOUD_GATE_AUDIT`` beside the target) holds one row per load or reconcile. The
watermark and the newer-run guard are keyed on the load, source table and target table together, so two
sources feeding one target keep a watermark each. Rows written before the source was recorded (SOURCE_TABLE
NULL) count for every source of their target.

Each target has a lock table of its own beside it (``<TARGET>__DBT_CLOUD_GATE_LOCK``, one row). A load updates
that row as the first statement of its transaction and holds it until COMMIT, so loads of one target
serialize, and the guard read that follows sees every load committed before it. A table of its own per target,
because Snowflake locks a whole table for an UPDATE: a shared lock table would make every target wait behind
one long or abandoned transaction. A blocked statement waits up to the session's LOCK_TIMEOUT. fakesnow
(DuckDB's MVCC) does not wait: a second writer of the row fails at once, so :func:`take_lock` retries its
transaction until its lock budget runs out.
"""

from __future__ import annotations

import hashlib
import time
from datetime import UTC, datetime
from typing import Any

from dbt_cloud_gate.errors import LoadLockTimeout
from dbt_cloud_gate.loads_sql import sql_name, table_display, table_sql

KIND_INCREMENTAL = "incremental"
KIND_RECONCILE = "reconcile"

# Name and type of every audit column, in order. New columns are added to an existing table on first use.
AUDIT_SCHEMA: tuple[tuple[str, str], ...] = (
    ("PIPELINE", "VARCHAR"),
    ("TARGET", "VARCHAR"),
    ("PREFECT_FLOW_RUN_ID", "VARCHAR"),
    ("DBT_ACCOUNT_ID", "NUMBER"),
    ("DBT_JOB_ID", "NUMBER"),
    ("DBT_RUN_ID", "NUMBER"),
    ("DBT_STATUS", "VARCHAR"),
    ("DBT_FINISHED_AT", "TIMESTAMP_NTZ"),
    ("WATERMARK_FROM", "TIMESTAMP_NTZ"),
    ("WATERMARK_TO", "TIMESTAMP_NTZ"),
    ("ROWS_LOADED", "NUMBER"),
    ("LOADED_AT", "TIMESTAMP_NTZ"),
    ("SOURCE_TABLE", "VARCHAR"),
    ("LOAD_KIND", "VARCHAR"),
    ("LOOKBACK_SECONDS", "FLOAT"),
    ("ROWS_UPDATED", "NUMBER"),
    ("ROWS_DELETED", "NUMBER"),
    ("ROWS_NULL_KEY", "NUMBER"),
    ("ROWS_NULL_WATERMARK", "NUMBER"),
    ("ROWS_FUTURE_WATERMARK", "NUMBER"),
    ("ROWS_DUPLICATES_REMOVED", "NUMBER"),
)
AUDIT_COLUMNS = tuple(name for name, _ in AUDIT_SCHEMA)
LOCK_SUFFIX = "__DBT_CLOUD_GATE_LOCK"
AUDIT_TABLE = "DBT_CLOUD_GATE_AUDIT"
# Each try to take the lock is bounded so that fakesnow's fail-at-once conflicts are retried.
_LOCK_TRY_SECONDS = 10.0
# pyformat needs a parameter for formatting to happen (and so for %% in names to become %).
_ALWAYS = {"_dcg": None}


def run(cursor: Any, statement: str, params: dict[str, Any] | None = None, *, timeout: float | None = None) -> Any:
    """Execute with pyformat parameters always applied (names in the text carry ``%%``) and a client timeout."""
    options: dict[str, Any] = {"timeout": max(1, int(timeout + 0.999))} if timeout else {}
    cursor.execute(statement, {**_ALWAYS, **(params or {})}, **options)
    return cursor


def naive_utc(value: datetime) -> datetime:
    """A UTC TIMESTAMP_NTZ value from an aware (or naive UTC) datetime."""
    return value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo else value


def aware(value: Any) -> datetime | None:
    """A UTC-aware datetime from a TIMESTAMP_NTZ value read back (None stays None)."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    raise TypeError(f"expected a timestamp, got {value!r}")


def sibling(table_parts: list[str], name: str) -> list[str]:
    """A table beside ``table_parts`` (same database and schema)."""
    return [*table_parts[:-1], name]


def of_target(target_parts: list[str], suffix: str) -> list[str]:
    """A table that belongs to a target: beside it, named after it plus ``suffix`` (a digest of the target's name
    when the name would pass 255 characters)."""
    name = target_parts[-1] + suffix
    if len(name) > 255:
        name = "T" + hashlib.sha256(target_parts[-1].encode()).hexdigest()[:20] + suffix
    return sibling(target_parts, name)


def lock_table(target_parts: list[str]) -> list[str]:
    """The lock table of a target: ``<TARGET>__DBT_CLOUD_GATE_LOCK`` beside it."""
    return of_target(target_parts, LOCK_SUFFIX)


def ensure_audit_table(cursor: Any, audit_parts: list[str], timeout: float | None = None) -> None:
    """Create the audit table if missing, and add any column an older version did not have."""
    table = table_sql(audit_parts)
    columns = ", ".join(f"{name} {kind}" for name, kind in AUDIT_SCHEMA)
    run(cursor, f"CREATE TABLE IF NOT EXISTS {table} ({columns})", timeout=timeout)
    run(cursor, f"SELECT * FROM {table} WHERE 1 = 0", timeout=timeout)
    present = {str(d[0]).upper() for d in cursor.description}
    for name, kind in AUDIT_SCHEMA:
        if name not in present:
            run(cursor, f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {name} {kind}", timeout=timeout)


def ensure_lock_row(cursor: Any, lock_parts: list[str], key: str, timeout: float | None = None) -> None:
    """Create the lock table and this target's row if missing (outside the load's transaction)."""
    table = table_sql(lock_parts)
    run(
        cursor,
        f"CREATE TABLE IF NOT EXISTS {table} (LOCK_KEY VARCHAR, LOCKED_AT TIMESTAMP_NTZ, LOCKED_BY VARCHAR)",
        timeout=timeout,
    )
    # A race may add the row twice; harmless: the UPDATE that takes the lock covers every row of the key.
    run(
        cursor,
        f"INSERT INTO {table} (LOCK_KEY) SELECT %(key)s WHERE NOT EXISTS "
        f"(SELECT 1 FROM {table} WHERE LOCK_KEY = %(key)s)",
        {"key": key},
        timeout=timeout,
    )


def lock_statement(lock_parts: list[str]) -> str:
    """The first statement of a load's transaction: it takes the target's write lock until COMMIT."""
    return f"UPDATE {table_sql(lock_parts)} SET LOCKED_AT = %(at)s, LOCKED_BY = %(by)s WHERE LOCK_KEY = %(key)s"


def take_lock(cursor: Any, lock_parts: list[str], *, key: str, holder: str, budget: float, timeout: float) -> None:
    """BEGIN, then take the target's lock (``lock_statement``); retried until ``budget`` seconds have passed,
    then ``LoadLockTimeout``."""
    deadline = time.monotonic() + budget
    statement = lock_statement(lock_parts)
    last: Exception | None = None
    while True:
        left = deadline - time.monotonic()
        run(cursor, "BEGIN", timeout=timeout)
        try:
            run(
                cursor,
                statement,
                {"at": naive_utc(datetime.now(UTC)), "by": holder, "key": key},
                timeout=max(1.0, min(_LOCK_TRY_SECONDS, left)),
            )
            return
        except Exception as exc:
            last = exc
            rollback(cursor, timeout)
        if time.monotonic() + 0.25 >= deadline:
            break
        time.sleep(0.25)
    raise LoadLockTimeout(
        f"Waited {budget:.0f} s for the write lock of {key} ({table_display(lock_parts)}): "
        "another load of this target holds it, or a transaction of a killed worker is still open (Snowflake "
        "rolls it back when that session expires; SHOW LOCKS names it and SELECT SYSTEM$ABORT_TRANSACTION(<id>) "
        "frees it now). Nothing was loaded; raise "
        f"lock_timeout_seconds to wait longer. Last error: {type(last).__name__}: {last}"
    ) from None


def rollback(cursor: Any, timeout: float, log: Any = None) -> None:
    """Roll back; a failure to (a lost connection) must not hide the error that caused it, and is logged to
    ``log`` (a logger) if given. Snowflake rolls back a transaction whose session ends."""
    try:
        run(cursor, "ROLLBACK", timeout=timeout)
    except Exception as exc:
        if log is not None:
            log.warning(
                "ROLLBACK failed (%s: %s); the session's end rolls the transaction back.", type(exc).__name__, exc
            )


def last_load(
    cursor: Any, audit_parts: list[str], *, source: str, target: str, timeout: float | None = None
) -> tuple[datetime | None, datetime | None]:
    """The last audited watermark and dbt ``finished_at`` of incremental loads from ``source`` into ``target``."""
    run(
        cursor,
        f"SELECT COUNT(*), MAX(WATERMARK_TO), MAX(DBT_FINISHED_AT) FROM {table_sql(audit_parts)} "
        "WHERE TARGET = %(target)s AND (SOURCE_TABLE = %(source)s OR SOURCE_TABLE IS NULL) "
        "AND (LOAD_KIND = %(kind)s OR LOAD_KIND IS NULL)",
        {"target": target, "source": source, "kind": KIND_INCREMENTAL},
        timeout=timeout,
    )
    row = cursor.fetchone()
    # The count guards against a NULL MAX coming back as the epoch (seen with fakesnow's server mode).
    if not row or not row[0]:
        return None, None
    return aware(row[1]), aware(row[2])


def loaded_runs(
    cursor: Any, audit_parts: list[str], *, source: str, target: str, run_id: int, timeout: float | None = None
) -> int:
    """How many incremental loads of dbt run ``run_id`` from ``source`` into ``target`` are audited."""
    run(
        cursor,
        f"SELECT COUNT(*) FROM {table_sql(audit_parts)} WHERE TARGET = %(target)s "
        "AND (SOURCE_TABLE = %(source)s OR SOURCE_TABLE IS NULL) AND (LOAD_KIND = %(kind)s OR LOAD_KIND IS NULL) "
        "AND DBT_RUN_ID = %(run)s",
        {"target": target, "source": source, "kind": KIND_INCREMENTAL, "run": run_id},
        timeout=timeout,
    )
    row = cursor.fetchone()
    return int(row[0]) if row else 0


def write_audit_row(cursor: Any, audit_parts: list[str], values: dict[str, Any], timeout: float | None = None) -> None:
    """Insert one audit row; ``values`` maps column names (``AUDIT_COLUMNS``) to values, missing ones NULL."""
    unknown = set(values) - set(AUDIT_COLUMNS)
    if unknown:
        raise ValueError(f"unknown audit columns {sorted(unknown)}")
    names = [name for name in AUDIT_COLUMNS if name in values]
    placeholders = ", ".join(f"%(v{i})s" for i in range(len(names)))
    params = {f"v{i}": values[name] for i, name in enumerate(names)}
    run(
        cursor,
        f"INSERT INTO {table_sql(audit_parts)} ({', '.join(names)}) VALUES ({placeholders})",
        params,
        timeout=timeout,
    )


__all__ = [
    "AUDIT_COLUMNS",
    "AUDIT_TABLE",
    "KIND_INCREMENTAL",
    "KIND_RECONCILE",
    "LOCK_SUFFIX",
    "aware",
    "ensure_audit_table",
    "ensure_lock_row",
    "last_load",
    "loaded_runs",
    "lock_statement",
    "lock_table",
    "naive_utc",
    "of_target",
    "rollback",
    "run",
    "sibling",
    "sql_name",
    "take_lock",
    "write_audit_row",
]
