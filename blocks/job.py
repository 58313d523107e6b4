"""The dbt Cloud job block: a job, its credentials, and how to trigger and wait for it, saved once and edited in the
UI; the flows take it (or its name) as ``job`` in place of ``job_id``, ``credentials``, ``trigger`` and ``wait``.

The counterpart of prefect-dbt's ``DbtCloudJob`` block (credentials, job ID, trigger options, timeout and interval):
its ``trigger_job_run_options`` are our ``trigger``, its ``timeout_seconds`` and ``interval_seconds`` our
``wait.max_wait_seconds`` and ``wait.poll_interval_seconds``.
"""

from __future__ import annotations

from typing import Any

from prefect.blocks.core import Block
from pydantic import Field

from dbt_cloud_gate.blocks.dbt_cloud import DbtCloudCredentials
from dbt_cloud_gate.dbtcloud_api import DbtCloudConfigError
from dbt_cloud_gate.settings import NO_OVERRIDES, WAIT, DbtCloudId, TriggerOverrides, WaitSettings

__all__ = ["DbtCloudJob", "JobParameters", "resolve_job"]


class DbtCloudJob(Block):
    """A dbt Cloud job to run: its credentials, its ID, the overrides sent with each trigger and how to wait."""

    # The slug must never change once registered.
    _block_type_name = "dbt Cloud Gate Job"
    _block_type_slug = "dbt-cloud-gate-job"
    _description = "A dbt Cloud job for dbt-cloud-gate's flows: its credentials, ID, trigger overrides and wait."
    _code_example = """
```python
from dbt_cloud_gate import DbtCloudCredentials, DbtCloudJob, TriggerOverrides, WaitSettings, run_dbt_cloud_job

DbtCloudJob(
    credentials=DbtCloudCredentials.load("prod"),
    job_id=678,
    trigger=TriggerOverrides(threads_override=8),
    wait=WaitSettings(max_wait_seconds=3600),
).save("nightly-build")

run_dbt_cloud_job(job="nightly-build")
```
"""

    credentials: DbtCloudCredentials = Field(..., description="The dbt Cloud account's credentials block.")
    job_id: DbtCloudId = Field(..., title="Job ID", description="The dbt Cloud job to trigger.")
    trigger: TriggerOverrides = Field(
        default=NO_OVERRIDES, description="Overrides of the job's settings sent with each trigger; empty: none."
    )
    wait: WaitSettings = Field(default=WAIT, description="How to wait for each run; empty: the defaults.")


def resolve_job(job: DbtCloudJob | str) -> DbtCloudJob:
    """The job block given, or the saved one of that name (``DbtCloudConfigError`` naming it when there is none)."""
    if isinstance(job, DbtCloudJob):
        return job
    name = job.split("/", 1)[1] if job.startswith(f"{DbtCloudJob._block_type_slug}/") else job
    try:
        loaded = DbtCloudJob.load(name, _sync=True)  # type: ignore[call-arg]
    except ValueError as exc:
        raise DbtCloudConfigError(
            f"No saved dbt Cloud Gate Job block named {name!r} (the job parameter): create it in the Prefect UI "
            f"(Blocks > dbt Cloud Gate Job) or with DbtCloudJob(...).save({name!r}). ({exc})"
        ) from None
    assert isinstance(loaded, DbtCloudJob)
    return loaded


class JobParameters:
    """A flow's job parameters with its job block's applied: the block supplies what the call leaves out."""

    def __init__(
        self,
        job: DbtCloudJob | str | None,
        job_id: int | None,
        credentials: Any,
        trigger: TriggerOverrides | None,
        wait: WaitSettings | None,
    ) -> None:
        if job is None:
            if job_id is None:
                raise ValueError("job_id is missing: give the dbt Cloud job's ID, or a saved job block as `job`.")
            self.job_id, self.credentials = job_id, credentials
            self.trigger, self.wait = trigger or NO_OVERRIDES, wait or WAIT
            return
        block = resolve_job(job)
        if job_id is not None and job_id != block.job_id:
            raise ValueError(
                f"job_id {job_id} differs from the job block's job {block.job_id}: give one of them (the block "
                "alone runs its own job)."
            )
        self.job_id = block.job_id
        self.credentials = credentials if credentials is not None else block.credentials
        self.trigger = trigger if trigger is not None else block.trigger
        self.wait = wait if wait is not None else block.wait
