"""The ETL pattern a team copies: dbt Cloud job → gated Snowflake loads on its ``finished_at`` → audit → summary.

On Error, Cancelled or the deadline the ``run_dbt_cloud_job`` subflow alerts and raises: nothing is loaded
and this flow fails. On Success every target is attempted, each on its own connection and in its own
transaction; the flow fails after all of them if any failed, naming each. ``dbt_cloud_etl_many`` runs several
such pipelines concurrently, each with its own trigger-wait-branch, and fails after all have finished if any
failed, naming each failure.
"""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import wait as futures_wait
from prefect_snowflake import SnowflakeConnector

from dbt_cloud_gate.automations import watched_subflows
from dbt_cloud_gate.blocks.dbt_cloud import DbtCloudCredentials
from dbt_cloud_gate.blocks.snowflake import resolve_connector
from dbt_cloud_gate.cancellation import cancel_runs_below
from dbt_cloud_gate.errors import DbtCloudRunError, EtlFailed
from dbt_cloud_gate.flows.dbt_cloud import run_dbt_cloud_job
from dbt_cloud_gate.loads import attempt_each
from dbt_cloud_gate.models import EtlPipeline, EtlSummary, LoadTarget
from dbt_cloud_gate.preflight import PreflightItem
from dbt_cloud_gate.publish import publish_etl_report
from dbt_cloud_gate.settings import (
    LOAD,
    NO_OVERRIDES,
    START,
    WAIT,
    DbtCloudId,
    LoadSettings,
    StartSettings,
    TriggerOverrides,
    WaitSettings,
)
from dbt_cloud_gate.sync_flow import gate_flow
from dbt_cloud_gate.tasks.preflight import preflight_loads
from dbt_cloud_gate.tasks.snowflake import load_snowflake_incremental
from dbt_cloud_gate.variables import from_variable

__all__ = ["dbt_cloud_etl", "dbt_cloud_etl_many"]


@gate_flow(name="dbt-cloud-etl", on_cancellation=[cancel_runs_below])
def dbt_cloud_etl(
    job_id: DbtCloudId,
    targets: list[LoadTarget] | str,
    snowflake: SnowflakeConnector | str,
    credentials: DbtCloudCredentials | str | None = None,
    *,
    pipeline: str | None = None,
    cause: str | None = None,
    trigger: TriggerOverrides | None = None,
    wait: WaitSettings | None = None,
    start: StartSettings | None = None,
    load: LoadSettings | None = None,
    alert_blocks: list[str] | None = None,
) -> EtlSummary:
    """Run dbt Cloud job ``job_id``; on Success load every target up to the run's ``finished_at`` and audit it.

    Args:
        job_id: The dbt Cloud job to trigger.
        targets: The loads gated on the run (source model table, target table, key and watermark columns), or the
            name of a Prefect variable holding them as JSON (read at each run).
        snowflake: A prefect-snowflake SnowflakeConnector block, or the name of a saved one.
        credentials: A dbt Cloud Gate Credentials block (or prefect-dbt's DbtCloudCredentials) or its name; empty:
            DBT_CLOUD_CREDENTIALS_BLOCK or the DBT_CLOUD_* environment variables.
        pipeline: A label for logs, the artifact and the audit history; default dbt-job-{job_id}.
        cause: Why the run was started, shown in dbt Cloud.
        trigger: Overrides of the job's settings for this run (steps, git branch, schema...); empty: none.
        wait: How to wait for the run (polling, deadline, webhooks); empty: the defaults.
        start: How to start it (a run in flight, the job's own schedule, a rerun, a run started elsewhere: what a
            deployment trigger on the run's webhook event passes as start.run_id).
        load: How the loads run (lookback, lock and statement timeouts, audit table, guards, and the preflight
            that checks every target before the job is triggered).
        alert_blocks: Notification blocks alerted when the run fails, as type-slug/name.
    """
    log = get_run_logger()
    targets = from_variable(targets, LoadTarget, "targets")
    if not targets:
        raise ValueError("targets is empty: give at least one LoadTarget to load after the dbt run.")
    trigger, wait, start, load = trigger or NO_OVERRIDES, wait or WAIT, start or START, load or LOAD
    name = pipeline or f"dbt-job-{job_id}"
    # Before the dbt run is triggered: a connector that cannot be loaded, or a target the loads would refuse, must
    # not cost a run.
    connector = resolve_connector(snowflake)
    if load.preflight:
        preflight_loads(connector, credentials, [PreflightItem("targets", job_id, targets)], load, what=name)
    if load.check_model_built and not wait.model_results:  # the guard is a consumer of the per-model results
        log.info("wait.model_results is off, but load.check_model_built needs the per-model results: reading them.")
        wait = wait.model_copy(update={"model_results": True})
    with watched_subflows():  # a crash of this process ends the subflow too (dbt_cloud_gate.automations)
        dbt = run_dbt_cloud_job(
            job_id, credentials, cause=cause, trigger=trigger, wait=wait, start=start, alert_blocks=alert_blocks
        )
    # Every target is attempted: one failing (refused, or a database error) does not stop the others.
    reports, failures = attempt_each(
        targets,
        lambda target: load_snowflake_incremental(connector, target, dbt, pipeline=name, settings=load),
        log,
    )
    summary = EtlSummary.of_run(name, dbt, reports)
    publish_etl_report(summary, failures, dbt.models if wait.model_results else None)
    if failures:
        raise EtlFailed(
            f"{len(failures)} of {len(targets)} load(s) of {name} refused or failed: " + "; ".join(failures)
        )
    log.info("ETL %s: dbt run %s, finished_at %s, rows %s.", name, dbt.run_id, dbt.finished_at, summary.rows_by_target)
    return summary


