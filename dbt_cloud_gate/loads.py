"""Snowflake loads gated on a dbt Cloud run, with an audit history of which run produced each load.

An incremental load takes the source model's rows whose watermark lies in ``(last audited watermark - lookback,
the run's finished_at]`` and writes those whose key is new or whose content differs (one row per key: the latest
watermark wins, ties broken by content). Rows with a NULL key, a NULL watermark or a watermark after the run's
end are counted, reported and (policy ``on_invalid_rows``) skipped with a warning or refused. A reconcile
compares the whole source with the target up to the last audited watermark and loads what is missing or
different, optionally deleting target keys gone from the source (behind the guards of
``dbt_cloud_gate.reconcile_guard``), or only counts all that in a dry run, which rolls its transaction back.

A load reads in three steps: :func:`plan_load` decides, without I/O, what to load where (tables, lock, audit
table, lookback); :func:`run_load` executes the plan on a connection of its own, with lock-wait and statement
timeouts; the audit row is the last write of its transaction. In that one transaction it first takes its
target's write lock (``dbt_cloud_gate.audit``), registers its source (``dbt_cloud_gate.sources``), then reads
the guard and the watermark, counts, writes and appends its audit row: a failure leaves none of it, and loads of
one target serialize.

Upsert as DELETE + INSERT rather than MERGE: the same result on the key columns, and it also runs on fakesnow,
where a MERGE inside an explicit transaction fails (DuckDB writes one database per transaction).

The Prefect tasks that call this live in ``tasks/``; nothing here imports Prefect (logging goes to the logger
the caller passes); Prefect's SnowflakeConnector is only a type hint here.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from dbt_cloud_gate import audit, sources
from dbt_cloud_gate import loads_sql as q
from dbt_cloud_gate.dbtcloud_api import ModelResult
from dbt_cloud_gate.errors import InvalidRowsError, LoadLockTimeout, StaleDataError
from dbt_cloud_gate.models import LoadReport, LoadTarget
from dbt_cloud_gate.reconcile_guard import DeleteCheck, check_deletes
from dbt_cloud_gate.settings import LOAD, RECONCILE, LoadSettings, ReconcileSettings

if TYPE_CHECKING:
    from prefect_snowflake import SnowflakeConnector

__all__ = [
    "DbtRunRef",
    "LoadKind",
    "LoadPlan",
    "Logger",
    "attempt_each",
    "default_audit_table",
    "describe_load_failure",
    "ensure_model_built",
    "open_load_connection",
    "plan_load",
    "quote_identifier",
    "quote_table",
    "run_load",
]

LoadKind = Literal["incremental", "reconcile"]
Logger = logging.Logger | logging.LoggerAdapter[Any]

SUCCESS_MODEL_STATUSES = frozenset({"success"})
_LOG = logging.getLogger(__name__)


# --- Helpers of the flows and tasks -------------------------------------------------------------------------


def describe_load_failure(name: str, exc: Exception) -> str:
    """One line for a failed load: refusals as they are worded, other errors with their type."""
    plain = isinstance(exc, StaleDataError | ValueError | LoadLockTimeout)
    return f"{name}: {exc}" if plain else f"{name}: {type(exc).__name__}: {exc}"


def attempt_each(
    targets: list[LoadTarget], call: Callable[[LoadTarget], LoadReport], log: Logger, what: str = "Load"
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


def ensure_model_built(models: list[ModelResult], source_model: str) -> None:
    """Refuse (``StaleDataError``) when the source model did not build successfully in this run: the guard
    that ``LoadSettings.check_model_built`` turns on."""
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


def default_audit_table(target_table: str) -> str:
    """The audit table beside the target (same database and schema): DATABASE.SCHEMA.DBT_CLOUD_GATE_AUDIT."""
    return q.table_display(audit.sibling(q.split_table(target_table), audit.AUDIT_TABLE))


def open_load_connection(connector: SnowflakeConnector, settings: LoadSettings) -> Any:
    """A new connection for one load (never the connector's shared cached one), with its session's lock-wait
    and statement timeouts set, in UTC."""
    return connector.credentials.get_client(
        database=connector.database,
        warehouse=connector.warehouse,
        schema=connector.schema_,
        session_parameters={
            "TIMEZONE": "UTC",
            "LOCK_TIMEOUT": max(1, math.ceil(settings.lock_timeout_seconds)),
            "STATEMENT_TIMEOUT_IN_SECONDS": max(1, math.ceil(settings.statement_timeout_seconds)),
        },
    )


# --- Plan: what to load where, no I/O ----------------------------------------------------------------------


@dataclass(frozen=True)
class DbtRunRef:
    """The dbt Cloud run a load is gated on, as the audit row records it."""

    run_id: int | None = None
    job_id: int | None = None
    account_id: int | None = None
    finished_at: datetime | None = None  # UTC-aware: the incremental load's upper watermark


@dataclass(frozen=True)
class LoadPlan:
    """One load, decided before any I/O: its tables (exact parts), its lock, registry and audit tables, its
    settings (``reconcile``: what a reconcile may change; an incremental load ignores it)."""

    target: LoadTarget
    kind: LoadKind
    pipeline: str
    settings: LoadSettings
    run: DbtRunRef
    lookback_seconds: float
    reconcile: ReconcileSettings
    flow_run_id: str  # the lock holder and the audit row's PREFECT_FLOW_RUN_ID
    source_parts: list[str]
    target_parts: list[str]
    audit_parts: list[str]
    lock_parts: list[str]
    registry_parts: list[str]

    @property
    def propagate_deletes(self) -> bool:
        """A reconcile that deletes target keys gone from the source."""
        return self.kind == "reconcile" and self.reconcile.propagate_deletes

    @property
    def dry_run(self) -> bool:
        """A reconcile that counts and rolls back, writing nothing."""
        return self.kind == "reconcile" and self.reconcile.dry_run

    @property
    def source_name(self) -> str:
        """The source table as the audit history and the logs name it."""
        return q.table_display(self.source_parts)

    @property
    def target_name(self) -> str:
        """The target table as the audit history, the lock row and the logs name it."""
        return q.table_display(self.target_parts)

    @property
    def timeout(self) -> float:
        """The statement timeout of every statement of the load."""
        return self.settings.statement_timeout_seconds


def plan_load(
    target: LoadTarget,
    *,
    kind: LoadKind,
    pipeline: str,
    settings: LoadSettings = LOAD,
    run: DbtRunRef | None = None,
    reconcile: ReconcileSettings = RECONCILE,
    flow_run_id: str = "",
) -> LoadPlan:
    """Decide one load or reconcile of ``target``; refuse an incremental load without a watermark."""
    run = run or DbtRunRef()
    # A naive finished_at is UTC, never the machine's local time.
    run = DbtRunRef(run.run_id, run.job_id, run.account_id, audit.aware(run.finished_at))
    if kind == "incremental" and run.finished_at is None:
        raise StaleDataError(
            f"Load {target.name!r}: the dbt run has no finished_at, so there is no watermark; nothing loaded."
        )
    lookback = 0.0
    if kind == "incremental":  # a target's own lookback wins over the flow's
        lookback = float(target.lookback_seconds if target.lookback_seconds is not None else settings.lookback_seconds)
    target_parts = q.split_table(target.target_table, "target table")
    return LoadPlan(
        target=target,
        kind=kind,
        pipeline=pipeline,
        settings=settings,
        run=run,
        lookback_seconds=lookback,
        reconcile=reconcile,
        flow_run_id=flow_run_id,
        source_parts=q.split_table(target.source_table, "source table"),
        target_parts=target_parts,
        audit_parts=q.split_table(settings.audit_table or default_audit_table(target.target_table), "audit table"),
        # Beside the target and its own, so that every load of one target shares it whatever audit table each
        # names, and a transaction left open on another target never blocks this one.
        lock_parts=audit.lock_table(target_parts),
        # Beside the lock table, and written under it: every source of the target, whatever its audit table.
        registry_parts=sources.registry_table(target_parts),
    )


@dataclass(frozen=True)
class Window:
    """The source rows a load takes: the watermark bounds and the SQL condition over them."""

    lower: datetime | None
    upper: datetime
    condition: str

    @property
    def params(self) -> dict[str, Any]:
        """The bound values of ``condition``."""
        return {"wm_to": audit.naive_utc(self.upper), "wm_from": audit.naive_utc(self.lower) if self.lower else None}


@dataclass(frozen=True)
class Counts:
    """What a load found and did, row by row."""

    null_key: int = 0
    null_watermark: int = 0
    future_watermark: int = 0
    duplicates: int = 0
    written: int = 0
    replaced: int = 0
    deleted: int = 0

    def skipped(self, upper: datetime) -> str:
        """The rows no load takes, in words ("" when there are none)."""
        invalid = {
            "a NULL key": self.null_key,
            "a NULL watermark": self.null_watermark,
            f"a watermark after {upper.isoformat()}": self.future_watermark,
        }
        return ", ".join(f"{n} row(s) with {what}" for what, n in invalid.items() if n)


def _window(
    plan: LoadPlan, shape: q.LoadShape, last_watermark: datetime | None, last_finished: datetime | None
) -> Window:
    """The rows to take: after the last watermark (less the lookback) up to the run's end; a reconcile takes
    everything up to the last watermark. Refuses a run no newer than the last one loaded."""
    target, finished_at = plan.target, plan.run.finished_at
    if plan.kind == "reconcile":
        if last_watermark is None:
            raise StaleDataError(
                f"No incremental load of {target.target_table} from {target.source_table} is audited yet, "
                "so there is no run to reconcile up to; run the ETL flow first. Nothing changed."
            )
        return Window(None, last_watermark, q.reconcile_condition(shape))
    assert finished_at is not None  # plan_load refuses an incremental load without it
    if plan.settings.check_newer_run and last_finished is not None and finished_at <= last_finished:
        raise StaleDataError(
            f"dbt run {plan.run.run_id} finished at {finished_at.isoformat()}, not after the last load of "
            f"{target.target_table} from {target.source_table} (dbt finished_at "
            f"{last_finished.isoformat()}): its data is not newer; nothing loaded (set "
            "check_newer_run=False to allow it)."
        )
    lower = last_watermark - timedelta(seconds=plan.lookback_seconds) if last_watermark else None
    return Window(lower, finished_at, q.incremental_condition(shape, lower is not None))


# --- Execute: on a cursor, in one transaction ----------------------------------------------------------------


def run_load(connector: SnowflakeConnector, plan: LoadPlan, log: Logger = _LOG) -> LoadReport:
    """Execute ``plan`` and write its audit row, in one transaction after the target's lock; log the outcome."""
    connection = open_load_connection(connector, plan.settings)
    try:
        cursor = connection.cursor()
        audit.ensure_audit_table(cursor, plan.audit_parts, plan.timeout)
        audit.ensure_lock_row(cursor, plan.lock_parts, plan.target_name, plan.timeout)
        sources.ensure_registry(cursor, plan.registry_parts, plan.timeout)
        shape = _resolve_shape(cursor, plan)
        audit.take_lock(
            cursor,
            plan.lock_parts,
            key=plan.target_name,
            holder=plan.flow_run_id,
            budget=plan.settings.lock_timeout_seconds,
            timeout=plan.timeout,
        )
        try:
            report = _load_locked(cursor, plan, shape, log)
        except BaseException:
            audit.rollback(cursor, plan.timeout, log)
            raise
    finally:
        connection.close()
    if not report.already_loaded:
        _log_report(report, log)
    return report


def _load_locked(cursor: Any, plan: LoadPlan, shape: q.LoadShape, log: Logger) -> LoadReport:
    """Under the lock: the guards, the registry, the window, the counts, the writes, the audit row and COMMIT
    (or, for a run already loaded or a dry run, ROLLBACK)."""
    source, target, timeout = plan.source_name, plan.target_name, plan.timeout
    last_watermark, last_finished = audit.last_load(
        cursor, plan.audit_parts, source=source, target=target, timeout=timeout
    )
    if _already_loaded(cursor, plan):
        # A retry of the flow after a partial failure: this target already has this run's data.
        audit.rollback(cursor, timeout, log)
        log.info("%s already holds dbt run %s's data from %s: nothing to do.", target, plan.run.run_id, source)
        return _report(plan, Counts(), None, plan.run.finished_at, already_loaded=True)
    sources.register(
        cursor,
        plan.registry_parts,
        target=target,
        source=source,
        audit_parts=plan.audit_parts,
        pipeline=plan.pipeline,
        at=datetime.now(UTC),
        timeout=timeout,
    )
    window = _window(plan, shape, last_watermark, last_finished)
    deletes = check_deletes(cursor, plan, shape) if plan.propagate_deletes else None
    if deletes is not None:
        deletes.enforce(plan.dry_run)
    counts = _write(cursor, plan, shape, window, _count_invalid(cursor, plan, shape, window), deletes)
    if plan.dry_run:
        audit.rollback(cursor, timeout, log)
        refused = deletes.refusal if deletes else None
        return _report(plan, counts, window.lower, window.upper, deletes_refused=refused)
    audit.write_audit_row(cursor, plan.audit_parts, _audit_values(plan, window, counts), timeout)
    audit.run(cursor, "COMMIT", timeout=timeout)
    return _report(plan, counts, window.lower, window.upper)


def _already_loaded(cursor: Any, plan: LoadPlan) -> bool:
    """An incremental load of this very run is audited for this source and target."""
    run_id = plan.run.run_id
    if plan.kind != "incremental" or run_id is None:
        return False
    audited = audit.loaded_runs(
        cursor, plan.audit_parts, source=plan.source_name, target=plan.target_name, run_id=run_id, timeout=plan.timeout
    )
    return audited > 0


def _count_invalid(cursor: Any, plan: LoadPlan, shape: q.LoadShape, window: Window) -> Counts:
    """Count the rows no load takes; refuse them when the target's policy is ``on_invalid_rows='fail'``."""
    audit.run(cursor, q.invalid_row_counts(shape, window.condition), window.params, timeout=plan.timeout)
    null_watermark, future_watermark, null_key = (int(v or 0) for v in cursor.fetchone() or (0, 0, 0))
    if plan.kind == "reconcile":
        null_watermark = future_watermark = 0  # a reconcile takes the first; the next load the second
    counts = Counts(null_key=null_key, null_watermark=null_watermark, future_watermark=future_watermark)
    skipped = counts.skipped(window.upper)
    if skipped and plan.target.on_invalid_rows == "fail":
        raise InvalidRowsError(
            f"Load {plan.target.name!r}: {skipped} in {plan.target.source_table}; nothing loaded "
            "(on_invalid_rows='fail'). Fix the rows, or set on_invalid_rows='skip' to load the rest and report them."
        )
    return counts


def _rowcount(cursor: Any) -> int:
    return max(int(cursor.rowcount or 0), 0)


def _write(
    cursor: Any, plan: LoadPlan, shape: q.LoadShape, window: Window, counts: Counts, deletes: DeleteCheck | None
) -> Counts:
    """Remove duplicate keys (reconcile), delete changed target rows, insert new and changed ones, delete keys
    gone from the source (``deletes``, when checked and not refused: a refused dry run reports their count);
    ``counts`` with what was written."""
    condition, params, timeout = window.condition, window.params, plan.timeout
    duplicates = replaced = deleted = 0
    if plan.kind == "reconcile":
        duplicates = _rowcount(audit.run(cursor, q.dedupe_target(shape, condition), params, timeout=timeout))
    delete = q.delete_changed(shape, condition)
    if delete:
        replaced = _rowcount(audit.run(cursor, delete, params, timeout=timeout))
    written = _rowcount(audit.run(cursor, q.insert_missing(shape, condition), params, timeout=timeout))
    if deletes is not None and deletes.refusal:
        deleted = deletes.to_delete
    elif deletes is not None:
        deleted = _rowcount(audit.run(cursor, q.delete_gone(shape), params, timeout=timeout))
        deletes.confirm(deleted, plan.target_name)
    return replace(counts, duplicates=duplicates, written=written, replaced=min(replaced, written), deleted=deleted)


def _resolve_shape(cursor: Any, plan: LoadPlan) -> q.LoadShape:
    """The load's exact names and the target's comparison types; refuses keys or a watermark not copied."""
    target, source_parts, target_parts, timeout = plan.target, plan.source_parts, plan.target_parts, plan.timeout
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


# --- Audit and report ---------------------------------------------------------------------------------------


def _audit_values(plan: LoadPlan, window: Window, counts: Counts) -> dict[str, Any]:
    """The audit row of one load: which run, which window, what was written and skipped."""
    run = plan.run
    return {
        "PIPELINE": plan.pipeline,
        "TARGET": plan.target_name,
        "SOURCE_TABLE": plan.source_name,
        "LOAD_KIND": plan.kind,
        "PREFECT_FLOW_RUN_ID": plan.flow_run_id,
        "DBT_ACCOUNT_ID": run.account_id,
        "DBT_JOB_ID": run.job_id,
        "DBT_RUN_ID": run.run_id,
        "DBT_STATUS": "Success" if run.run_id is not None else None,
        "DBT_FINISHED_AT": audit.naive_utc(run.finished_at) if run.finished_at else None,
        "WATERMARK_FROM": window.params["wm_from"],
        "WATERMARK_TO": window.params["wm_to"],
        "ROWS_LOADED": counts.written,
        "ROWS_UPDATED": counts.replaced,
        "ROWS_DELETED": counts.deleted,
        "ROWS_NULL_KEY": counts.null_key,
        "ROWS_NULL_WATERMARK": counts.null_watermark,
        "ROWS_FUTURE_WATERMARK": counts.future_watermark,
        "ROWS_DUPLICATES_REMOVED": counts.duplicates,
        "LOOKBACK_SECONDS": plan.lookback_seconds,
        "LOADED_AT": audit.naive_utc(datetime.now(UTC)),
    }


def _report(
    plan: LoadPlan,
    counts: Counts,
    lower: datetime | None,
    upper: datetime | None,
    *,
    already_loaded: bool = False,
    deletes_refused: str | None = None,
) -> LoadReport:
    """What the load did, for the flow."""
    target = plan.target
    return LoadReport(
        target=target.name,
        target_table=target.target_table,
        source_table=target.source_table,
        kind=plan.kind,
        rows_loaded=counts.written,
        rows_updated=counts.replaced,
        rows_deleted=counts.deleted,
        rows_null_key=counts.null_key,
        rows_null_watermark=counts.null_watermark,
        rows_future_watermark=counts.future_watermark,
        rows_duplicates_removed=counts.duplicates,
        already_loaded=already_loaded,
        dry_run=plan.dry_run,
        deletes_refused=deletes_refused,
        lookback_seconds=plan.lookback_seconds,
        watermark_from=lower,
        watermark_to=upper,
        dbt_run_id=plan.run.run_id,
    )


def _log_report(report: LoadReport, log: Logger) -> None:
    """Warn of skipped rows, then log what was written."""
    assert report.watermark_to is not None  # a load that wrote has an upper bound
    invalid = Counts(report.rows_null_key, report.rows_null_watermark, report.rows_future_watermark)
    skipped = invalid.skipped(report.watermark_to)
    if skipped:
        log.warning(
            "Load %s skipped %s: they are in no window and were not loaded (on_invalid_rows='skip').",
            report.target,
            skipped,
        )
    if report.deletes_refused:
        log.warning("Dry run of %s: its deletes would be refused: %s", report.target, report.deletes_refused)
    log.info(
        "%s %s: %s row(s) written (%s changed, %s new), %s deleted, into %s (watermark %s → %s).",
        "Dry run (nothing written) of" if report.dry_run else "Reconciled" if report.kind == "reconcile" else "Loaded",
        report.target,
        report.rows_loaded,
        report.rows_updated,
        report.rows_loaded - report.rows_updated,
        report.rows_deleted,
        report.target_table,
        report.watermark_from.isoformat() if report.watermark_from else "start",
        report.watermark_to.isoformat(),
    )
