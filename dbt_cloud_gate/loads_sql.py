"""Snowflake identifiers and the SQL of a load: pure functions, no I/O.

Names follow Snowflake's rules: a plain name (letters, digits, ``_``, ``$``) resolves upper-cased, as Snowflake
resolves it unquoted; a name in double quotes keeps its exact spelling and may hold any character but a control
character (a ``"`` inside is written ``""``). Every statement built here is executed with bind parameters in
pyformat style, so a ``%`` in a name is written ``%%`` in the SQL text (``sql_name``); values are always bound.

The load compares before it writes: a source row is written only when its key is new in the target or one of
its copied columns differs (``IS DISTINCT FROM``, NULL-safe and exact: no hash, so no collision). Rows with a
NULL key are never loaded (they are counted and reported): ``t.k = s.k`` never matches NULL, so each load would
add a duplicate. Among source rows of one key the latest watermark wins; ties are broken by the other columns'
values, so the winner does not depend on the physical row order.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_PLAIN = re.compile(r"[A-Za-z_][A-Za-z0-9_$]{0,254}")
_QUOTED = re.compile(r'"((?:[^"]|"")*)"')
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_TABLE_PART = re.compile(r'"(?:[^"]|"")*"|[^."]+')


def resolve_name(name: str, what: str = "identifier") -> str:
    """The exact name Snowflake stores for ``name``: upper-cased when plain, as written inside double quotes."""
    if not isinstance(name, str):
        raise ValueError(f"{what} must be a string, got {type(name).__name__}.")
    text = name.strip()
    if _PLAIN.fullmatch(text):
        return text.upper()
    quoted = _QUOTED.fullmatch(text)
    if quoted:
        exact = quoted.group(1).replace('""', '"')
        if not exact or len(exact) > 255:
            raise ValueError(f"{what} {name!r} must hold 1 to 255 characters inside its double quotes.")
        if _CONTROL.search(exact):
            raise ValueError(f"{what} {name!r} holds a control character, which no Snowflake name may hold.")
        return exact
    raise ValueError(
        f"{what} {name!r} is not a valid Snowflake identifier: use letters, digits, _ and $ (not starting with a "
        'digit) for a name Snowflake upper-cases, or write the exact name in double quotes, like "Mixed Case" or '
        '"order id" (a double quote inside is written twice).'
    )


def render_name(exact: str) -> str:
    """An exact name in double quotes, for SQL text that is not formatted with parameters."""
    return '"' + exact.replace('"', '""') + '"'


def sql_name(exact: str) -> str:
    """An exact name in double quotes, for SQL text executed with pyformat parameters (``%`` doubled)."""
    return render_name(exact).replace("%", "%%")


def split_table(name: str, what: str = "table") -> list[str]:
    """``[database.][schema.]table`` as its exact parts, each validated."""
    text = (name or "").strip() if isinstance(name, str) else ""
    parts = _TABLE_PART.findall(text)
    if not 1 <= len(parts) <= 3 or ".".join(parts) != text:
        raise ValueError(
            f"{what} {name!r} must be TABLE, SCHEMA.TABLE or DATABASE.SCHEMA.TABLE (a part with dots or other "
            'characters in double quotes, like DB."my.schema".T).'
        )
    return [resolve_name(part, f"{what} part") for part in parts]


def table_sql(parts: list[str]) -> str:
    """A table's exact parts as SQL for parameterised statements."""
    return ".".join(sql_name(part) for part in parts)


def table_display(parts: list[str]) -> str:
    """A table's exact parts as plain SQL text (logs, audit, lock keys)."""
    return ".".join(render_name(part) for part in parts)


