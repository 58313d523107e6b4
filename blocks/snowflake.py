"""Snowflake blocks: prefect-snowflake's ``SnowflakeConnector``, given as an instance or the name of a saved one."""

from __future__ import annotations

from prefect_snowflake import SnowflakeConnector

__all__ = ["resolve_connector"]


def resolve_connector(snowflake: SnowflakeConnector | str) -> SnowflakeConnector:
    """The connector block given, or the saved one of that name (with a clear error when there is none)."""
    if isinstance(snowflake, SnowflakeConnector):
        return snowflake
    try:
        return SnowflakeConnector.load(snowflake)
    except ValueError as exc:
        raise ValueError(
            f"No saved Snowflake connector block named {snowflake!r}: create a prefect-snowflake SnowflakeConnector "
            f"block with that name (UI, or SnowflakeConnector(...).save({snowflake!r})). ({exc})"
        ) from None
