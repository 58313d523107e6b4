"""What a finished run publishes in Prefect: its artifacts (link, summary, models) and the outcome event
``dbt-cloud.run.<outcome>`` that Automations route on. No token reaches either."""

from __future__ import annotations

import asyncio
import re
from datetime import datetime

from prefect.artifacts import (
    acreate_link_artifact,
    acreate_markdown_artifact,
    acreate_table_artifact,
    create_markdown_artifact,
)
from prefect.events import emit_event

from dbt_cloud_gate.dbtcloud_api import ModelResult, Run
from dbt_cloud_gate.models import DbtCloudRunSummary, EtlSummary, LoadReport
from dbt_cloud_gate.outcomes import Outcome


async def publish_run(
    result: DbtCloudRunSummary, outcome: Outcome, run: Run | None, *, models_read: bool = True
) -> None:
    """Artifacts (link, summary, models), created at once rather than one after the other, and the event that
    Automations route on (sent in the background). ``models_read`` False: the per-model results were not read
    (``WaitSettings.model_results`` off), and the models artifact says so."""
    emit_run_event(result, outcome)
    key = f"dbt-cloud-job-{result.job_id}"
    link = acreate_link_artifact(
        key=f"{key}-run",
        link=result.url,
        link_text=f"dbt Cloud run {result.run_id}",
        description=f"dbt Cloud run {result.run_id} of job {result.job_id}: {result.status}",
    )
    failing = [m for m in result.models if m.status in ("error", "fail", "runtime error")]
    lines = [
        f"## dbt Cloud run [{result.run_id}]({result.url}) of job {result.job_id}: **{result.status}**",
        "",
        "| | |",
        "|---|---|",
        f"| outcome | {outcome} |",
        f"| started at | {result.started_at.isoformat() if result.started_at else '—'} |",
        f"| finished at (watermark) | {result.finished_at.isoformat() if result.finished_at else '—'} |",
        f"| run time | {f'{result.duration_seconds:.1f} s' if result.duration_seconds is not None else '—'} |",
        f"| queued | {f'{result.queued_seconds:.1f} s' if result.queued_seconds is not None else '—'} |",
        f"| models | {len(result.models)} ({len(failing)} failed) |",
        f"| cause | {result.cause or '—'} |",
    ]
    step = run.failed_step if run is not None else None
    if step is not None:
        lines += ["", f"### Failed step {step.index}: {step.name}", "", "```", *step.last_log_lines(15), "```"]
    summary = acreate_markdown_artifact(
        key=f"{key}-summary", markdown="\n".join(lines), description="dbt Cloud run summary"
    )
    models = acreate_table_artifact(
        key=f"{key}-models",
        table=[
            {
                "model": m.label,
                "type": m.resource_type or "",
                "status": m.status,
                "seconds": m.execution_time,
                "message": (m.message or "")[:200],
            }
            for m in result.models
        ]
        or [
            {
                "model": "(no run_results.json)" if models_read else "(not read: wait.model_results is off)",
                "type": "",
                "status": result.status,
                "seconds": None,
                "message": "",
            }
        ],
        description=f"Models of dbt Cloud run {result.run_id}",
    )
    await asyncio.gather(link, summary, models)


def emit_run_event(result: DbtCloudRunSummary, outcome: Outcome) -> None:
    """The event Automations route on: ``dbt-cloud.run.<outcome>`` on resource ``dbt-cloud.run.<run_id>``."""
    emit_event(
        event=f"dbt-cloud.run.{outcome}",
        resource={
            "prefect.resource.id": f"dbt-cloud.run.{result.run_id}",
            "prefect.resource.name": f"dbt Cloud run {result.run_id}",
            "dbt-cloud.run.status": result.status,
        },
        related=[
            {"prefect.resource.id": f"dbt-cloud.job.{result.job_id}", "prefect.resource.role": "job"},
            {"prefect.resource.id": f"dbt-cloud.account.{result.account_id}", "prefect.resource.role": "account"},
        ],
        payload={
            "run_id": result.run_id,
            "job_id": result.job_id,
            "status": result.status,
            "status_code": result.status_code,
            "finished_at": result.finished_at.isoformat() if result.finished_at else None,
            "url": result.url,
        },
    )


