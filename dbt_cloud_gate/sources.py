"""The source registry of each target: every source table that loads into it, known from the target itself.

A load names its audit table (``LoadSettings.audit_table``), so two sources of one target may keep their
histories in two audit tables, and neither history knows the other source. The registry does: a table beside the
target, ``<TARGET>__DBT_CLOUD_GATE_SOURCES``, beside its lock table. Every load and every reconcile writes its
source's row in its own transaction, after it has taken the target's write lock (``dbt_cloud_gate.audit``), so
the registry is never behind a committed load and a reconcile reads it with no load in between.

The first time a source registers, the sources its audit table names for the target are registered too: the
history of loads made before the registry existed. A source that no longer feeds the target is retired, not
deleted (``RETIRED_AT`` set; it is registered again if it loads again)::

    UPDATE <TARGET>__DBT_CLOUD_GATE_SOURCES SET RETIRED_AT = CURRENT_TIMESTAMP() WHERE SOURCE_TABLE = '...'

Snowflake I/O on a DB-API cursor, no Prefect.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from dbt_cloud_gate import audit
from dbt_cloud_gate.loads_sql import table_display, table_sql

__all__ = [
    "SOURCES_SUFFIX",
    "RegisteredSource",
    "ensure_registry",
    "other_sources",
    "register",
    "registry_table",
]

SOURCES_SUFFIX = "__DBT_CLOUD_GATE_SOURCES"
_COLUMNS = (
    "TARGET VARCHAR, SOURCE_TABLE VARCHAR, AUDIT_TABLE VARCHAR, PIPELINE VARCHAR, "
    "FIRST_LOADED_AT TIMESTAMP_NTZ, LAST_LOADED_AT TIMESTAMP_NTZ, RETIRED_AT TIMESTAMP_NTZ"
)


@dataclass(frozen=True)
class RegisteredSource:
    """One source of a target, as its registry row holds it."""

    source_table: str
    audit_table: str | None
    last_loaded_at: datetime | None

    def describe(self) -> str:
        """The source, where its loads are audited and when it last loaded, in words."""
        last = self.last_loaded_at.isoformat(timespec="seconds") if self.last_loaded_at else "unknown"
        return f"{self.source_table} (audited in {self.audit_table or 'an unknown table'}, last load {last})"


def registry_table(target_parts: list[str]) -> list[str]:
    """The registry of a target: ``<TARGET>__DBT_CLOUD_GATE_SOURCES`` beside it."""
    return audit.of_target(target_parts, SOURCES_SUFFIX)


def ensure_registry(cursor: Any, registry_parts: list[str], timeout: float | None = None) -> None:
    """Create the registry if missing (outside the load's transaction, like the lock row)."""
    audit.run(cursor, f"CREATE TABLE IF NOT EXISTS {table_sql(registry_parts)} ({_COLUMNS})", timeout=timeout)


def register(
    cursor: Any,
    registry_parts: list[str],
    *,
    target: str,
    source: str,
    audit_parts: list[str],
    pipeline: str,
    at: datetime,
    timeout: float | None = None,
) -> None:
    """Record that ``source`` loads into ``target`` now (under the target's lock, in the load's transaction); on
    its first registration, also register the sources the load's audit table names for the target."""
    table = table_sql(registry_parts)
    values = {
        "target": target,
        "source": source,
        "audit": table_display(audit_parts),
        "pipeline": pipeline,
        "at": audit.naive_utc(at),
    }
    updated = audit.run(
        cursor,
        f"UPDATE {table} SET LAST_LOADED_AT = %(at)s, AUDIT_TABLE = %(audit)s, PIPELINE = %(pipeline)s, "
        "RETIRED_AT = NULL WHERE TARGET = %(target)s AND SOURCE_TABLE = %(source)s",
        values,
        timeout=timeout,
    )
    if int(updated.rowcount or 0) > 0:
        return
    audit.run(
        cursor,
        f"INSERT INTO {table} (TARGET, SOURCE_TABLE, AUDIT_TABLE, PIPELINE, FIRST_LOADED_AT, LAST_LOADED_AT) "
        "VALUES (%(target)s, %(source)s, %(audit)s, %(pipeline)s, %(at)s, %(at)s)",
        values,
        timeout=timeout,
    )
    # The loads audited before the registry existed. A retired source is in the registry, so it stays retired.
    audit.run(
        cursor,
        f"INSERT INTO {table} (TARGET, SOURCE_TABLE, AUDIT_TABLE, PIPELINE, FIRST_LOADED_AT, LAST_LOADED_AT) "
        f"SELECT TARGET, SOURCE_TABLE, %(audit)s, MAX(PIPELINE), MIN(LOADED_AT), MAX(LOADED_AT) "
        f"FROM {table_sql(audit_parts)} WHERE TARGET = %(target)s AND SOURCE_TABLE IS NOT NULL "
        f"AND SOURCE_TABLE NOT IN (SELECT SOURCE_TABLE FROM {table} WHERE TARGET = %(target)s) "
        "GROUP BY TARGET, SOURCE_TABLE",
        values,
        timeout=timeout,
    )


def other_sources(
    cursor: Any, registry_parts: list[str], *, target: str, source: str, timeout: float | None = None
) -> list[RegisteredSource]:
    """The sources registered for ``target`` besides ``source`` and not retired, by name."""
    audit.run(
        cursor,
        f"SELECT SOURCE_TABLE, MAX(AUDIT_TABLE), MAX(LAST_LOADED_AT) FROM {table_sql(registry_parts)} "
        "WHERE TARGET = %(target)s AND SOURCE_TABLE <> %(source)s AND RETIRED_AT IS NULL "
        "GROUP BY SOURCE_TABLE ORDER BY SOURCE_TABLE",
        {"target": target, "source": source},
        timeout=timeout,
    )
    return [RegisteredSource(str(row[0]), row[1], audit.aware(row[2])) for row in cursor.fetchall()]