@dataclass(frozen=True)
class LoadShape:
    """The resolved names of one load: source and target tables, copied columns, keys, watermark."""

    source: str  # SQL (pyformat-safe)
    target: str
    columns: tuple[str, ...]  # exact names
    keys: tuple[str, ...]
    watermark: str
    # Per copied column, the target's type when comparing needs the source value cast to it (a NUMBER(12,4)
    # source into NUMBER(12,2) would differ after every write otherwise), and the spatial columns, which are
    # compared by their WKB and left out of the tie-break (they cannot be ordered).
    casts: tuple[tuple[str, str], ...] = ()
    spatial: frozenset[str] = frozenset()

    @property
    def compared(self) -> tuple[str, ...]:
        """Columns whose difference makes a row changed: every copied column that is not a key."""
        return tuple(c for c in self.columns if c not in self.keys)


def _cols(names: tuple[str, ...], alias: str = "") -> str:
    prefix = f"{alias}." if alias else ""
    return ", ".join(prefix + sql_name(c) for c in names)


def _keys_match(shape: LoadShape, left: str, right: str) -> str:
    return " AND ".join(f"{left}.{sql_name(k)} = {right}.{sql_name(k)}" for k in shape.keys)


def _keys_not_null(shape: LoadShape) -> str:
    return " AND ".join(f"{sql_name(k)} IS NOT NULL" for k in shape.keys)


def incremental_condition(shape: LoadShape, has_lower_bound: bool) -> str:
    """The incremental window on the watermark: ``(wm_from, wm_to]``, or ``<= wm_to`` on a first load."""
    wm = sql_name(shape.watermark)
    return f"{wm} > %(wm_from)s AND {wm} <= %(wm_to)s" if has_lower_bound else f"{wm} <= %(wm_to)s"


def reconcile_condition(shape: LoadShape) -> str:
    """A reconcile's rows: every row up to the last audited watermark ``%(wm_to)s``, and rows with none."""
    wm = sql_name(shape.watermark)
    return f"{wm} <= %(wm_to)s OR {wm} IS NULL"


def candidates(shape: LoadShape, condition: str) -> str:
    """The rows to load: those matching ``condition`` with no NULL key, one per key (latest watermark wins;
    ties broken by the other columns, so the winner is deterministic)."""
    tiebreak = "".join(
        f", {sql_name(c)} ASC NULLS LAST"
        for c in shape.columns
        if c not in (*shape.keys, shape.watermark) and c not in shape.spatial
    )
    return (
        f"SELECT {_cols(shape.columns)} FROM {shape.source} WHERE ({condition}) AND {_keys_not_null(shape)} "
        f"QUALIFY ROW_NUMBER() OVER (PARTITION BY {_cols(shape.keys)} "
        f"ORDER BY {sql_name(shape.watermark)} DESC NULLS LAST{tiebreak}) = 1"
    )


def _differs(shape: LoadShape, column: str) -> str:
    """NULL-safe, exact: the target's value against the source's as the target would store it."""
    name = sql_name(column)
    if column in shape.spatial:
        return f"ST_ASWKB(t.{name}) IS DISTINCT FROM ST_ASWKB(s.{name})"
    cast = dict(shape.casts).get(column)
    source = f"CAST(s.{name} AS {cast})" if cast else f"s.{name}"
    return f"t.{name} IS DISTINCT FROM {source}"


def comparison_cast(data_type: str, precision: object, scale: object, datetime_precision: object) -> str | None:
    """The type to cast a source value to before comparing it with a target column of this type, or None.

    Only types whose stored value can differ from the value inserted (rounding, precision) are cast.
    """
    kind = (data_type or "").upper()
    if kind in ("NUMBER", "DECIMAL", "NUMERIC") and isinstance(precision, int) and isinstance(scale, int):
        return f"NUMBER({precision},{scale})"
    if kind in ("FLOAT", "DOUBLE", "REAL", "FLOAT4", "FLOAT8", "DOUBLE PRECISION"):
        return "FLOAT"
    if kind in ("TIMESTAMP_NTZ", "TIMESTAMP_LTZ", "TIMESTAMP_TZ"):
        return f"{kind}({datetime_precision})" if isinstance(datetime_precision, int) else kind
    if kind in ("DATE", "BOOLEAN"):
        return kind
    return None


