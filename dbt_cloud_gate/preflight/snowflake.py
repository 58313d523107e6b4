"""The Snowflake half of the preflight: for each load target, before anything is triggered, what the load will need.

On one connection opened as a load opens its own (``open_load_connection``), with metadata statements only:

- both tables exist and the role sees them (``INFORMATION_SCHEMA.COLUMNS``; on a miss, the schema's tables for a
  "did you mean");
- the key, watermark and copied columns exist in both, with types of one family (a number is not loaded into a
  text column), the watermark a timestamp or date;
- the rights: in one transaction that is rolled back, the load's statements with ``WHERE 1 = 0`` (Snowflake
  checks privileges when it compiles a statement, and a false filter reads no micro-partition): SELECT from the
  source, INSERT into and DELETE from the target, and the writes to the lock, registry and audit tables beside it
  that exist already;
- for those that do not exist yet (the first load creates them), CREATE TABLE on their schema, from Snowflake's
  grant views (``OBJECT_PRIVILEGES`` of the enabled roles): DDL cannot be tried in a transaction, Snowflake commits
  it at once.

fakesnow shows no rights at all: it has no roles, privileges or grant views, so every DML check passes there and the
CREATE TABLE check is reported as not checked. Prefect-free; Prefect's SnowflakeConnector is only a type hint.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dbt_cloud_gate import audit, sources
from dbt_cloud_gate import loads_sql as q
from dbt_cloud_gate.loads import default_audit_table, open_load_connection
from dbt_cloud_gate.models import LoadTarget
from dbt_cloud_gate.preflight.findings import Findings, did_you_mean
from dbt_cloud_gate.settings import LoadSettings

if TYPE_CHECKING:
    from prefect_snowflake import SnowflakeConnector

__all__ = ["check_targets", "type_family"]

# Each statement of the preflight is metadata or compiles to nothing: a short limit is plenty.
_TIMEOUT_SECONDS = 60.0
_FAMILIES: dict[str, tuple[str, ...]] = {
    "number": (
        *("NUMBER", "DECIMAL", "NUMERIC", "INT", "INTEGER", "BIGINT", "SMALLINT", "TINYINT", "BYTEINT"),
        *("FLOAT", "FLOAT4", "FLOAT8", "DOUBLE", "DOUBLE PRECISION", "REAL"),
    ),
    "text": ("VARCHAR", "CHAR", "CHARACTER", "STRING", "TEXT", "NCHAR", "NVARCHAR", "NVARCHAR2", "CHAR VARYING"),
    "date or timestamp": ("DATE", "DATETIME", "TIMESTAMP", "TIMESTAMP_NTZ", "TIMESTAMP_LTZ", "TIMESTAMP_TZ"),
    "time": ("TIME",),
    "boolean": ("BOOLEAN",),
    "binary": ("BINARY", "VARBINARY"),
    "semi-structured": ("VARIANT", "OBJECT", "ARRAY"),
    "spatial": tuple(q.SPATIAL_TYPES),
}
_FAMILY_OF = {kind: family for family, kinds in _FAMILIES.items() for kind in kinds}


def type_family(data_type: str) -> str | None:
    """The family of a Snowflake type as INFORMATION_SCHEMA names it (``NUMBER``, ``TEXT``...); None: unknown."""
    return _FAMILY_OF.get(data_type.upper().split("(")[0].strip())


@dataclass(frozen=True)
class Table:
    """A table as the preflight found it: its full name, and its columns and types (None: not found)."""

    parts: list[str]
    columns: dict[str, str] | None
    missing_why: str = ""

    @property
    def name(self) -> str:
        """The full name, as the logs and the audit history write it."""
        return q.table_display(self.parts)


class _Session:
    """A cursor that counts its statements, and what the session resolves partial names and rights against."""

    def __init__(self, cursor: Any, findings: Findings) -> None:
        self.cursor = cursor
        self.findings = findings
        self.run("SELECT CURRENT_DATABASE(), CURRENT_SCHEMA(), CURRENT_ROLE()")
        database, schema, role = (cursor.fetchone() or (None, None, None))[:3]
        self.database, self.schema, self.role = database, schema, str(role or "<your role>")
        self._tables: dict[tuple[str, str], dict[str, str] | None] = {}

    def run(self, statement: str, params: dict[str, Any] | None = None) -> Any:
        self.findings.statements += 1
        return audit.run(self.cursor, statement, params, timeout=_TIMEOUT_SECONDS)

    def attempt(self, statement: str) -> Exception | None:
        """Run a statement inside the open transaction; its error, if any, after starting a fresh transaction
        (fakesnow aborts a transaction after an error; Snowflake would carry on)."""
        try:
            self.run(statement)
            return None
        except Exception as exc:
            audit.rollback(self.cursor, _TIMEOUT_SECONDS)
            self.run("BEGIN")
            return exc

    def full(self, parts: list[str]) -> list[str] | None:
        """``parts`` completed with the session's database and schema (None: the session has none)."""
        if len(parts) == 3:
            return parts
        context = [self.database, self.schema][: 3 - len(parts)]
        return [str(c) for c in context] + parts if all(context) else None

    def tables_in(self, database: str, schema: str) -> dict[str, str] | None:
        """The tables and views of a schema, with their TABLE_TYPE (None: the database or the schema cannot be
        read)."""
        if (database, schema) not in self._tables:
            try:
                self.run(
                    f"SELECT TABLE_NAME, TABLE_TYPE FROM {q.sql_name(database)}.INFORMATION_SCHEMA.TABLES "
                    "WHERE TABLE_SCHEMA = %(schema)s",
                    {"schema": schema},
                )
                self._tables[(database, schema)] = {str(row[0]): str(row[1]) for row in self.cursor.fetchall()}
            except Exception:
                self._tables[(database, schema)] = None
        return self._tables[(database, schema)]

    def table(self, parts: list[str]) -> Table:
        """The table's columns and types, in their order; on a miss, why (with a "did you mean")."""
        full = self.full(parts)
        if full is None:
            return Table(parts, None, "names no database or schema, and the connector's session has none")
        database, schema, name = full
        try:
            self.run(
                f"SELECT COLUMN_NAME, DATA_TYPE FROM {q.sql_name(database)}.INFORMATION_SCHEMA.COLUMNS "
                "WHERE TABLE_SCHEMA = %(schema)s AND TABLE_NAME = %(table)s ORDER BY ORDINAL_POSITION",
                {"schema": schema, "table": name},
            )
            columns = {str(row[0]): str(row[1] or "") for row in self.cursor.fetchall()}
        except Exception as exc:
            return Table(full, None, f"cannot be looked up ({type(exc).__name__}: {exc})")
        if columns:
            return Table(full, columns)
        tables = self.tables_in(database, schema)
        if tables is None:
            why = f"does not exist: database {q.render_name(database)} or its schema {q.render_name(schema)} does not"
            return Table(full, None, f"{why} exist, or role {self.role} cannot see it")
        return Table(full, None, f"does not exist, or role {self.role} cannot see it{did_you_mean(name, tables)}")


