"""The ETL pattern a team copies: dbt Cloud job → gated Snowflake loads on its ``finished_at`` → audit → summary.

On Error, Cancelled or the deadline the ``run_dbt_cloud_job`` subflow alerts and raises: nothing is loaded
and this flow fails. On Success every target is attempted, each on its own connection and in its own
transaction; the flow fails after all of them if any failed, naming each. ``dbt_cloud_etl_many`` runs several
such pipelines concurrently, each with its own trigger-wait-branch, and fails after all have finished if any
failed, naming each failure.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.futures import wait
from prefect_snowflake import SnowflakeConnector

from dbt_cloud_gate.blocks.dbt_cloud import DbtCloudCredentials
from dbt_cloud_gate.errors import DbtCloudRunError, EtlFailed
from dbt_cloud_gate.flows.dbt_cloud import cancel_runs_below, run_dbt_cloud_job
from dbt_cloud_gate.loads import (
    DEFAULT_LOCK_TIMEOUT_SECONDS,
    DEFAULT_LOOKBACK_SECONDS,
    DEFAULT_STATEMENT_TIMEOUT_SECONDS,
    attempt_each,
)
from dbt_cloud_gate.models import EtlPipeline, EtlSummary, LoadTarget
from dbt_cloud_gate.settings import LoadSettings
from dbt_cloud_gate.tasks.snowflake import load_snowflake_incremental

__all__ = ["DEFAULT_LOOKBACK_SECONDS", "EtlFailed", "EtlPipeline", "EtlSummary", "dbt_cloud_etl", "dbt_cloud_etl_many"]


def artifact_slug(text: str) -> str:
    """``text`` as the tail of a Prefect artifact key (lowercase letters, digits and dashes only)."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "pipeline"


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