def artifact_slug(text: str) -> str:
    """``text`` as the tail of a Prefect artifact key (lowercase letters, digits and dashes only)."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "pipeline"


def publish_etl_report(summary: EtlSummary, failures: list[str], models: list[ModelResult] | None = None) -> None:
    """The ETL cycle's markdown artifact ``dbt-cloud-etl-<pipeline>``, on the ETL flow run (the page a user opens):
    the dbt run (link, outcome, its models at a glance), one row per load, the rows skipped and the loads that failed.
    Four narrow columns, so that the table fits the artifact page of a 1,280 px window (about 700 px between the
    UI's side panels); each load's tables and window as a list below it."""

    def at(moment: datetime | None, default: str) -> str:
        return moment.isoformat(timespec="seconds") if moment else default

    rows = "\n".join(
        f"| {r.target} | {r.rows_loaded}{' (already loaded)' if r.already_loaded else ''} ({r.rows_updated}) | "
        f"{r.rows_null_key} / {r.rows_null_watermark} / {r.rows_future_watermark} | {at(r.watermark_to, '')} |"
        for r in summary.loads
    )
    tables = "\n".join(
        f"- {r.target}: {r.source_table or 'source'} → {r.target_table}, window {at(r.watermark_from, 'start')} → "
        f"{at(r.watermark_to, '')}"
        for r in summary.loads
    )
    skipped = [r for r in summary.loads if r.rows_skipped]
    finished = summary.finished_at.isoformat()
    create_markdown_artifact(
        key=f"dbt-cloud-etl-{artifact_slug(summary.pipeline)}",
        markdown=(
            f"## {summary.pipeline}: dbt Cloud run [{summary.dbt_run_id}]({summary.url}) — {summary.dbt_status}\n\n"
            f"finished_at (watermark): **{finished}**\n\n"
            + (f"dbt models: {models_at_a_glance(models)}\n\n" if models is not None else "")
            + "| target | written (changed) | skipped | up to |\n|---|---|---|---|\n"
            + rows
            + "\n\nskipped: rows with a NULL key / a NULL watermark / a watermark after the run (in no window)\n\n"
            + tables
            + (
                "\n\n**Rows skipped** (in no window, not loaded): "
                + ", ".join(f"{r.target}: {r.rows_skipped}" for r in skipped)
                if skipped
                else ""
            )
            + ("\n\n### Failed or refused loads\n\n" + "\n".join(f"- {f}" for f in failures) if failures else "")
        ),
        description=f"ETL cycle of {summary.pipeline}",
    )


def models_at_a_glance(models: list[ModelResult], named: int = 10) -> str:
    """ "4: success 4 (stg_orders, stg_customers, orders, customers)": the count by status, and the first ``named``
    names, those not in success first (the whole table is the job run's ``-models`` artifact)."""
    if not models:
        return "none in the run's results"
    counts: dict[str, int] = {}
    for model in models:
        counts[model.status] = counts.get(model.status, 0) + 1
    ordered = sorted(models, key=lambda m: m.status == "success")  # problems first; stable otherwise
    names = ", ".join(m.label for m in ordered[:named]) + (", ..." if len(models) > named else "")
    return f"{len(models)}: " + ", ".join(f"{status} {n}" for status, n in counts.items()) + f" ({names})"


def publish_reconcile_report(pipeline: str, reports: list[LoadReport], failures: list[str], *, dry_run: bool) -> None:
    """The reconcile's markdown artifact ``dbt-cloud-reconcile-<pipeline>`` (a dry run's:
    ``dbt-cloud-reconcile-dry-run-<pipeline>``, so that it never stands in for the last real reconcile): one row
    per target, the deletes a dry run found refused, and the targets that failed."""
    rows = "\n".join(
        f"| {r.target} | {r.target_table} | {r.rows_loaded} | {r.rows_updated} | "
        f"{r.rows_deleted}{' (refused)' if r.deletes_refused else ''} | {r.rows_duplicates_removed} | "
        f"{r.rows_null_key} | {r.watermark_to.isoformat() if r.watermark_to else ''} |"
        for r in reports
    )
    refused = [f"- {r.target}: {r.deletes_refused}" for r in reports if r.deletes_refused]
    would = "would be " if dry_run else ""
    create_markdown_artifact(
        key=f"dbt-cloud-reconcile-{'dry-run-' if dry_run else ''}{artifact_slug(pipeline)}",
        markdown=(
            f"## Reconcile {pipeline}{' (dry run: nothing was written)' if dry_run else ''}\n\n"
            f"| target | table | rows {would}written | of which changed | {would}deleted | duplicates removed | "
            "skipped: NULL key | up to |\n|---|---|---|---|---|---|---|---|\n"
            + rows
            + ("\n\n### Deletes that would be refused\n\n" + "\n".join(refused) if refused else "")
            + ("\n\n### Failed\n\n" + "\n".join(f"- {f}" for f in failures) if failures else "")
        ),
        description=f"Reconcile of {pipeline}{' (dry run)' if dry_run else ''}",
    )