SPATIAL_TYPES = frozenset({"GEOGRAPHY", "GEOMETRY"})


def columns_query(table_parts: list[str]) -> str:
    """The target's columns and types from INFORMATION_SCHEMA (``%(schema)s``, ``%(table)s``)."""
    database = f"{sql_name(table_parts[0])}." if len(table_parts) == 3 else ""
    schema = "%(schema)s" if len(table_parts) >= 2 else "CURRENT_SCHEMA()"
    return (
        f"SELECT * FROM {database}INFORMATION_SCHEMA.COLUMNS WHERE TABLE_SCHEMA = {schema} AND TABLE_NAME = %(table)s"
    )


def dedupe_target(shape: LoadShape, condition: str) -> str:
    """Delete every row of a key the target holds more than once, where the source has that key (the insert
    then writes it once again): duplicates an earlier fault left behind."""
    return (
        f"DELETE FROM {shape.target} t USING (SELECT {_cols(shape.keys)} FROM {shape.target} "
        f"GROUP BY {_cols(shape.keys)} HAVING COUNT(*) > 1) d WHERE {_keys_match(shape, 't', 'd')} "
        f"AND EXISTS (SELECT 1 FROM ({candidates(shape, condition)}) s WHERE {_keys_match(shape, 's', 't')})"
    )


def delete_changed(shape: LoadShape, condition: str) -> str | None:
    """Delete target rows whose key is among the candidates with different content (None: keys only)."""
    if not shape.compared:
        return None
    differs = " OR ".join(_differs(shape, c) for c in shape.compared)
    return (
        f"DELETE FROM {shape.target} t USING ({candidates(shape, condition)}) s "
        f"WHERE {_keys_match(shape, 't', 's')} AND ({differs})"
    )


def insert_missing(shape: LoadShape, condition: str) -> str:
    """Insert the candidates whose key is not in the target (new keys, and the changed ones just deleted)."""
    return (
        f"INSERT INTO {shape.target} ({_cols(shape.columns)}) SELECT {_cols(shape.columns, 's')} "
        f"FROM ({candidates(shape, condition)}) s "
        f"WHERE NOT EXISTS (SELECT 1 FROM {shape.target} t WHERE {_keys_match(shape, 't', 's')})"
    )


def _gone(shape: LoadShape) -> str:
    """Target row ``t``'s key no longer exists in the source (a NULL key never does)."""
    return f"NOT EXISTS (SELECT 1 FROM {shape.source} s WHERE {_keys_match(shape, 's', 't')})"


def delete_gone(shape: LoadShape) -> str:
    """Delete target rows whose key no longer exists in the source (a reconcile's ``propagate_deletes``)."""
    return f"DELETE FROM {shape.target} t WHERE {_gone(shape)}"


def delete_guard_counts(shape: LoadShape) -> str:
    """The target's rows, those ``delete_gone`` would delete, and whether the source holds a row with a key
    (0 or 1), in one row: what the reconcile's delete guards decide on."""
    return (
        f"SELECT (SELECT COUNT(*) FROM {shape.target}), (SELECT COUNT(*) FROM {shape.target} t WHERE {_gone(shape)}), "
        f"(SELECT COUNT(*) FROM (SELECT 1 FROM {shape.source} WHERE {_keys_not_null(shape)} LIMIT 1) k)"
    )


def invalid_row_counts(shape: LoadShape, condition: str) -> str:
    """Count rows no load takes: NULL watermark, watermark after the run's end (``%(wm_to)s``), NULL key
    within ``condition``."""
    null_key = " OR ".join(f"{sql_name(k)} IS NULL" for k in shape.keys)
    wm = sql_name(shape.watermark)
    return (
        f"SELECT COUNT_IF({wm} IS NULL), COUNT_IF({wm} > %(wm_to)s), COUNT_IF(({condition}) AND ({null_key})) "
        f"FROM {shape.source}"
    )
