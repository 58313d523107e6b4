"""Snowflake loads gated on a dbt Cloud run, with an audit history of which run produced each load.

An incremental load takes the source model's rows whose watermark lies in ``(last audited watermark - lookback,
the run's finished_at]`` and writes those whose key is new or whose content differs (one row per key: the latest
watermark wins, ties broken by content). Rows with a NULL key, a NULL watermark or a watermark after the run's
end are counted, reported and (policy ``on_invalid_rows``) skipped with a warning or refused. A reconcile
compares the whole source with the target up to the last audited watermark and loads what is missing or
different, optionally deleting target keys gone from the source.

Each load runs on a connection of its own, with lock-wait and statement timeouts. In one transaction it first
takes its target's write lock (``dbt_cloud_gate.audit``), then reads the guard and the watermark, counts, writes
and appends its audit row: a failure leaves none of it, and loads of one target serialize.

Upsert as DELETE + INSERT rather than MERGE: the same result on the key columns, and it also runs on fakesnow,
where a MERGE inside an explicit transaction fails (DuckDB writes one database per transaction).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run as runtime_flow_run
from prefect_snowflake import SnowflakeConnector

from dbt_cloud_gate import audit
from dbt_cloud_gate import loads_sql as q
from dbt_cloud_gate.dbtcloud_api import ModelResult
from dbt_cloud_gate.errors import InvalidRowsError, LoadLockTimeout, StaleDataError
from dbt_cloud_gate.models import LoadReport, LoadTarget

SUCCESS_MODEL_STATUSES = frozenset({"success"})
AUDIT_COLUMNS = audit.AUDIT_COLUMNS
# A business timestamp (UPDATED_AT of the source system) lags the dbt run that carries it: re-read the last hour.
# Re-reading costs a compare, never a duplicate; 0 is exact only for a watermark dbt stamps as it writes the row.
DEFAULT_LOOKBACK_SECONDS = 3600.0
DEFAULT_LOCK_TIMEOUT_SECONDS = 300.0
DEFAULT_STATEMENT_TIMEOUT_SECONDS = 3600.0
# Each try to take the lock is bounded so that fakesnow's fail-at-once conflicts are retried.
_LOCK_TRY_SECONDS = 10.0


def describe_load_failure(name: str, exc: Exception) -> str:
    """One line for a failed load: refusals as they are worded, other errors with their type."""
    plain = isinstance(exc, StaleDataError | ValueError | LoadLockTimeout)
    return f"{name}: {exc}" if plain else f"{name}: {type(exc).__name__}: {exc}"


def attempt_each(
    targets: list[LoadTarget], call: Callable[[LoadTarget], LoadReport], log: Any, what: str = "Load"
) -> tuple[list[LoadReport], list[str]]:
    """Run ``call`` for every target, one failing (refused, or a database error) never stopping the others;
    returns the reports and one line per failure."""
    reports: list[LoadReport] = []
    failures: list[str] = []
    for target in targets:
        try:
            reports.append(call(target))
        except Exception as exc:
            failures.append(describe_load_failure(target.name, exc))
            log.error("%s of %s failed, nothing changed for it: %s", what, target.name, failures[-1])
    return reports, failures


def quote_identifier(name: str, what: str = "identifier") -> str:
    """Quote one Snowflake identifier: a plain name upper-cased (as Snowflake resolves it unquoted), a name in
    double quotes exactly as written. Anything else is refused."""
    return q.render_name(q.resolve_name(name, what))


def quote_table(name: str, what: str = "table") -> str:
    """Quote ``[database.][schema.]table``, each part validated."""
    return q.table_display(q.split_table(name, what))


def require_model_built(models: list[ModelResult], source_model: str) -> None:
    """Refuse when the source model did not build successfully in this run."""
    if not models:
        raise StaleDataError(
            f"The dbt run has no per-model results, so it is unknown whether {source_model!r} was rebuilt; "
            "nothing loaded (set check_model_built=False to load anyway)."
        )
    found = [m for m in models if m.matches(source_model) and (m.resource_type in (None, "model", "snapshot", "seed"))]
    if not found:
        raise StaleDataError(
            f"dbt model {source_model!r} was not built in this run (it is in no step's run_results.json); "
            "nothing loaded."
        )
    bad = [m for m in found if m.status not in SUCCESS_MODEL_STATUSES]
    if bad:
        raise StaleDataError(
            f"dbt model {bad[0].unique_id or source_model!r} ended {bad[0].status!r} in this run, so its table may "
            "be stale; nothing loaded."
        )


check_model_built = require_model_built  # the name of earlier versions


def default_audit_table(target_table: str) -> str:
    """The audit table beside the target (same database and schema): DATABASE.SCHEMA.DBT_CLOUD_GATE_AUDIT."""
    return q.table_display(audit.sibling(q.split_table(target_table), audit.AUDIT_TABLE))


def _seconds(value: float, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{what} must be a finite number of seconds above 0, got {value!r}.")
    return float(value)


def check_load_settings(
    *,
    lookback_seconds: float = DEFAULT_LOOKBACK_SECONDS,
    lock_timeout_seconds: float = DEFAULT_LOCK_TIMEOUT_SECONDS,
    statement_timeout_seconds: float = DEFAULT_STATEMENT_TIMEOUT_SECONDS,
    audit_table: str | None = None,
) -> None:
    """Refuse load settings that cannot work (NaN, infinite, negative, a bad audit table name) with a
    ``ValueError`` naming the setting: flows call it before triggering anything."""
    if isinstance(lookback_seconds, bool) or not isinstance(lookback_seconds, int | float):
        raise ValueError(f"lookback_seconds must be a number of seconds, got {lookback_seconds!r}.")
    if not math.isfinite(lookback_seconds) or not 0 <= lookback_seconds <= 366 * 86400:
        raise ValueError(f"lookback_seconds must be finite, from 0 to a year of seconds, got {lookback_seconds!r}.")
    _seconds(lock_timeout_seconds, "lock_timeout_seconds")
    _seconds(statement_timeout_seconds, "statement_timeout_seconds")
    if audit_table is not None:
        q.split_table(audit_table, "audit table")


def open_load_connection(
    connector: SnowflakeConnector, *, lock_timeout_seconds: float, statement_timeout_seconds: float
) -> Any:
    """A new connection for one load (never the connector's shared cached one), with its session's lock-wait
    and statement timeouts set, in UTC."""
    return connector.credentials.get_client(
        database=connector.database,
        warehouse=connector.warehouse,
        schema=connector.schema_,
        session_parameters={
            "TIMEZONE": "UTC",
            "LOCK_TIMEOUT": max(1, math.ceil(lock_timeout_seconds)),
            "STATEMENT_TIMEOUT_IN_SECONDS": max(1, math.ceil(statement_timeout_seconds)),
        },
    )


def _take_lock(cursor: Any, lock_parts: list[str], key: str, budget: float, statement_timeout: float) -> None:
    """BEGIN, then take the target's lock; retried until ``budget`` seconds have passed."""
    deadline = time.monotonic() + budget
    statement = audit.lock_statement(lock_parts)
    owner = str(runtime_flow_run.get_id() or "")
    last: Exception | None = None
    while True:
        left = deadline - time.monotonic()
        audit.run(cursor, "BEGIN", timeout=statement_timeout)
        try:
            audit.run(
                cursor,
                statement,
                {"at": audit.naive_utc(datetime.now(UTC)), "by": owner, "key": key},
                timeout=max(1.0, min(_LOCK_TRY_SECONDS, left)),
            )
            return
        except Exception as exc:
            last = exc
            _rollback(cursor, statement_timeout, None)
        if time.monotonic() + 0.25 >= deadline:
            break
        time.sleep(0.25)
    raise LoadLockTimeout(
        f"Waited {budget:.0f} s for the write lock of {key} ({q.table_display(lock_parts)}): "
        "another load of this target holds it, or a transaction of a killed worker is still open (Snowflake "
        "rolls it back when that session expires; SHOW LOCKS names it and SELECT SYSTEM$ABORT_TRANSACTION(<id>) "
        "frees it now). Nothing was loaded; raise "
        f"lock_timeout_seconds to wait longer. Last error: {type(last).__name__}: {last}"
    ) from None


def _rollback(cursor: Any, timeout: float, log: Any) -> None:
    """Roll back; a failure to (a lost connection) must not hide the error that caused it. Snowflake rolls
    back a transaction whose session ends."""
    try:
        audit.run(cursor, "ROLLBACK", timeout=timeout)
    except Exception as exc:
        if log is not None:
            log.warning(
                "ROLLBACK failed (%s: %s); the session's end rolls the transaction back.", type(exc).__name__, exc
            )


def _resolve_shape(cursor: Any, target: LoadTarget, timeout: float) -> q.LoadShape:
    source_parts = q.split_table(target.source_table, "source table")
    target_parts = q.split_table(target.target_table, "target table")
    if target.columns:
        columns = [q.resolve_name(c, "column") for c in target.columns]
    else:
        # The source's names exactly as stored: a quoted lower-case or mixed-case name stays as it is.
        audit.run(cursor, f"SELECT * FROM {q.table_sql(source_parts)} WHERE 1 = 0", timeout=timeout)
        columns = [str(d[0]) for d in cursor.description]
    keys = [q.resolve_name(c, "key column") for c in target.key_columns]
    watermark = q.resolve_name(target.watermark_column, "watermark column")
    missing = [name for name in [*keys, watermark] if name not in columns]
    if missing:
        hints = [
            f"{name!r} (the source has {c!r}: write it in double quotes, {q.render_name(c)!r})"
            for name in missing
            for c in columns
            if c.lower() == name.lower()
        ]
        raise ValueError(
            f"Columns {missing} of load {target.name!r} are not among the copied columns {columns}"
            + (f": {'; '.join(hints)}" if hints else "")
            + "."
        )
    casts, spatial = _target_types(cursor, target_parts, timeout)
    return q.LoadShape(
        source=q.table_sql(source_parts),
        target=q.table_sql(target_parts),
        columns=tuple(columns),
        keys=tuple(keys),
        watermark=watermark,
        casts=tuple((c, casts[c]) for c in columns if c in casts),
        spatial=frozenset(c for c in columns if c in spatial),
    )


def _target_types(cursor: Any, target_parts: list[str], timeout: float) -> tuple[dict[str, str], set[str]]:
    """Per target column, the type to cast a source value to before comparing, and the spatial columns."""
    audit.run(
        cursor,
        q.columns_query(target_parts),
        {"schema": target_parts[-2] if len(target_parts) >= 2 else None, "table": target_parts[-1]},
        timeout=timeout,
    )
    names = [str(d[0]).upper() for d in cursor.description]
    casts: dict[str, str] = {}
    spatial: set[str] = set()
    for row in cursor.fetchall():
        field = dict(zip(names, row, strict=False))
        column, kind = str(field.get("COLUMN_NAME")), str(field.get("DATA_TYPE") or "").upper()
        if kind in q.SPATIAL_TYPES:
            spatial.add(column)
        cast = q.comparison_cast(
            kind, field.get("NUMERIC_PRECISION"), field.get("NUMERIC_SCALE"), field.get("DATETIME_PRECISION")
        )
        if cast:
            casts[column] = cast
    return casts, spatial


def _count(cursor: Any) -> int:
    return max(int(cursor.rowcount or 0), 0)


def _write(cursor: Any, shape: q.LoadShape, condition: str, params: dict[str, Any], timeout: float) -> tuple[int, int]:
    """Delete changed target rows, insert new and changed ones; (rows written, rows that replaced one)."""
    replaced = 0
    delete = q.delete_changed(shape, condition)
    if delete:
        replaced = _count(audit.run(cursor, delete, params, timeout=timeout))
    written = _count(audit.run(cursor, q.insert_missing(shape, condition), params, timeout=timeout))
    return written, min(replaced, written)


def run_load(
    connector: SnowflakeConnector,
    target: LoadTarget,
    *,
    kind: Literal["incremental", "reconcile"],
    pipeline: str,
    audit_table: str | None,
    lookback_seconds: float = 0.0,
    dbt_run_id: int | None = None,
    dbt_job_id: int | None = None,
    dbt_account_id: int | None = None,
    dbt_finished_at: datetime | None = None,
    check_newer_run: bool = True,
    propagate_deletes: bool = False,
    lock_timeout_seconds: float = DEFAULT_LOCK_TIMEOUT_SECONDS,
    statement_timeout_seconds: float = DEFAULT_STATEMENT_TIMEOUT_SECONDS,
    log: Any = None,
) -> LoadReport:
    """One load or reconcile of ``target`` and its audit row, in one transaction after the target's lock."""
    lock_timeout = _seconds(lock_timeout_seconds, "lock_timeout_seconds")
    timeout = _seconds(statement_timeout_seconds, "statement_timeout_seconds")
    finished_at = audit.aware(dbt_finished_at)  # a naive value is UTC, never the machine's local time
    if kind == "incremental" and finished_at is None:
        raise StaleDataError(
            f"Load {target.name!r}: the dbt run has no finished_at, so there is no watermark; nothing loaded."
        )
    source_parts = q.split_table(target.source_table, "source table")
    target_parts = q.split_table(target.target_table, "target table")
    audit_parts = q.split_table(audit_table or default_audit_table(target.target_table), "audit table")
    # Beside the target and its own, so that every load of one target shares it whatever audit table each names,
    # and a transaction left open on another target never blocks this one.
    lock_parts = audit.lock_table(target_parts)
    source_name, target_name = q.table_display(source_parts), q.table_display(target_parts)
    connection = open_load_connection(connector, lock_timeout_seconds=lock_timeout, statement_timeout_seconds=timeout)
    try:
        cursor = connection.cursor()
        audit.ensure_audit_table(cursor, audit_parts, timeout)
        audit.ensure_lock_row(cursor, lock_parts, target_name, timeout)
        shape = _resolve_shape(cursor, target, timeout)
        _take_lock(cursor, lock_parts, target_name, lock_timeout, timeout)
        try:
            last_watermark, last_finished = audit.last_load(
                cursor, audit_parts, source=source_name, target=target_name, timeout=timeout
            )
            if (
                kind == "incremental"
                and dbt_run_id is not None
                and audit.loaded_runs(
                    cursor, audit_parts, source=source_name, target=target_name, run_id=dbt_run_id, timeout=timeout
                )
            ):
                # A retry of the flow after a partial failure: this target already has this run's data.
                _rollback(cursor, timeout, log)
                if log is not None:
                    log.info(
                        "%s already holds dbt run %s's data from %s: nothing to do.",
                        target_name,
                        dbt_run_id,
                        source_name,
                    )
                return LoadReport(
                    target=target.name,
                    target_table=target.target_table,
                    source_table=target.source_table,
                    rows_loaded=0,
                    already_loaded=True,
                    lookback_seconds=lookback_seconds,
                    watermark_from=None,
                    watermark_to=finished_at,
                    dbt_run_id=dbt_run_id,
                )
            if propagate_deletes:
                others = audit.other_sources(
                    cursor, audit_parts, source=source_name, target=target_name, timeout=timeout
                )
                if others:
                    raise StaleDataError(
                        f"propagate_deletes would delete from {target.target_table} the rows that "
                        f"{', '.join(others)} loaded into it too; nothing changed. Reconcile without "
                        "propagate_deletes, or give each source a target of its own."
                    )
            if kind == "incremental" and finished_at is not None:
                if check_newer_run and last_finished is not None and finished_at <= last_finished:
                    raise StaleDataError(
                        f"dbt run {dbt_run_id} finished at {finished_at.isoformat()}, not after the last load of "
                        f"{target.target_table} from {target.source_table} (dbt finished_at "
                        f"{last_finished.isoformat()}): its data is not newer; nothing loaded (set "
                        "check_newer_run=False to allow it)."
                    )
                upper = finished_at
                lower = last_watermark - timedelta(seconds=lookback_seconds) if last_watermark else None
                condition = q.incremental_condition(shape, lower is not None)
            else:
                if last_watermark is None:
                    raise StaleDataError(
                        f"No incremental load of {target.target_table} from {target.source_table} is audited yet, "
                        "so there is no run to reconcile up to; run the ETL flow first. Nothing changed."
                    )
                upper, lower = last_watermark, None
                condition = q.reconcile_condition(shape)
            params = {"wm_to": audit.naive_utc(upper), "wm_from": audit.naive_utc(lower) if lower else None}
            audit.run(cursor, q.invalid_row_counts(shape, condition), params, timeout=timeout)
            counts = cursor.fetchone() or (0, 0, 0)
            null_watermark, future_watermark, null_key = (int(v or 0) for v in counts)
            if kind == "reconcile":
                null_watermark = future_watermark = 0  # a reconcile takes the first; the next load the second
            invalid = {
                "a NULL key": null_key,
                "a NULL watermark": null_watermark,
                f"a watermark after {upper.isoformat()}": future_watermark,
            }
            skipped = ", ".join(f"{n} row(s) with {what}" for what, n in invalid.items() if n)
            if skipped and target.on_invalid_rows == "fail":
                raise InvalidRowsError(
                    f"Load {target.name!r}: {skipped} in {target.source_table}; nothing loaded (on_invalid_rows='fail'). Fix the rows, or set "
                    "on_invalid_rows='skip' to load the rest and report them."
                )
            duplicates = 0
            if kind == "reconcile":
                duplicates = _count(audit.run(cursor, q.dedupe_target(shape, condition), params, timeout=timeout))
            written, replaced = _write(cursor, shape, condition, params, timeout)
            deleted = 0
            if propagate_deletes:
                deleted = _count(audit.run(cursor, q.delete_gone(shape), params, timeout=timeout))
            audit.write_audit_row(
                cursor,
                audit_parts,
                {
                    "PIPELINE": pipeline,
                    "TARGET": target_name,
                    "SOURCE_TABLE": source_name,
                    "LOAD_KIND": kind,
                    "PREFECT_FLOW_RUN_ID": str(runtime_flow_run.get_id() or ""),
                    "DBT_ACCOUNT_ID": dbt_account_id,
                    "DBT_JOB_ID": dbt_job_id,
                    "DBT_RUN_ID": dbt_run_id,
                    "DBT_STATUS": "Success" if dbt_run_id is not None else None,
                    "DBT_FINISHED_AT": audit.naive_utc(dbt_finished_at) if dbt_finished_at else None,
                    "WATERMARK_FROM": params["wm_from"],
                    "WATERMARK_TO": params["wm_to"],
                    "ROWS_LOADED": written,
                    "ROWS_UPDATED": replaced,
                    "ROWS_DELETED": deleted,
                    "ROWS_NULL_KEY": null_key,
                    "ROWS_NULL_WATERMARK": null_watermark,
                    "ROWS_FUTURE_WATERMARK": future_watermark,
                    "ROWS_DUPLICATES_REMOVED": duplicates,
                    "LOOKBACK_SECONDS": float(lookback_seconds),
                    "LOADED_AT": audit.naive_utc(datetime.now(UTC)),
                },
                timeout,
            )
            audit.run(cursor, "COMMIT", timeout=timeout)
        except BaseException:
            _rollback(cursor, timeout, log)
            raise
    finally:
        connection.close()
    report = LoadReport(
        target=target.name,
        target_table=target.target_table,
        source_table=target.source_table,
        kind=kind,
        rows_loaded=written,
        rows_updated=replaced,
        rows_deleted=deleted,
        rows_null_key=null_key,
        rows_null_watermark=null_watermark,
        rows_future_watermark=future_watermark,
        rows_duplicates_removed=duplicates,
        lookback_seconds=lookback_seconds,
        watermark_from=lower,
        watermark_to=upper,
        dbt_run_id=dbt_run_id,
    )
    if log is not None:
        if skipped:
            log.warning(
                "Load %s skipped %s: they are in no window and were not loaded (on_invalid_rows='skip').",
                target.name,
                skipped,
            )
        log.info(
            "%s %s: %s row(s) written (%s changed, %s new), %s deleted, into %s (watermark %s → %s).",
            "Reconciled" if kind == "reconcile" else "Loaded",
            target.name,
            written,
            replaced,
            written - replaced,
            deleted,
            target.target_table,
            lower.isoformat() if lower else "start",
            upper.isoformat(),
        )
    return report


@task(name="load-snowflake-incremental", cache_policy=NO_CACHE)
def load_incremental(
    connector: SnowflakeConnector,
    target: LoadTarget,
    *,
    dbt_run_id: int,
    dbt_job_id: int,
    dbt_account_id: int,
    dbt_finished_at: datetime | None,
    models: list[ModelResult],
    pipeline: str,
    audit_table: str | None = None,
    check_newer_run: bool = True,
    check_model_built_ok: bool = True,
    lookback_seconds: float = DEFAULT_LOOKBACK_SECONDS,
    lock_timeout_seconds: float = DEFAULT_LOCK_TIMEOUT_SECONDS,
    statement_timeout_seconds: float = DEFAULT_STATEMENT_TIMEOUT_SECONDS,
) -> LoadReport:
    """Load ``target`` for one successful dbt run and write its audit row, in one transaction.

    ``lookback_seconds`` applies when the target does not set its own.
    """
    if check_model_built_ok:
        require_model_built(models, target.source_model)
    lookback = target.lookback_seconds if target.lookback_seconds is not None else lookback_seconds
    check_load_settings(lookback_seconds=lookback)
    return run_load(
        connector,
        target,
        kind="incremental",
        pipeline=pipeline,
        audit_table=audit_table,
        lookback_seconds=float(lookback),
        dbt_run_id=dbt_run_id,
        dbt_job_id=dbt_job_id,
        dbt_account_id=dbt_account_id,
        dbt_finished_at=dbt_finished_at,
        check_newer_run=check_newer_run,
        lock_timeout_seconds=lock_timeout_seconds,
        statement_timeout_seconds=statement_timeout_seconds,
        log=get_run_logger(),
    )