def check_targets(
    connector: SnowflakeConnector, targets: list[tuple[str, LoadTarget]], settings: LoadSettings, found: Findings
) -> None:
    """Check every target, each given with the parameter that names it (``targets[1]``), on one connection;
    what is wrong goes into ``found``."""
    try:
        connection = open_load_connection(connector, settings)
    except Exception as exc:
        found.add(
            "snowflake",
            f"cannot connect to Snowflake ({type(exc).__name__}: {exc}).",
            "check the SnowflakeConnector block: account, user, its credentials, role, warehouse and database.",
        )
        return
    try:
        session = _Session(connection.cursor(), found)
        creates: dict[tuple[str, ...], list[tuple[str, str]]] = {}
        for where, target in targets:
            _check_target(session, where, target, settings, creates)
        _check_creates(session, creates)
    except Exception as exc:  # a lost connection, a statement timeout: the loads would meet it too
        found.add(
            "snowflake",
            f"the checks stopped on {type(exc).__name__}: {str(exc).rstrip('.')}.".replace("\n", " "),
            "check that Snowflake answers on this connector, then run again (load.preflight=false skips the checks).",
        )
    finally:
        connection.close()


def _check_target(
    session: _Session,
    where: str,
    target: LoadTarget,
    settings: LoadSettings,
    creates: dict[tuple[str, ...], list[tuple[str, str]]],
) -> None:
    """One target: its tables, then its columns, then (when both are right) its rights."""
    found = session.findings
    before = len(found.problems)
    source = session.table(q.split_table(target.source_table))
    sink = session.table(q.split_table(target.target_table))
    grant = f"if it exists, GRANT USAGE on its database and schema and SELECT on it TO ROLE {session.role}"
    if source.columns is None:
        found.add(
            f"{where}.source_table",
            f"source table {source.name} {source.missing_why}.",
            f"correct source_table to where dbt builds model {target.source_model!r}, or run the job once so "
            f"that it exists; {grant}.",
        )
    if sink.columns is None:
        found.add(
            f"{where}.target_table",
            f"target table {sink.name} {sink.missing_why}.",
            f"create it with the columns to load (a load never creates its target), or correct target_table; "
            f"{grant}, INSERT and DELETE.",
        )
    if sink.columns is not None:  # Snowflake lists views as TABLE_TYPE VIEW; fakesnow leaves them out
        kind = (session.tables_in(sink.parts[0], sink.parts[1]) or {}).get(sink.parts[2], "")
        if "VIEW" in kind.upper():
            found.add(
                f"{where}.target_table",
                f"target table {sink.name} is a {kind.lower()}: a load writes into a table.",
                "correct target_table to the table to load into.",
            )
    _check_columns(session, where, target, source, sink)
    if len(found.problems) == before and source.columns is not None and sink.columns is not None:
        _check_rights(session, where, target, settings, source, sink, creates)


