"""The value rules every layer shares, each written once: a dbt Cloud ID and a number of seconds.

``check_id`` and ``check_seconds`` are the rules; ``DbtCloudId`` and ``Seconds`` are the same rules as pydantic
types, for models and flow parameters (a deployment's form shows them as constraints: a minimum, an integer).
"""

from __future__ import annotations

import math
from typing import Annotated

from pydantic import AfterValidator, BeforeValidator, Field

from dbt_cloud_gate.dbtcloud_api.errors import DbtCloudConfigError

__all__ = ["MAX_ID", "DbtCloudId", "Seconds", "check_id", "check_seconds"]

MAX_ID = 2**63 - 1


def check_id(name: str, value: object) -> int:
    """``value`` if it can be a dbt Cloud account, job or run ID (an int from 1 to 2**63-1, not a bool); a
    ``DbtCloudConfigError`` naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise DbtCloudConfigError(f"{name} must be a positive integer (a dbt Cloud ID), got {value!r}.")
    if not 1 <= value <= MAX_ID:
        raise DbtCloudConfigError(f"{name} must be between 1 and 2**63-1 (a dbt Cloud ID), got {value!r}.")
    return value


def check_seconds(name: str, value: object, *, allow_zero: bool = False) -> float:
    """``value`` as seconds if it is a finite, positive number (not a bool); a ``ValueError`` naming ``name``.

    ``allow_zero`` also takes 0 (a grace or a delay that may be none). NaN slips through ``value <= 0`` (every
    comparison with NaN is false) and would poll with no delay; infinity would never poll again.
    """
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
        or (value == 0 and not allow_zero)
    ):
        sign = "non-negative" if allow_zero else "positive"
        raise ValueError(f"{name} must be a finite, {sign} number of seconds, got {value!r}")
    return float(value)


def _not_bool(value: object) -> object:
    if isinstance(value, bool):
        raise ValueError("a dbt Cloud ID is an integer, not a bool")
    return value


# A digit string is taken (a deployment's variables are strings); a bool is not. The bounds come before the
# validator, so that they are the JSON schema's minimum and maximum, which a deployment's form and Prefect's parameter
# validation enforce (after it, pydantic writes them as "ge"/"le", keys no JSON schema validator knows).
DbtCloudId = Annotated[int, Field(ge=1, le=MAX_ID), BeforeValidator(_not_bool)]
Seconds = Annotated[float, Field(gt=0, allow_inf_nan=False), AfterValidator(lambda v: check_seconds("seconds", v))]