@flow(name="dbt-cloud-etl", on_cancellation=[cancel_runs_below])
def dbt_cloud_etl(
    job_id: int,
    targets: list[LoadTarget],
    snowflake: SnowflakeConnector | str,
    credentials: DbtCloudCredentials | str | None = None,
    *,
    pipeline: str | None = None,
    poll_interval_seconds: float = 30,
    max_wait_seconds: float = 7200,
    native_schedule: Literal["warn", "fail", "disable"] = "warn",
    alert_blocks: list[str] | None = None,
    audit_table: str | None = None,
    check_newer_run: bool = True,
    check_model_built: bool = True,
    lookback_seconds: float = DEFAULT_LOOKBACK_SECONDS,
    lock_timeout_seconds: float = DEFAULT_LOCK_TIMEOUT_SECONDS,
    statement_timeout_seconds: float = DEFAULT_STATEMENT_TIMEOUT_SECONDS,
    run_id: int | None = None,
    webhooks: bool = False,
    fallback_poll_seconds: float = 120,
) -> EtlSummary:
    """Run dbt Cloud job ``job_id``; on Success load every target up to the run's ``finished_at`` and audit it.

    Args:
        job_id: The dbt Cloud job to trigger.
        targets: The loads gated on the run: source model table, target table, key and watermark columns.
        snowflake: A prefect-snowflake SnowflakeConnector block, or the name of a saved one.
        credentials: A dbt Cloud Gate Credentials block or its name; empty: DBT_CLOUD_CREDENTIALS_BLOCK or the
            DBT_CLOUD_* environment variables.
        pipeline: A label for logs, the artifact and the audit history; default dbt-job-{job_id}.
        poll_interval_seconds: The longest gap between two polls of the run, in seconds (so an early Error or a cancel
            is seen at most this late); with adaptive polling, polls come every 8.5 s only where the run is likely to
            end.
        max_wait_seconds: Give up on the run after this long (it is then cancelled, and the flow fails).
        native_schedule: What to do when the job's own dbt Cloud schedule is on: warn, fail, or disable it.
        alert_blocks: Notification blocks alerted when the run fails, as type-slug/name.
        audit_table: The audit table; default DBT_CLOUD_GATE_AUDIT beside each target.
        check_newer_run: Refuse a run that finished no later than the last one loaded for a target.
        check_model_built: Refuse a target whose source model did not build successfully in this run.
        lookback_seconds: Start each window this long before the last watermark (targets may set their own);
            0 is exact only for a watermark dbt stamps as it writes the row.
        lock_timeout_seconds: How long a load waits for its target's write lock before failing.
        statement_timeout_seconds: The longest any one statement of a load may run.
        run_id: Load after this run of job_id, started elsewhere (dbt Cloud's scheduler, CI), instead of
            triggering the job: what a deployment trigger on the run's webhook event passes.
        webhooks: End the wait on the run's dbt Cloud webhook event instead of polling for it (needs a Prefect
            server and the webhook receiver; without them it polls).
        fallback_poll_seconds: With webhooks, also poll the run this often (a cancelled run sends no webhook).
    """
    log = get_run_logger()
    if not targets:
        raise ValueError("targets is empty: give at least one LoadTarget to load after the dbt run.")
    # Before the dbt run is triggered: a setting that cannot work must not cost a run.
    settings = LoadSettings(
        lookback_seconds=lookback_seconds,
        lock_timeout_seconds=lock_timeout_seconds,
        statement_timeout_seconds=statement_timeout_seconds,
        audit_table=audit_table,
        check_newer_run=check_newer_run,
        check_model_built=check_model_built,
    )
    name = pipeline or f"dbt-job-{job_id}"
    connector = resolve_connector(snowflake)
    dbt = run_dbt_cloud_job(
        job_id,
        credentials,
        poll_interval_seconds=poll_interval_seconds,
        max_wait_seconds=max_wait_seconds,
        native_schedule=native_schedule,
        alert_blocks=alert_blocks,
        run_id=run_id,
        webhooks=webhooks,
        fallback_poll_seconds=fallback_poll_seconds,
    )
    if dbt.finished_at is None:  # the wait refuses such a run; never load without a watermark
        raise EtlFailed(f"dbt Cloud run {dbt.run_id} succeeded without finished_at: no watermark, nothing loaded.")
    # Every target is attempted: one failing (refused, or a database error) does not stop the others.
    reports, failures = attempt_each(
        targets,
        lambda target: load_snowflake_incremental(
            connector,
            target,
            dbt_run_id=dbt.run_id,
            dbt_job_id=dbt.job_id,
            dbt_account_id=dbt.account_id,
            dbt_finished_at=dbt.finished_at,
            models=dbt.models,
            pipeline=name,
            settings=settings,
        ),
        log,
    )
    summary = EtlSummary(
        pipeline=name,
        dbt_job_id=job_id,
        dbt_run_id=dbt.run_id,
        dbt_status=dbt.status,
        finished_at=dbt.finished_at,
        url=dbt.url,
        loads=reports,
    )
    rows = "\n".join(
        f"| {r.target} | {r.target_table} | {r.rows_loaded}{' (already loaded)' if r.already_loaded else ''} | "
        f"{r.rows_updated} | {r.rows_null_key} | "
        f"{r.rows_null_watermark} | {r.rows_future_watermark} | "
        f"{r.watermark_from.isoformat() if r.watermark_from else 'start'} | "
        f"{r.watermark_to.isoformat() if r.watermark_to else ''} |"
        for r in reports
    )
    skipped = [r for r in reports if r.rows_skipped]
    create_markdown_artifact(
        key=f"dbt-cloud-etl-{artifact_slug(name)}",
        markdown=(
            f"## {name}: dbt Cloud run [{dbt.run_id}]({dbt.url}) — {dbt.status}\n\n"
            f"finished_at (watermark): **{dbt.finished_at.isoformat()}**\n\n"
            "| target | table | rows written | of which changed | skipped: NULL key | skipped: NULL watermark | "
            "skipped: watermark after the run | window from | to |\n|---|---|---|---|---|---|---|---|---|\n"
            + rows
            + (
                "\n\n**Rows skipped** (in no window, not loaded): "
                + ", ".join(f"{r.target}: {r.rows_skipped}" for r in skipped)
                if skipped
                else ""
            )
            + ("\n\n### Failed or refused loads\n\n" + "\n".join(f"- {f}" for f in failures) if failures else "")
        ),
        description=f"ETL cycle of {name}",
    )
    if failures:
        raise EtlFailed(
            f"{len(failures)} of {len(targets)} load(s) of {name} refused or failed: " + "; ".join(failures)
        )
    log.info(
        "ETL %s: dbt run %s, finished_at %s, rows %s.",
        name,
        dbt.run_id,
        dbt.finished_at.isoformat(),
        summary.rows_by_target,
    )
    return summary