def _named_columns(where: str, target: LoadTarget) -> list[tuple[str, str]]:
    """(parameter, exact name) of every column the target names: keys, watermark, then its columns."""
    named = [(f"{where}.key_columns[{i}]", q.resolve_name(c)) for i, c in enumerate(target.key_columns)]
    named.append((f"{where}.watermark_column", q.resolve_name(target.watermark_column)))
    named += [(f"{where}.columns[{i}]", q.resolve_name(c)) for i, c in enumerate(target.columns or [])]
    return named


def _missing_column(table: Table, name: str, side: str) -> tuple[str, str]:
    """The message and fix for a column ``name`` missing from ``table``."""
    assert table.columns is not None
    same = [c for c in table.columns if c.lower() == name.lower()]
    if same:
        fix = f"write it as the {side} stores it, in double quotes: {q.render_name(same[0])!r}."
    else:
        fix = f"correct the name{did_you_mean(name, table.columns)}, or add the column to the {side} table."
    listed = ", ".join(table.columns)
    return f"column {q.render_name(name)} is not in {side} table {table.name} (its columns: {listed}).", fix


def _check_columns(session: _Session, where: str, target: LoadTarget, source: Table, sink: Table) -> None:
    """Key, watermark and copied columns: in both tables, of one type family; the watermark a date or time."""
    found = session.findings
    named = _named_columns(where, target)
    reported: set[tuple[str, str]] = set()
    for table, side in ((source, "source"), (sink, "target")):
        if table.columns is None:
            continue
        for parameter, name in named:
            if name not in table.columns and (side, name) not in reported:
                reported.add((side, name))
                found.add(parameter, *_missing_column(table, name, side))
    both = source.columns is not None and sink.columns is not None
    copied = list(source.columns or [])
    if target.columns:
        copied = [name for _, name in named[len(target.key_columns) + 1 :]]
        for parameter, name in named[: len(target.key_columns) + 1]:
            if name not in copied:
                found.add(
                    parameter, f"column {q.render_name(name)} is not among the copied columns.", "add it to columns."
                )
    elif both:
        for name in [c for c in copied if c not in (sink.columns or {}) and c not in {n for _, n in named}]:
            found.add(
                f"{where}.target_table",
                f"column {q.render_name(name)} of source table {source.name} is not in target table {sink.name}.",
                f"add it to the target (ALTER TABLE ... ADD COLUMN), or list the columns to copy in {where}.columns.",
            )
    if both:
        _check_types(session, where, target, source, sink, copied)


def _check_types(
    session: _Session, where: str, target: LoadTarget, source: Table, sink: Table, copied: list[str]
) -> None:
    """Every copied column of one type family in both tables; the watermark a date or timestamp in the source."""
    assert source.columns is not None and sink.columns is not None
    parameters = {name: parameter for parameter, name in reversed(_named_columns(where, target))}
    for name in [c for c in copied if c in source.columns and c in sink.columns]:
        kinds = source.columns[name], sink.columns[name]
        families = type_family(kinds[0]), type_family(kinds[1])
        if None not in families and families[0] != families[1]:
            session.findings.add(
                parameters.get(name, f"{where}.target_table"),
                f"column {q.render_name(name)} is {kinds[0]} in source table {source.name} but {kinds[1]} in "
                f"target table {sink.name}.",
                "cast it in the dbt model to the target's type, or change the target column's type.",
            )
    watermark = q.resolve_name(target.watermark_column)
    kind = source.columns.get(watermark)
    if kind is not None and type_family(kind) not in (None, "date or timestamp"):
        session.findings.add(
            f"{where}.watermark_column",
            f"column {q.render_name(watermark)} is {kind} in source table {source.name}: a watermark must be a "
            "TIMESTAMP (or DATE).",
            "choose the model's timestamp column, or cast it to TIMESTAMP_NTZ in the dbt model.",
        )


