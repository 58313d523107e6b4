"""The ETL pattern a team copies: dbt Cloud job → gated Snowflake loads on its ``finished_at`` → audit → summary.

On Error, Cancelled or the deadline the ``run_dbt_cloud_job`` subflow alerts and raises: nothing is loaded
and this flow fails. ``dbt_cloud_etl_many`` runs several such pipelines concurrently, each with its own
trigger-wait-branch, and fails after all have finished if any failed, naming each failure.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Literal

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.futures import wait
from prefect_snowflake import SnowflakeConnector
from pydantic import BaseModel, Field

from blocks.dbt_cloud import DbtCloudCredentials
from flows.dbt_cloud import DbtCloudRunError, run_dbt_cloud_job
from tasks.snowflake import LoadReport, LoadTarget, StaleDataError, load_incremental

__all__ = ["EtlFailed", "EtlPipeline", "EtlSummary", "dbt_cloud_etl", "dbt_cloud_etl_many"]


class EtlFailed(Exception):
    """One or more loads (or pipelines) failed; the message names each."""


class EtlSummary(BaseModel):
    """What one ETL cycle did: which dbt run produced the data, and the rows loaded per target."""

    pipeline: str
    dbt_job_id: int
    dbt_run_id: int
    dbt_status: str
    finished_at: datetime | None
    url: str
    loads: list[LoadReport] = Field(default_factory=list)

    @property
    def rows_by_target(self) -> dict[str, int]:
        """Rows loaded per target name."""
        return {load.target: load.rows_loaded for load in self.loads}


class EtlPipeline(BaseModel):
    """One dbt job and the loads gated on it (an item of ``dbt_cloud_etl_many``)."""

    job_id: int = Field(gt=0)
    targets: list[LoadTarget]
    name: str | None = None


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "pipeline"


def _connector(snowflake: SnowflakeConnector | str) -> SnowflakeConnector:
    if isinstance(snowflake, SnowflakeConnector):
        return snowflake
    try:
        return SnowflakeConnector.load(snowflake)
    except ValueError as exc:
        raise ValueError(
            f"No saved Snowflake connector block named {snowflake!r}: create a prefect-snowflake SnowflakeConnector "
            f"block with that name (UI, or SnowflakeConnector(...).save({snowflake!r})). ({exc})"
        ) from None


@flow(name="dbt-cloud-etl")
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
) -> EtlSummary:
    """Run dbt Cloud job ``job_id``; on Success load every target up to the run's ``finished_at`` and audit it.

    ``snowflake``: a prefect-snowflake ``SnowflakeConnector`` block or the name of a saved one.
    ``check_newer_run`` refuses a run not newer than the last one audited for a target; ``check_model_built``
    refuses a target whose source model did not build successfully in this run. Both refuse with nothing loaded.
    """
    log = get_run_logger()
    if not targets:
        raise ValueError("targets is empty: give at least one LoadTarget to load after the dbt run.")
    name = pipeline or f"dbt-job-{job_id}"
    connector = _connector(snowflake)
    dbt = run_dbt_cloud_job(
        job_id,
        credentials,
        poll_interval_seconds=poll_interval_seconds,
        max_wait_seconds=max_wait_seconds,
        native_schedule=native_schedule,
        alert_blocks=alert_blocks,
    )
    assert dbt.finished_at is not None, "a successful run always has finished_at"
    reports: list[LoadReport] = []
    failures: list[str] = []
    for target in targets:
        try:
            reports.append(
                load_incremental(
                    connector,
                    target,
                    dbt_run_id=dbt.run_id,
                    dbt_job_id=dbt.job_id,
                    dbt_account_id=dbt.account_id,
                    dbt_finished_at=dbt.finished_at,
                    models=dbt.models,
                    pipeline=name,
                    audit_table=audit_table,
                    check_newer_run=check_newer_run,
                    check_model_built_ok=check_model_built,
                )
            )
        except (StaleDataError, ValueError) as exc:
            failures.append(f"{target.name}: {exc}")
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
        f"| {r.target} | {r.target_table} | {r.rows_loaded} | {r.watermark_from or 'start'} | "
        f"{r.watermark_to.isoformat()} |"
        for r in reports
    )
    create_markdown_artifact(
        key=f"dbt-cloud-etl-{_slug(name)}",
        markdown=(
            f"## {name}: dbt Cloud run [{dbt.run_id}]({dbt.url}) — {dbt.status}\n\n"
            f"finished_at (watermark): **{dbt.finished_at.isoformat()}**\n\n"
            "| target | table | rows loaded | from | to |\n|---|---|---|---|---|\n"
            + rows
            + ("\n\n### Refused loads\n\n" + "\n".join(f"- {f}" for f in failures) if failures else "")
        ),
        description=f"ETL cycle of {name}",
    )
    if failures:
        raise EtlFailed(f"{len(failures)} load(s) of {name} refused or failed: " + "; ".join(failures))
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


@flow(name="dbt-cloud-etl-many")
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
) -> list[EtlSummary]:
    """Run several ETL pipelines concurrently; fail after all finished if any failed, naming each failed run."""
    if not pipelines:
        raise ValueError("pipelines is empty.")
    options: dict[str, Any] = {
        "credentials": credentials,
        "poll_interval_seconds": poll_interval_seconds,
        "max_wait_seconds": max_wait_seconds,
        "native_schedule": native_schedule,
        "alert_blocks": alert_blocks,
        "check_newer_run": check_newer_run,
        "check_model_built": check_model_built,
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
