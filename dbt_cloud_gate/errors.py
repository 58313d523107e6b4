"""Every exception the Prefect side of dbt-cloud-gate raises, in one tree (the client's own tree, rooted at
``DbtCloudError``, is in :mod:`dbt_cloud_gate.dbtcloud_api.errors`: HTTP and API errors only)::

    DbtCloudGateError
    ├── DbtCloudRunError            a run did not succeed; run_id, status, url, job_id
    │   ├── DbtCloudRunFailed       it ended in Error
    │   ├── DbtCloudRunCancelled    it was cancelled (never a success)
    │   ├── DbtCloudRunTimedOut     no terminal status before the deadline
    │   └── DbtCloudRunInvalid      dbt Cloud's answer cannot be used (a Success without finished_at)
    ├── DbtCloudRunsFailed          some runs of a fan-out did not succeed; failures, results
    ├── DbtCloudStartRefused        a policy refused to trigger (nothing was triggered)
    │   ├── DbtCloudJobAlreadyRunning   if_running="fail" and a run is in flight
    │   └── DbtCloudNativeScheduleOn    native_schedule="fail" and the job's own schedule is on
    ├── EtlFailed                   one or more loads or pipelines failed; the message names each
    ├── PreflightFailed             the checks before the trigger found problems (nothing triggered); problems
    ├── StaleDataError              a load refused: its data would be stale or unverified
    │   ├── InvalidRowsError        rows no load can take, under on_invalid_rows="fail"
    │   └── DeletesRefused          a reconcile's deletes refused (another source, an empty source, the ceiling)
    └── LoadLockTimeout             a load could not take its target's write lock in time

Every exception pickles with its attributes (Prefect stores a failed flow's exception as its result).
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "DbtCloudGateError",
    "DbtCloudJobAlreadyRunning",
    "DbtCloudNativeScheduleOn",
    "DbtCloudRunCancelled",
    "DbtCloudRunError",
    "DbtCloudRunFailed",
    "DbtCloudRunInvalid",
    "DbtCloudRunTimedOut",
    "DbtCloudRunsFailed",
    "DbtCloudStartRefused",
    "DeletesRefused",
    "EtlFailed",
    "InvalidRowsError",
    "LoadLockTimeout",
    "PreflightFailed",
    "StaleDataError",
]


class DbtCloudGateError(Exception):
    """The root of every error dbt-cloud-gate's flows and tasks raise (the client's are ``DbtCloudError``)."""


class DbtCloudRunError(DbtCloudGateError):
    """A dbt Cloud run did not succeed. ``run_id``, ``status`` and ``url`` say which run and how it ended."""

    def __init__(self, message: str, *, run_id: int, status: str, url: str, job_id: int | None = None) -> None:
        super().__init__(message)
        self.run_id = run_id
        self.status = status
        self.url = url
        self.job_id = job_id

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_run_error, (type(self), self.args[0], self.run_id, self.status, self.url, self.job_id))


def _rebuild_run_error(
    cls: type[DbtCloudRunError], message: str, run_id: int, status: str, url: str, job_id: int | None
) -> DbtCloudRunError:
    return cls(message, run_id=run_id, status=status, url=url, job_id=job_id)


class DbtCloudRunFailed(DbtCloudRunError):
    """The run ended in Error."""


class DbtCloudRunCancelled(DbtCloudRunError):
    """The run was cancelled (in dbt Cloud, or by this flow's cancellation). Cancelled is never a success."""


class DbtCloudRunTimedOut(DbtCloudRunError):
    """The run reached no terminal status before the deadline; the message says where it stood then
    ("still queued after 600 s, never started" or "running for 540 s")."""


class DbtCloudRunInvalid(DbtCloudRunError):
    """dbt Cloud's answer about the run cannot be used: a Success without ``finished_at`` (no watermark), or an
    answer that is not that run. Nothing downstream may run on it."""


class DbtCloudRunsFailed(DbtCloudGateError):
    """Some runs of a fan-out did not succeed; ``failures`` lists each (job, run, status, url) and ``results``
    holds the runs that did succeed, so that nothing is lost."""

    def __init__(self, message: str, failures: list[dict[str, Any]], results: list[Any] | None = None) -> None:
        super().__init__(message)
        self.failures = failures
        self.results = results or []

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.args[0], self.failures, self.results))


class DbtCloudStartRefused(DbtCloudGateError):
    """A start policy refused to trigger the job; nothing was triggered."""


class DbtCloudJobAlreadyRunning(DbtCloudStartRefused):
    """``if_running="fail"`` and the job already has a run queued or running."""


class DbtCloudNativeScheduleOn(DbtCloudStartRefused):
    """``native_schedule="fail"`` and the job's own dbt Cloud schedule is on."""


class EtlFailed(DbtCloudGateError):
    """One or more loads (or pipelines) failed; the message names each."""


class PreflightFailed(DbtCloudGateError):
    """The checks of the load targets before the trigger found problems; nothing was triggered. ``problems`` holds
    one line per problem, naming the parameter, the object and the fix."""

    def __init__(self, message: str, problems: list[str]) -> None:
        super().__init__(message)
        self.problems = problems

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.args[0], self.problems))


class StaleDataError(DbtCloudGateError):
    """A load was refused because its data would be stale or unverified; nothing was loaded."""


class InvalidRowsError(StaleDataError):
    """Rows no load can take (NULL key, NULL or future watermark) under ``on_invalid_rows="fail"``."""


class DeletesRefused(StaleDataError):
    """A reconcile's ``propagate_deletes`` refused; nothing changed in the target. ``rows_to_delete`` is what it
    would have deleted: rows another source loaded, all of them (the source is empty), or more than the ceiling
    (``max_delete_fraction``, ``max_deletes``)."""

    def __init__(self, message: str, *, rows_to_delete: int) -> None:
        super().__init__(message)
        self.rows_to_delete = rows_to_delete

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_deletes_refused, (self.args[0], self.rows_to_delete))


def _rebuild_deletes_refused(message: str, rows_to_delete: int) -> DeletesRefused:
    return DeletesRefused(message, rows_to_delete=rows_to_delete)


class LoadLockTimeout(DbtCloudGateError):
    """A load could not take its target's write lock in time; nothing was loaded."""