@task(name="etl-pipeline", cache_policy=NO_CACHE)
def _pipeline_task(item: EtlPipeline, snowflake: SnowflakeConnector | str, options: dict[str, Any]) -> EtlSummary:
    return dbt_cloud_etl(item.job_id, item.targets, snowflake, pipeline=item.name, **options)


@flow(name="dbt-cloud-etl-many", on_cancellation=[cancel_runs_below])
def dbt_cloud_etl_many(
    pipelines: list[EtlPipeline],
    snowflake: SnowflakeConnector | str,
    credentials: DbtCloudCredentials | str | None = None,
    *,
    poll_interval_seconds: float = 30,
    max_wait_seconds: float = 7200,
    native_schedule: Literal["warn", "fail", "disable"] = "warn",
    alert_blocks: list[str] | None = None,
    check_newer_run: bool = True,
    check_model_built: bool = True,
    lookback_seconds: float = DEFAULT_LOOKBACK_SECONDS,
    lock_timeout_seconds: float = DEFAULT_LOCK_TIMEOUT_SECONDS,
    statement_timeout_seconds: float = DEFAULT_STATEMENT_TIMEOUT_SECONDS,
) -> list[EtlSummary]:
    """Run several ETL pipelines concurrently; fail after all finished if any failed, naming each failed run.

    The pipelines share the connector block, not a connection: every load opens a connection of its own.

    Args:
        pipelines: The pipelines: each a dbt Cloud job and the loads gated on it.
        snowflake: A prefect-snowflake SnowflakeConnector block, or the name of a saved one.
        credentials: A dbt Cloud Gate Credentials block or its name; empty: DBT_CLOUD_CREDENTIALS_BLOCK or the
            DBT_CLOUD_* environment variables.
        poll_interval_seconds: The longest gap between two polls of the run, in seconds (so an early Error or a cancel
            is seen at most this late); with adaptive polling, polls come every 8.5 s only where the run is likely to
            end.
        max_wait_seconds: Give up on a run after this long (it is then cancelled, and its pipeline fails).
        native_schedule: What to do when a job's own dbt Cloud schedule is on: warn, fail, or disable it.
        alert_blocks: Notification blocks alerted when a run fails, as type-slug/name.
        check_newer_run: Refuse a run that finished no later than the last one loaded for a target.
        check_model_built: Refuse a target whose source model did not build successfully in its run.
        lookback_seconds: Start each window this long before the last watermark (targets may set their own).
        lock_timeout_seconds: How long a load waits for its target's write lock before failing.
        statement_timeout_seconds: The longest any one statement of a load may run.
    """
    if not pipelines:
        raise ValueError("pipelines is empty.")
    LoadSettings(  # refused before any pipeline starts; each dbt_cloud_etl builds its own
        lookback_seconds=lookback_seconds,
        lock_timeout_seconds=lock_timeout_seconds,
        statement_timeout_seconds=statement_timeout_seconds,
    )
    options: dict[str, Any] = {
        "credentials": credentials,
        "poll_interval_seconds": poll_interval_seconds,
        "max_wait_seconds": max_wait_seconds,
        "native_schedule": native_schedule,
        "alert_blocks": alert_blocks,
        "check_newer_run": check_newer_run,
        "check_model_built": check_model_built,
        "lookback_seconds": lookback_seconds,
        "lock_timeout_seconds": lock_timeout_seconds,
        "statement_timeout_seconds": statement_timeout_seconds,
    }
    futures = [_pipeline_task.submit(item, snowflake, options) for item in pipelines]
    wait(futures)
    summaries: list[EtlSummary] = []
    failures: list[str] = []
    for item, future in zip(pipelines, futures, strict=True):
        label = item.name or f"dbt-job-{item.job_id}"
        try:
            summaries.append(future.result())
        except DbtCloudRunError as exc:
            failures.append(f"{label}: dbt Cloud run {exc.run_id} {exc.status} ({exc.url})")
        except Exception as exc:
            failures.append(f"{label}: {type(exc).__name__}: {exc}")
    if failures:
        raise EtlFailed(f"{len(failures)} of {len(pipelines)} pipeline(s) failed: " + "; ".join(failures))
    return summaries
