"""Prefect tasks that wait for dbt Cloud runs: one run (with or without its per-model results), many runs on one
event loop, and the cancel. A wait is one task run, however many polls it takes."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import TerminationSignal

from dbt_cloud_gate.blocks.dbt_cloud import DbtCloudCredentials
from dbt_cloud_gate.dbtcloud_api import (
    DbtCloudError,
    Run,
)
from dbt_cloud_gate.dbtcloud_api.client import AsyncDbtCloudClient, request_deadline
from dbt_cloud_gate.dbtcloud_api.polling import FixedInterval, make_schedule
from dbt_cloud_gate.dbtcloud_api.results import aread_model_results, has_model_results, read_model_results
from dbt_cloud_gate.dbtcloud_api.wait import (
    AFTER_WAIT_SECONDS,
    PollSchedule,
    WaitOutcome,
    await_runs,
)
from dbt_cloud_gate.settings import WAIT, WaitSettings
from dbt_cloud_gate.waiting import (
    FinishedRun,
    RunWaitOutcome,
    cancel_quietly,
    deadline_description,
    describe_run_at,
    prefect_cancellation_requested,
    run_async,
    wait_in_task,
    webhook_waker,
)


@task(name="wait-for-dbt-cloud-run", cache_policy=NO_CACHE)
def wait_for_dbt_cloud_run(
    credentials: DbtCloudCredentials,
    run_id: int,
    wait: WaitSettings = WAIT,
    schedule: PollSchedule | None = None,
    job_id: int | None = None,
    history_seconds: list[float] | None = None,
    just_triggered: bool = False,
) -> Run:
    """Poll a run until it finishes: one task run for the whole wait, logging status changes and step progress.

    With ``adaptive_polling`` and a ``job_id``, it polls around the durations of the job's recent successful runs
    (``history_seconds``, read here when not given; see ``dbtcloud_api.polling``); otherwise every
    ``poll_interval_seconds``. ``just_triggered`` skips the poll right after a trigger (the run is queued).
    Past ``max_wait_seconds`` it cancels the run (unless ``on_timeout="leave"``) and raises ``WaitTimedOut``,
    whose ``description`` says where the run stood at the deadline. No Prefect ``timeout_seconds``: in a worker
    thread Prefect cannot enforce one; the deadline is the wait's own, and every request of it ends by it.

    With ``webhooks``, the wait sleeps on the process-wide webhook waiter (``dbt_cloud_gate.waiter``; start it
    before the trigger) and polls at once when the run's terminal event arrives; between events it polls every
    ``fallback_poll_seconds`` (cancellations send no webhook). Without a Prefect server it polls as without.
    """
    log = get_run_logger()
    with credentials.get_client() as client:
        return wait_in_task(
            client,
            run_id,
            log,
            wait,
            schedule=schedule,
            job_id=job_id,
            history_seconds=history_seconds,
            just_triggered=just_triggered,
        )


@task(name="wait-for-dbt-cloud-run-and-results", cache_policy=NO_CACHE)
def wait_for_dbt_cloud_run_and_results(
    credentials: DbtCloudCredentials,
    run_id: int,
    wait: WaitSettings = WAIT,
    job_id: int | None = None,
    history_seconds: list[float] | None = None,
    just_triggered: bool = False,
    with_job: bool = False,
) -> FinishedRun:
    """:func:`wait_for_dbt_cloud_run`, then the run's ``run_results.json`` read right after the poll that saw the
    end, on the same connection and in the same task run: nothing serial is left between that poll and the
    flow's result but the artifacts. Raises as :func:`wait_for_dbt_cloud_run` does.

    With ``wait.model_results`` off the results are not read (``models`` empty). ``with_job``: every read of
    the run carries its job (for a schedule check the start skipped)."""
    log = get_run_logger()
    with credentials.get_client() as client:
        run = wait_in_task(
            client,
            run_id,
            log,
            wait,
            schedule=None,
            job_id=job_id,
            history_seconds=history_seconds,
            just_triggered=just_triggered,
            with_job=with_job,
        )
        if not wait.model_results or not has_model_results(run):
            return FinishedRun(run, [])
        with request_deadline(time.monotonic() + AFTER_WAIT_SECONDS):
            return FinishedRun(run, read_model_results(client, run_id, run, log))


async def _job_schedules(
    client: AsyncDbtCloudClient,
    job_ids: list[int],
    wait: WaitSettings,
    webhooks: bool,
    log: logging.Logger | logging.LoggerAdapter[Any],
) -> dict[int, PollSchedule]:
    """Each job's poll schedule: with webhooks, the safety net's fixed interval; else from the job's history, read
    for all jobs at once (the account's rate limiter, shared by the client, paces them); fixed polling for a job
    whose history cannot be read."""
    if webhooks:
        return {job_id: FixedInterval(wait.fallback_poll_seconds) for job_id in job_ids}

    async def history(job_id: int) -> list[float]:
        if not wait.adaptive_polling:
            return []
        try:
            with request_deadline(time.monotonic() + AFTER_WAIT_SECONDS):
                return await client.job_history(job_id)
        except DbtCloudError as exc:
            log.warning("Could not read job %s's history (%s); fixed polling.", job_id, exc)
            return []

    histories = await asyncio.gather(*(history(job_id) for job_id in job_ids))
    return {
        job_id: make_schedule(history, wait.poll_interval_seconds, adaptive=wait.adaptive_polling)
        for job_id, history in zip(job_ids, histories, strict=True)
    }


@task(name="wait-for-dbt-cloud-runs", cache_policy=NO_CACHE)
def wait_for_dbt_cloud_runs(
    credentials: DbtCloudCredentials,
    runs: dict[int, int],
    wait: WaitSettings = WAIT,
) -> list[RunWaitOutcome]:
    """Wait for many runs (run ID → job ID), just triggered, in one task, on one event loop: no thread and no task
    run per run.

    Each job's history is read once (all jobs at once); each run is first read after its schedule's first interval
    (the trigger's answer said it was queued); each finished run's results are read from every step that can build
    models.
    With ``webhooks``, every run sleeps on the one process-wide webhook waiter (one subscription for all) and
    polls every ``fallback_poll_seconds`` between events. Returns one outcome per run, in order; never raises for
    a run's outcome.
    """
    log = get_run_logger()
    waker = webhook_waker(wait, log)
    if waker is not None:
        log.info(
            "Waiting for %s run(s) on webhook events; polling every %g s as a safety net.",
            len(runs),
            wait.fallback_poll_seconds,
        )

    async def main() -> list[RunWaitOutcome]:
        async with credentials.get_async_client() as client:
            schedules = await _job_schedules(client, sorted(set(runs.values())), wait, waker is not None, log)
            waited = await await_runs(
                client,
                list(runs),
                schedules=lambda run_id: schedules[runs[run_id]],
                max_wait_seconds=wait.max_wait_seconds,
                on_timeout=wait.on_timeout,
                fetch_results=False,
                not_found_grace_seconds=client.retry.not_found_grace_seconds,
                log=log,
                job_ids=runs,
                waker=waker,
                after_trigger=True,
            )

            async def finish(outcome: WaitOutcome) -> RunWaitOutcome:
                timeout = outcome.timeout
                result = RunWaitOutcome(
                    outcome.run_id,
                    outcome.run,
                    timed_out=outcome.timed_out,
                    error=outcome.error,
                    deadline=(
                        (deadline_description(timeout) if timeout is not None else describe_run_at(outcome.run, 0))
                        if outcome.timed_out
                        else None
                    ),
                )
                if wait.model_results and not outcome.timed_out and has_model_results(outcome.run):
                    result.models = await aread_model_results(client, outcome.run_id, outcome.run, log)
                return result

            return list(await asyncio.gather(*(finish(outcome) for outcome in waited)))

    try:
        return run_async(main())
    except TerminationSignal:
        if prefect_cancellation_requested():
            with credentials.get_client() as client:
                cancel_quietly(client, list(runs), log)
        raise
