"""Lists of load targets (or ETL pipelines) kept in a Prefect variable: a deployment names the variable, each run
reads it.

Why: a list of targets in a deployment's parameters expands field by field on the run form of Prefect's UI (two
targets take about 3,000 px), where the variable's name takes one line; the targets are edited in one place
(Variables) for every deployment that loads them; and a shipped example cannot load into tables nobody chose: until
the variable exists, a run fails before anything is triggered, naming the variable and how to create it.

Prefect caps a variable's value at 5,000 characters: about 20 plain targets. Beyond that, give the list in the
deployment's parameters, or split the loads into several pipelines (``dbt_cloud_etl_many``) or deployments.
"""

from __future__ import annotations

import json
import re
from typing import Any, TypeVar

from prefect.variables import Variable
from pydantic import BaseModel, TypeAdapter, ValidationError

__all__ = ["VARIABLE_NAME", "from_variable"]

M = TypeVar("M", bound=BaseModel)

# Prefect 3's rule for variable names (lowercase letters, digits, dashes and underscores).
VARIABLE_NAME = re.compile(r"^[a-z0-9_-]+$")


def from_variable(value: list[M] | str, model: type[M], parameter: str) -> list[M]:
    """``value`` itself when it is a list; when it is a string, the list of ``model`` held (as JSON) by the Prefect
    variable of that name. Every mistake raises a ``ValueError`` naming ``parameter``, the variable and the fix."""
    if not isinstance(value, str):
        return list(value)
    name = value.strip()
    what = f"{parameter} names the Prefect variable {name!r}"
    if not VARIABLE_NAME.match(name):
        raise ValueError(
            f"{parameter} is a string, so it names a Prefect variable holding the list as JSON, but {value!r} is not a "
            "variable name (lowercase letters, digits, dashes and underscores): give the variable's name, or the list "
            "itself."
        )
    example = '[{"name": ..., "source_model": ..., ...}]' if model.__name__ == "LoadTarget" else "[...]"
    try:
        raw: Any = Variable.get(name)
    except Exception as exc:  # the Prefect API unreachable or refusing: say which parameter needed it
        raise ValueError(f"{what}, which could not be read from Prefect's API: {type(exc).__name__}: {exc}") from exc
    if raw is None:
        raise ValueError(
            f"{what}, which does not exist (or is empty): create it with the {model.__name__} list as JSON, "
            f"`prefect variable set {name} '{example}'` or the UI's Variables page, then run again. Nothing was "
            "triggered."
        )
    if isinstance(raw, str):  # saved as a JSON string rather than a JSON value
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{what}, whose value is not JSON ({exc.msg} at character {exc.pos}): fix it.") from None
    try:
        items = TypeAdapter(list[model]).validate_python(raw)  # type: ignore[valid-type]
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc']) or 'the value'}: {error['msg']}" for error in exc.errors()[:5]
        )
        raise ValueError(
            f"{what}, whose value is not a list of {model.__name__}: {problems}. Fix the variable."
        ) from None
    if not items:
        raise ValueError(
            f"{what}, which holds an empty list: give at least one {model.__name__}. Nothing was triggered."
        )
    return list(items)