@task(name="etl-pipeline", cache_policy=NO_CACHE)
def etl_pipeline(item: EtlPipeline, snowflake: SnowflakeConnector | str, options: dict[str, Any]) -> EtlSummary:
    """One pipeline of ``dbt_cloud_etl_many``: its ``dbt_cloud_etl`` subflow, in a task so that they run at once."""
    return dbt_cloud_etl(item.job_id, item.targets, snowflake, pipeline=item.name, **options)


@gate_flow(name="dbt-cloud-etl-many", on_cancellation=[cancel_runs_below])
def dbt_cloud_etl_many(
    pipelines: list[EtlPipeline] | str,
    snowflake: SnowflakeConnector | str,
    credentials: DbtCloudCredentials | str | None = None,
    *,
    trigger: TriggerOverrides | None = None,
    wait: WaitSettings | None = None,
    start: StartSettings | None = None,
    load: LoadSettings | None = None,
    alert_blocks: list[str] | None = None,
) -> list[EtlSummary]:
    """Run several ETL pipelines concurrently; fail after all finished if any failed, naming each failed run.

    The pipelines share the connector block, not a connection: every load opens a connection of its own, and
    every setting below applies to every pipeline.

    Args:
        pipelines: The pipelines: each a dbt Cloud job and the loads gated on it; or the name of a Prefect variable
            holding them as JSON (read at each run).
        snowflake: A prefect-snowflake SnowflakeConnector block, or the name of a saved one.
        credentials: A dbt Cloud Gate Credentials block (or prefect-dbt's DbtCloudCredentials) or its name; empty:
            DBT_CLOUD_CREDENTIALS_BLOCK or the DBT_CLOUD_* environment variables.
        trigger: Overrides of the jobs' settings for these runs.
        wait: How to wait for each run (polling, deadline, webhooks).
        start: How to start each run (a run in flight, the jobs' own schedules; a rerun or run_id names one run
            and is refused here).
        load: How the loads run (lookback, lock and statement timeouts, audit table, guards, and the preflight
            that checks every pipeline's targets before any job is triggered).
        alert_blocks: Notification blocks alerted when a run fails, as type-slug/name.
    """
    pipelines = from_variable(pipelines, EtlPipeline, "pipelines")
    if not pipelines:
        raise ValueError("pipelines is empty.")
    trigger, wait, start, load = trigger or NO_OVERRIDES, wait or WAIT, start or START, load or LOAD
    if start.run_id is not None or start.retry_failed_run_id is not None:
        raise ValueError("start.run_id and start.retry_failed_run_id name one run: use dbt_cloud_etl for them.")
    if load.preflight:
        # Every pipeline at once, before any is triggered: one pipeline's mistake must not cost the others' runs.
        items = [
            PreflightItem(f"pipelines[{i}].targets", item.job_id, item.targets) for i, item in enumerate(pipelines)
        ]
        preflight_loads(resolve_connector(snowflake), credentials, items, load, what=f"{len(pipelines)} pipeline(s)")
    options: dict[str, Any] = {
        "credentials": credentials,
        "trigger": trigger,
        "wait": wait,
        "start": start,
        "load": load.model_copy(update={"preflight": False}),  # checked above
        "alert_blocks": alert_blocks,
    }
    with watched_subflows():
        futures = [etl_pipeline.submit(item, snowflake, options) for item in pipelines]
    futures_wait(futures)
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
