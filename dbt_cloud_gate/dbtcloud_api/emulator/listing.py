"""List endpoints as dbt Cloud answers them: the spec's filters applied, ``order_by``, ``limit``/``offset`` paging.

Written once for the runs list and the jobs list. Each list names its filters (:class:`Filter`: which field of a row
and how a query value compares to it); a row is a plain dict of the fields its filters and orderings read. A value
that cannot be read is a :class:`QueryError`, answered as dbt Cloud's 400 with the field's error.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

Item = TypeVar("Item")
FilterKind = Literal["int", "ints", "gt", "str", "strs", "icontains", "bool", "range", "state"]
MAX_LIMIT = 100
_STATES = {"active": {1}, "1": {1}, "deleted": {2}, "2": {2}, "all": {1, 2}}


class QueryError(ValueError):
    """A query parameter dbt Cloud cannot read: answered 400 with ``{name: [message]}``."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name}: {message}")
        self.name = name
        self.message = message


@dataclass(frozen=True)
class Filter:
    """A query filter: the row field it reads, and how (``ints``/``strs``: one of a bracketed list; ``gt``: above;
    ``range``: between two timestamps; ``state``: the soft-deletion state, ``active``/``deleted``/``all``)."""

    field: str
    kind: FilterKind


def last(query: Mapping[str, list[str]], name: str) -> str | None:
    """The last value given for ``name`` (a repeated parameter: the last one wins, as in Django)."""
    values = query.get(name)
    return values[-1] if values else None


def integer(name: str, text: str) -> int:
    """``text`` as an integer, or the field error dbt Cloud answers."""
    try:
        return int(text.strip())
    except ValueError:
        raise QueryError(name, "A valid integer is required.") from None


def items_of(text: str) -> list[str]:
    """The items of a list parameter: ``[1,2]``, ``["a","b"]`` or ``1,2``."""
    return [item.strip().strip("\"'") for item in text.strip().strip("[]").split(",") if item.strip()]


def epoch(name: str, text: str) -> float:
    """A timestamp parameter as epoch seconds (ISO 8601, ``Z`` or an offset; a naive value is UTC)."""
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise QueryError(name, f"Enter a valid date/time, not {text!r}.") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def _boolean(name: str, text: str) -> bool:
    lowered = text.strip().lower()
    if lowered not in ("true", "false", "1", "0"):
        raise QueryError(name, "Must be a valid boolean.")
    return lowered in ("true", "1")


def _matcher(name: str, kind: FilterKind, text: str) -> Callable[[Any], bool]:
    """A test of a row's field value against the query value ``text``."""
    if kind == "int":
        wanted = integer(name, text)
        return lambda value: value == wanted
    if kind == "ints":
        among = {integer(name, item) for item in items_of(text)}
        return lambda value: value in among
    if kind == "gt":
        floor = integer(name, text)
        return lambda value: value is not None and value > floor
    if kind == "str":
        return lambda value: value == text
    if kind == "strs":
        names = set(items_of(text))
        return lambda value: value in names
    if kind == "icontains":
        part = text.lower()
        return lambda value: part in str(value or "").lower()
    if kind == "bool":
        flag = _boolean(name, text)
        return lambda value: bool(value) == flag
    if kind == "state":
        if text.strip().lower() not in _STATES:
            raise QueryError(name, f"Select a valid choice: {text} is not one of active, deleted, all, 1, 2.")
        states = _STATES[text.strip().lower()]
        return lambda value: value in states
    bounds = [epoch(name, item) for item in items_of(text)]
    if len(bounds) != 2:
        raise QueryError(name, "Enter a range of two date/times: [start,end].")
    return lambda value: value is not None and bounds[0] <= value <= bounds[1]


def select(
    rows: list[tuple[dict[str, Any], Item]],
    query: Mapping[str, list[str]],
    filters: Mapping[str, Filter],
    defaults: Mapping[str, str] | None = None,
) -> list[tuple[dict[str, Any], Item]]:
    """The rows every filter of the query (and each default of a filter the query leaves out) lets through."""
    asked = {name: value for name, value in (defaults or {}).items()}
    asked.update({name: text for name in filters if (text := last(query, name)) is not None})
    for name, text in asked.items():
        rule = filters[name]
        matches = _matcher(name, rule.kind, text)
        rows = [row for row in rows if matches(row[0].get(rule.field))]
    return rows


def ordered(
    rows: list[tuple[dict[str, Any], Item]], order_by: str, fields: set[str]
) -> list[tuple[dict[str, Any], Item]]:
    """The rows in ``order_by`` order (``-`` reverses); a missing value sorts as the largest (as in PostgreSQL:
    last ascending, first descending); ties by ``id``."""
    name = order_by.strip().lstrip("-")
    if name not in fields:
        raise QueryError("order_by", f"Cannot order by {name!r}; choose one of {sorted(fields)}.")

    def key(row: tuple[dict[str, Any], Item]) -> tuple[bool, Any, Any]:
        value = row[0].get(name)
        return (value is None, value if value is not None else 0, row[0].get("id"))

    return sorted(rows, key=key, reverse=order_by.strip().startswith("-"))


def paged(
    rows: list[tuple[dict[str, Any], Item]],
    query: Mapping[str, list[str]],
    extra: dict[str, Any],
) -> tuple[list[Item], dict[str, Any]]:
    """The page ``limit``/``offset`` ask for and the ``extra`` (filters, pagination) dbt Cloud sends with it."""
    limit = integer("limit", last(query, "limit") or str(MAX_LIMIT))
    offset = integer("offset", last(query, "offset") or "0")
    if not 1 <= limit <= MAX_LIMIT:
        raise QueryError("limit", f"Ensure this value is between 1 and {MAX_LIMIT}.")
    if offset < 0:
        raise QueryError("offset", "Ensure this value is greater than or equal to 0.")
    page = [item for _fields, item in rows[offset : offset + limit]]
    filters = {**extra.get("filters", {}), "limit": limit, "offset": offset}
    return page, {**extra, "filters": filters, "pagination": {"count": len(page), "total_count": len(rows)}}
