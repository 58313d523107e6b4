"""How dbt Cloud and dbt write times: the v2 API's run timestamps, ISO 8601 in job objects and artifacts, and
``HH:MM:SS`` durations. Pure functions of an epoch time."""

from __future__ import annotations

from datetime import UTC, datetime

from dbt_cloud_gate.dbtcloud_api.models import format_timestamp


def timestamp(epoch: float | None) -> str | None:
    """An epoch time as the v2 API writes timestamps (``None`` stays ``None``)."""
    if epoch is None:
        return None
    return format_timestamp(datetime.fromtimestamp(epoch, tz=UTC))


def iso(epoch: float) -> str:
    """An epoch time in ISO 8601 (the job object's dates, and every date in dbt's artifacts)."""
    return datetime.fromtimestamp(epoch, tz=UTC).isoformat()


def hms(seconds: float) -> str:
    """A duration as ``HH:MM:SS``."""
    total = max(0, int(seconds))
    return f"{total // 3600:02d}:{total % 3600 // 60:02d}:{total % 60:02d}"
