"""Where dbt Cloud is more lenient than its OpenAPI document: answer as dbt Cloud does, record the departure.

dbt Cloud answers a path without its trailing slash with a 308 to the slashed path (every method), takes a JSON
``null`` in an optional field as absent, ignores query parameters it does not know, accepts back the job objects it
serves (``description: ""``), and reads ``include_related`` in every form clients send. Each of these still departs
from the spec, so :func:`check` returns two lists: what the request departs from (``recorded``: kept on the
:class:`~.specs.RecordedRequest`, so that the tests hold our own client to the spec) and what dbt Cloud itself would
refuse (``refused``: answered with a 400, 404 or 405).

Pure functions: no state, no I/O.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from dbt_cloud_gate.dbtcloud_api.emulator.render import Reply, envelope
from dbt_cloud_gate.dbtcloud_api.openapi import SpecValidator

# Fields whose empty string dbt Cloud serves in its own objects and takes back (the spec says ``minLength: 1``).
_BLANK_AS_ABSENT = frozenset({"description"})


@dataclass
class Checked:
    """A request after the spec check: its departures, what dbt Cloud refuses, and what the emulator acts on."""

    recorded: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    query: dict[str, list[str]] = field(default_factory=dict)
    body: Any = None
    operation: str | None = None


def check(
    validator: SpecValidator, method: str, path: str, query: dict[str, list[str]], body: Any, *, has_body: bool
) -> Checked:
    """The request's departures from the spec, and what is left of them once read as dbt Cloud reads requests."""
    op, _params, _known = validator.match(method, path)
    operation = op.spec.get("operationId") if op is not None else None
    recorded = validator.validate(method, path, query, body, has_body=has_body)
    if not recorded or op is None:
        return Checked(recorded, list(recorded), dict(query), body, operation)
    declared = {p["name"] for p in op.spec.get("parameters", []) if p.get("in") == "query"}
    kept_query = {name: values for name, values in query.items() if name in declared}
    kept_body = without_nulls(body)
    refused = validator.validate(method, path, kept_query, kept_body, has_body=has_body)
    return Checked(recorded, refused, kept_query, kept_body, operation)


def without_nulls(value: Any) -> Any:
    """``value`` with every ``null`` member of an object dropped, at any depth (and the blanks dbt Cloud serves).

    A required field sent as ``null`` then reads as missing, which dbt Cloud refuses too.
    """
    if isinstance(value, dict):
        return {
            key: without_nulls(item)
            for key, item in value.items()
            if item is not None and not (key in _BLANK_AS_ABSENT and item == "")
        }
    if isinstance(value, list):
        return [without_nulls(item) for item in value]
    return value


def slash_redirect(path: str, query_string: str, *, known: bool, slashed_known: bool) -> Reply | None:
    """A 308 to ``path/`` (query kept) for an API path that lacks its trailing slash, as dbt Cloud answers.

    ``known``: whether the path as given names something (an artifact's file name ends without a slash);
    ``slashed_known``: whether ``path/`` does.
    """
    if path.endswith("/") or known or not slashed_known:
        return None
    location = path + "/" + (f"?{query_string}" if query_string else "")
    headers = {"Content-Type": "application/json", "Location": location}
    return Reply(308, envelope(None, 308, f"Permanent redirect to {location}."), headers)


def include_related(values: list[str]) -> set[str]:
    """The related objects asked for, in every form clients send.

    ``include_related=trigger,run_steps``, with or without spaces after the commas; a JSON list
    (``["trigger", "run_steps"]``); a bracketed list without quotes; the parameter repeated.
    """
    names: set[str] = set()
    for value in values:
        text = value.strip()
        items: list[Any]
        try:
            parsed = json.loads(text)
            items = parsed if isinstance(parsed, list) else [text]
        except ValueError:
            items = text.strip("[]").split(",")
        names.update(str(item).strip().strip("\"'") for item in items)
    names.discard("")
    return names
