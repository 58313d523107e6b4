"""Incremental Snowflake loads gated on a dbt Cloud run, with an audit history of which run produced each load.

A load takes the source model's rows whose watermark column is after the last audited watermark for the
target and at or before the dbt run's ``finished_at``, and upserts them on the key columns (the latest version
of each key wins). The delete, the insert and the audit row commit in one transaction: a failure leaves none.

Upsert as DELETE + INSERT rather than MERGE: it is the same result on key columns, and it also runs on
fakesnow, where a MERGE inside an explicit transaction fails (DuckDB writes one database per transaction).
Identifiers are validated and quoted; every value is a bind parameter.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run as runtime_flow_run
from prefect_snowflake import SnowflakeConnector
from pydantic import BaseModel, Field, field_validator

from dbtcloud_api import ModelResult

_PLAIN = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]{0,254}$")
_QUOTED = re.compile(r'^"[^"\x00]{1,255}"$')
SUCCESS_MODEL_STATUSES = frozenset({"success"})
AUDIT_COLUMNS = (
    "PIPELINE",
    "TARGET",
    "PREFECT_FLOW_RUN_ID",
    "DBT_ACCOUNT_ID",
    "DBT_JOB_ID",
    "DBT_RUN_ID",
    "DBT_STATUS",
    "DBT_FINISHED_AT",
    "WATERMARK_FROM",
    "WATERMARK_TO",
    "ROWS_LOADED",
    "LOADED_AT",
)


class StaleDataError(Exception):
    """A load was refused because its data would be stale or unverified; nothing was loaded."""


def quote_identifier(name: str, what: str = "identifier") -> str:
    """Quote one Snowflake identifier. Plain names resolve as Snowflake resolves them unquoted (upper case);
    a name already in double quotes keeps its exact case. Anything else is refused."""
    text = (name or "").strip()
    if _QUOTED.match(text):
        return text
    if _PLAIN.match(text):
        return f'"{text.upper()}"'
    raise ValueError(
        f"{what} {name!r} is not a valid Snowflake identifier: use letters, digits, _ and $ (not starting with a "
        'digit), or a name in double quotes without quotes inside, like "Mixed Case".'
    )


def quote_table(name: str, what: str = "table") -> str:
    """Quote ``[database.][schema.]table``, each part validated."""
    parts = re.findall(r'"[^"]*"|[^.]+', (name or "").strip())
    if not 1 <= len(parts) <= 3 or ".".join(parts) != (name or "").strip():
        raise ValueError(f"{what} {name!r} must be TABLE, SCHEMA.TABLE or DATABASE.SCHEMA.TABLE.")
    return ".".join(quote_identifier(part, f"{what} part") for part in parts)


class LoadTarget(BaseModel):
    """One incremental load: a dbt model's table into a target table."""

    name: str = Field(description="A short label for logs, artifacts and the audit history, e.g. 'orders'.")
    source_model: str = Field(description="The dbt model whose success in the run gates this load.")
    source_table: str = Field(description="Where dbt built the model: DATABASE.SCHEMA.TABLE.")
    target_table: str = Field(description="The table to load into: DATABASE.SCHEMA.TABLE (must exist).")
    key_columns: list[str] = Field(min_length=1, description="Columns that identify a row (upsert key).")
    watermark_column: str = Field(description="Timestamp column (UTC) that says when a source row changed.")
    columns: list[str] | None = Field(default=None, description="Columns to copy; default: all of the source's.")

    @field_validator("source_table", "target_table")
    @classmethod
    def _table(cls, value: str) -> str:
        quote_table(value)
        return value

    @field_validator("key_columns", "columns")
    @classmethod
    def _columns(cls, value: list[str] | None) -> list[str] | None:
        for column in value or []:
            quote_identifier(column, "column")
        return value

    @field_validator("watermark_column")
    @classmethod
    def _watermark(cls, value: str) -> str:
        quote_identifier(value, "watermark column")
        return value


class LoadReport(BaseModel):
    """What one load did."""

    target: str
    target_table: str
    rows_loaded: int
    watermark_from: datetime | None
    watermark_to: datetime
    dbt_run_id: int


def _naive_utc(value: datetime) -> datetime:
    return value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo else value


