"""The models dbt-cloud-gate's flows take and return: run results, fan-out requests, load targets and reports.

Prefect-free (pydantic only), so that flows, tasks and a user's own code share one definition of each.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

from dbt_cloud_gate import loads_sql as q
from dbt_cloud_gate.dbtcloud_api import ModelResult

__all__ = [
    "DbtCloudJobRequest",
    "DbtCloudRunResult",
    "DbtCloudRunSummary",
    "EtlPipeline",
    "EtlSummary",
    "LoadReport",
    "LoadTarget",
]


class DbtCloudRunSummary(BaseModel):
    """Where a run stood when its wait ended, whatever the outcome: what artifacts, events and alerts report."""

    run_id: int
    job_id: int
    account_id: int
    status: str
    status_code: int
    started_at: datetime | None
    finished_at: datetime | None
    duration_seconds: float | None = Field(description="From start to finish of the run, queueing excluded.")
    queued_seconds: float | None = None
    url: str
    cause: str | None
    models: list[ModelResult] = Field(default_factory=list)


class DbtCloudRunResult(DbtCloudRunSummary):
    """What a successful run hands to downstream steps; ``finished_at`` is their watermark (UTC, exact).

    Only a Success with ``finished_at`` can be one: the type requires both, so downstream code never checks.
    """

    status_code: Literal[10] = Field(description="Always 10 (Success): failures raise instead of returning.")
    finished_at: datetime


class DbtCloudJobRequest(BaseModel):
    """One job of a fan-out, with its own cause and trigger overrides (``steps_override``, ``git_branch``...)."""

    job_id: int = Field(gt=0)
    cause: str | None = None
    overrides: dict[str, Any] = Field(default_factory=dict)


class LoadTarget(BaseModel):
    """One load: a dbt model's table into a target table."""

    name: str = Field(description="A short label for logs, artifacts and the audit history, e.g. 'orders'.")
    source_model: str = Field(
        description="The dbt model whose success in the run gates this load: 'orders', a version "
        "'dim_customers.v2', or a unique_id 'model.shop.orders'."
    )
    source_table: str = Field(description="Where dbt built the model: DATABASE.SCHEMA.TABLE.")
    target_table: str = Field(description="The table to load into: DATABASE.SCHEMA.TABLE (must exist).")
    key_columns: list[str] = Field(min_length=1, description="Columns that identify a row (upsert key).")
    watermark_column: str = Field(
        description="Timestamp column (UTC) that says when a source row changed. Exact when dbt stamps it as it "
        "writes the row; a business timestamp (UPDATED_AT of the source system) needs lookback_seconds or a "
        "reconcile."
    )
    columns: list[str] | None = Field(
        default=None, description="Columns to copy; default: all of the source's, spelled as the source has them."
    )
    lookback_seconds: float | None = Field(
        default=None,
        ge=0,
        le=366 * 86400,
        allow_inf_nan=False,
        description="Start each window this long before the last watermark, to take rows that arrive late; "
        "None: the flow's default. 0 is exact only for a watermark dbt stamps as it writes the row.",
    )
    on_invalid_rows: Literal["skip", "fail"] = Field(
        default="skip",
        description="Rows with a NULL key, a NULL watermark or a watermark after the run's end: 'skip' them "
        "with a warning (counted in the report and the audit), or 'fail' the load (nothing loaded).",
    )

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        text = value.strip()
        if not text or any(ord(c) < 32 or ord(c) == 127 for c in text):
            raise ValueError("name must be a non-empty label without control characters.")
        return text

    @field_validator("source_model")
    @classmethod
    def _model(cls, value: str) -> str:
        text = value.strip()
        if not text or any(c.isspace() or ord(c) < 32 for c in text):
            raise ValueError(f"source_model {value!r} must be a dbt model name, name.vN or unique_id, without spaces.")
        return text

    @field_validator("source_table", "target_table")
    @classmethod
    def _table(cls, value: str) -> str:
        q.split_table(value)
        return value.strip()

    @field_validator("key_columns", "columns")
    @classmethod
    def _columns(cls, value: list[str] | None) -> list[str] | None:
        exact = [q.resolve_name(column, "column") for column in value or []]
        if len(set(exact)) != len(exact):
            raise ValueError(f"columns {value} name one column twice.")
        return value

    @field_validator("watermark_column")
    @classmethod
    def _watermark(cls, value: str) -> str:
        q.resolve_name(value, "watermark column")
        return value


class LoadReport(BaseModel):
    """What one load (or reconcile) did."""

    target: str
    target_table: str
    source_table: str = ""
    kind: Literal["incremental", "reconcile"] = "incremental"
    rows_loaded: int = Field(description="Rows written: new keys plus changed rows.")
    rows_updated: int = 0
    rows_deleted: int = Field(default=0, description="Target keys gone from the source, deleted (reconcile).")
    rows_null_key: int = 0
    rows_null_watermark: int = 0
    rows_future_watermark: int = 0
    rows_duplicates_removed: int = Field(default=0, description="Target rows of keys held more than once (reconcile).")
    already_loaded: bool = Field(default=False, description="This dbt run was loaded before: nothing to do.")
    dry_run: bool = Field(
        default=False, description="A reconcile's dry run: the counts are what it would write; nothing was."
    )
    deletes_refused: str | None = Field(
        default=None, description="Why the dry run's deletes would be refused (a real run fails with it)."
    )
    lookback_seconds: float = 0
    watermark_from: datetime | None
    watermark_to: datetime | None
    dbt_run_id: int | None

    @property
    def rows_skipped(self) -> int:
        """Rows no load took: NULL key, NULL watermark, watermark after the run's end."""
        return self.rows_null_key + self.rows_null_watermark + self.rows_future_watermark


class EtlSummary(BaseModel):
    """What one ETL cycle did: which dbt run produced the data, and the rows loaded per target."""

    pipeline: str
    dbt_job_id: int
    dbt_run_id: int
    dbt_status: str
    finished_at: datetime
    url: str
    loads: list[LoadReport] = Field(default_factory=list)

    @classmethod
    def of_run(cls, pipeline: str, dbt: DbtCloudRunResult, loads: list[LoadReport]) -> EtlSummary:
        """The summary of the loads gated on the successful run ``dbt``."""
        run = {"dbt_job_id": dbt.job_id, "dbt_run_id": dbt.run_id, "dbt_status": dbt.status, "url": dbt.url}
        return cls(pipeline=pipeline, finished_at=dbt.finished_at, loads=loads, **run)

    @property
    def rows_by_target(self) -> dict[str, int]:
        """Rows loaded per target name."""
        return {load.target: load.rows_loaded for load in self.loads}


class EtlPipeline(BaseModel):
    """One dbt job and the loads gated on it (an item of ``dbt_cloud_etl_many``)."""

    job_id: int = Field(gt=0)
    targets: list[LoadTarget]
    name: str | None = None