def _check_rights(
    session: _Session,
    where: str,
    target: LoadTarget,
    settings: LoadSettings,
    source: Table,
    sink: Table,
    creates: dict[tuple[str, ...], list[tuple[str, str]]],
) -> None:
    """The load's statements, compiled on nothing in a transaction that is rolled back; the tables the load
    creates beside the target, gathered for :func:`_check_creates`."""
    assert source.columns is not None
    columns = [q.resolve_name(c) for c in target.columns] if target.columns else list(source.columns)
    listed = ", ".join(q.render_name(c) for c in columns)
    src, dst = q.table_display(source.parts), q.table_display(sink.parts)
    role = session.role
    audit_where = "load.audit_table" if settings.audit_table else f"{where}.target_table"
    audit_parts = session.full(q.split_table(settings.audit_table or default_audit_table(target.target_table)))
    checks = [
        (f"{where}.source_table", f"SELECT {listed} FROM {src} WHERE 1 = 0", f"SELECT ON TABLE {src}"),
        (f"{where}.target_table", f"INSERT INTO {dst} ({listed}) SELECT {listed} FROM {dst} WHERE 1 = 0",
         f"INSERT ON TABLE {dst}"),
        (f"{where}.target_table", f"DELETE FROM {dst} WHERE 1 = 0", f"DELETE ON TABLE {dst}"),
    ]  # fmt: skip
    # The tables the load writes beside the target: (parameter, parts, a column, whether the load UPDATEs it).
    beside = [
        (f"{where}.target_table", audit.lock_table(sink.parts), "LOCK_KEY", True),
        (f"{where}.target_table", sources.registry_table(sink.parts), "TARGET", True),
    ]
    if audit_parts is not None:
        beside.append((audit_where, audit_parts, "PIPELINE", False))
    for parameter, parts, column, updated in beside:
        name, tables = q.table_display(parts), session.tables_in(parts[0], parts[1])
        if tables is not None and parts[2] not in tables:
            creates.setdefault(tuple(parts[:2]), []).append((parameter, name))
            continue
        if updated:
            checks.append((parameter, f"UPDATE {name} SET {column} = {column} WHERE 1 = 0", f"UPDATE ON TABLE {name}"))
        insert = f"INSERT INTO {name} ({column}) SELECT {column} FROM {name} WHERE 1 = 0"
        checks.append((parameter, insert, f"INSERT ON TABLE {name}"))
    session.run("BEGIN")
    try:
        for parameter, statement, privilege in checks:
            error = session.attempt(statement.replace("%", "%%"))
            if error is not None:
                session.findings.add(
                    parameter,
                    f"role {role} cannot run the load's {statement.split(' ')[0]} on it: {type(error).__name__}: "
                    f"{str(error).rstrip('.')}.".replace("\n", " "),
                    f"GRANT {privilege} TO ROLE {role} (and USAGE on its database and schema).",
                )
    finally:
        audit.rollback(session.cursor, _TIMEOUT_SECONDS)
        session.findings.statements += 1


def _check_creates(session: _Session, creates: dict[tuple[str, ...], list[tuple[str, str]]]) -> None:
    """CREATE TABLE on each schema where a load will create its lock, registry or audit table, from the grant
    views (fakesnow has none: reported as not checked)."""
    for (database, schema), tables in creates.items():
        where = f"{q.render_name(database)}.{q.render_name(schema)}"
        try:
            session.run(
                f"SELECT COUNT(*) FROM {q.sql_name(database)}.INFORMATION_SCHEMA.OBJECT_PRIVILEGES "
                "WHERE OBJECT_TYPE = 'SCHEMA' AND OBJECT_NAME = %(schema)s "
                "AND PRIVILEGE_TYPE IN ('CREATE TABLE', 'OWNERSHIP') AND GRANTEE IN "
                f"(SELECT ROLE_NAME FROM {q.sql_name(database)}.INFORMATION_SCHEMA.ENABLED_ROLES)",
                {"schema": schema},
            )
            granted = int((session.cursor.fetchone() or (0,))[0] or 0)
        except Exception as exc:
            session.findings.unchecked.append(
                f"CREATE TABLE on schema {where} (the grant views cannot be read: {type(exc).__name__})"
            )
            continue
        if not granted:
            names = ", ".join(dict.fromkeys(name for _, name in tables))
            session.findings.add(
                tables[0][0],
                f"role {session.role} has no CREATE TABLE on schema {where}, where the first load creates {names}.",
                f"GRANT CREATE TABLE ON SCHEMA {where} TO ROLE {session.role}, or let a role that has it run the "
                "first load (or set load.preflight=false if the right comes by a grant the views do not show).",
            )