def _aware(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    raise TypeError(f"expected a timestamp, got {value!r}")


def check_model_built(models: list[ModelResult], source_model: str) -> None:
    """Refuse when the source model did not build successfully in this run."""
    if not models:
        raise StaleDataError(
            f"The dbt run has no per-model results, so it is unknown whether {source_model!r} was rebuilt; "
            "nothing loaded (set check_model_built=False to load anyway)."
        )
    found = [m for m in models if m.name == source_model and (m.resource_type in (None, "model", "snapshot", "seed"))]
    if not found:
        raise StaleDataError(
            f"dbt model {source_model!r} was not built in this run (it is not in run_results.json); nothing loaded."
        )
    bad = [m for m in found if m.status not in SUCCESS_MODEL_STATUSES]
    if bad:
        raise StaleDataError(
            f"dbt model {source_model!r} ended {bad[0].status!r} in this run, so its table may be stale; nothing loaded."
        )


def ensure_audit_table(cursor: Any, audit_table: str) -> None:
    """Create the audit history table if it is missing."""
    cursor.execute(
        f"CREATE TABLE IF NOT EXISTS {quote_table(audit_table, 'audit table')} ("
        "PIPELINE VARCHAR, TARGET VARCHAR, PREFECT_FLOW_RUN_ID VARCHAR, DBT_ACCOUNT_ID NUMBER, DBT_JOB_ID NUMBER, "
        "DBT_RUN_ID NUMBER, DBT_STATUS VARCHAR, DBT_FINISHED_AT TIMESTAMP_NTZ, WATERMARK_FROM TIMESTAMP_NTZ, "
        "WATERMARK_TO TIMESTAMP_NTZ, ROWS_LOADED NUMBER, LOADED_AT TIMESTAMP_NTZ)"
    )


def default_audit_table(target_table: str) -> str:
    """The audit table beside the target (same database and schema): DATABASE.SCHEMA.DBT_CLOUD_GATE_AUDIT."""
    parts = re.findall(r'"[^"]*"|[^.]+', target_table.strip())
    return ".".join([*parts[:-1], "DBT_CLOUD_GATE_AUDIT"])


@task(name="load-snowflake-incremental", cache_policy=NO_CACHE)
def load_incremental(
    connector: SnowflakeConnector,
    target: LoadTarget,
    *,
    dbt_run_id: int,
    dbt_job_id: int,
    dbt_account_id: int,
    dbt_finished_at: datetime,
    models: list[ModelResult],
    pipeline: str,
    audit_table: str | None = None,
    check_newer_run: bool = True,
    check_model_built_ok: bool = True,
) -> LoadReport:
    """Load ``target`` for one successful dbt run and write its audit row, in one transaction."""
    log = get_run_logger()
    source = quote_table(target.source_table, "source table")
    destination = quote_table(target.target_table, "target table")
    audit_name = audit_table or default_audit_table(target.target_table)
    audit = quote_table(audit_name, "audit table")
    if check_model_built_ok:
        check_model_built(models, target.source_model)
    finished_at = _naive_utc(dbt_finished_at)
    with connector.get_connection(session_parameters={"TIMEZONE": "UTC"}) as connection:
        cursor = connection.cursor()
        ensure_audit_table(cursor, audit_name)
        cursor.execute(
            f"SELECT COUNT(*), MAX(WATERMARK_TO), MAX(DBT_FINISHED_AT) FROM {audit} WHERE TARGET = %(target)s",
            {"target": destination},
        )
        row = cursor.fetchone()
        # The count guards against a NULL MAX coming back as the epoch (seen with fakesnow's server mode).
        last_watermark, last_finished = (_aware(row[1]), _aware(row[2])) if row and row[0] else (None, None)
        if check_newer_run and last_finished is not None and _aware(finished_at) <= last_finished:  # type: ignore[operator]
            raise StaleDataError(
                f"dbt run {dbt_run_id} finished at {dbt_finished_at.isoformat()}, not after the last load of "
                f"{target.target_table} (dbt finished_at {last_finished.isoformat()}): its data is not newer; "
                "nothing loaded (set check_newer_run=False to allow it)."
            )
        if target.columns:
            columns = list(target.columns)
        else:
            cursor.execute(f"SELECT * FROM {source} WHERE 1 = 0")
            columns = [str(d[0]) for d in cursor.description]
        quoted_columns = [quote_identifier(c, "column") for c in columns]
        keys = [quote_identifier(c, "key column") for c in target.key_columns]
        watermark = quote_identifier(target.watermark_column, "watermark column")
        missing = [c for c in [*keys, watermark] if c not in quoted_columns]
        if missing:
            raise ValueError(f"Columns {missing} of load {target.name!r} are not among the copied columns {columns}.")
        window = f"{watermark} <= %(to)s" + (" AND " + f"{watermark} > %(from)s" if last_watermark else "")
        params = {"to": finished_at, "from": _naive_utc(last_watermark) if last_watermark else None}
        column_list = ", ".join(quoted_columns)
        key_match = " AND ".join(f"t.{k} = s.{k}" for k in keys)
        cursor.execute("BEGIN")
        try:
            cursor.execute(
                f"DELETE FROM {destination} t USING (SELECT DISTINCT {', '.join(keys)} FROM {source} "
                f"WHERE {window}) s WHERE {key_match}",
                params,
            )
            cursor.execute(
                f"INSERT INTO {destination} ({column_list}) SELECT {column_list} FROM {source} WHERE {window} "
                f"QUALIFY ROW_NUMBER() OVER (PARTITION BY {', '.join(keys)} ORDER BY {watermark} DESC) = 1",
                params,
            )
            rows_loaded = max(int(cursor.rowcount or 0), 0)
            cursor.execute(
                f"INSERT INTO {audit} ({', '.join(AUDIT_COLUMNS)}) VALUES (%(pipeline)s, %(target)s, %(flow_run)s, "
                "%(account)s, %(job)s, %(run)s, %(status)s, %(finished)s, %(wm_from)s, %(wm_to)s, %(rows)s, %(at)s)",
                {
                    "pipeline": pipeline,
                    "target": destination,
                    "flow_run": runtime_flow_run.get_id() or "",
                    "account": dbt_account_id,
                    "job": dbt_job_id,
                    "run": dbt_run_id,
                    "status": "Success",
                    "finished": finished_at,
                    "wm_from": params["from"],
                    "wm_to": finished_at,
                    "rows": rows_loaded,
                    "at": _naive_utc(datetime.now(UTC)),
                },
            )
            cursor.execute("COMMIT")
        except BaseException:
            cursor.execute("ROLLBACK")
            raise
    log.info(
        "Loaded %s row(s) into %s from dbt run %s (watermark %s → %s).",
        rows_loaded,
        target.target_table,
        dbt_run_id,
        last_watermark.isoformat() if last_watermark else "start",
        dbt_finished_at.isoformat(),
    )
    return LoadReport(
        target=target.name,
        target_table=target.target_table,
        rows_loaded=rows_loaded,
        watermark_from=last_watermark,
        watermark_to=_aware(finished_at) or dbt_finished_at,
        dbt_run_id=dbt_run_id,
    )
