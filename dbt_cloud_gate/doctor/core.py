"""The doctor's types and runner: a :class:`Check` per concern, the options it runs with, what the checks found for
one another (:class:`Facts`), and :func:`run_checks`, which runs every check however the others end.

A check is a function of a :class:`Doctor` returning a :class:`Verdict`; :class:`CheckSpec` names it and the checks
it needs. A check whose prerequisite did not pass is ``skip``, saying which; an exception inside a check is its own
``fail``, never the end of the run. Every text a check returns is scrubbed of the secrets the doctor has seen.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dbt_cloud_gate.dbtcloud_api.errors import scrub

if TYPE_CHECKING:
    from prefect_snowflake import SnowflakeConnector

    from dbt_cloud_gate.blocks.dbt_cloud import DbtCloudCredentials
    from dbt_cloud_gate.dbtcloud_api.models import Job
    from dbt_cloud_gate.doctor.project import ProjectConfig

__all__ = [
    "Check",
    "CheckSpec",
    "Doctor",
    "DoctorOptions",
    "Facts",
    "Status",
    "Verdict",
    "exit_code",
    "run_checks",
]


MIN_SECRET_LENGTH = 8


class Status(enum.StrEnum):
    """How a check ended: ``ok``, ``warn`` (works, but look), ``fail`` (will break), ``skip`` (could not check)."""

    OK = "ok"
    WARN = "warn"
    FAIL = "fail"
    SKIP = "skip"


@dataclass(frozen=True)
class Verdict:
    """What a check function returns: its status, what it saw, and the fix (for ``warn`` and ``fail``)."""

    status: Status
    detail: str
    fix: str = ""


def ok(detail: str) -> Verdict:
    """A passed check."""
    return Verdict(Status.OK, detail)


def warn(detail: str, fix: str) -> Verdict:
    """A check that passed with something to look at (it does not fail the doctor)."""
    return Verdict(Status.WARN, detail, fix)


def fail(detail: str, fix: str) -> Verdict:
    """A failed check, with the fix."""
    return Verdict(Status.FAIL, detail, fix)


def skip(detail: str) -> Verdict:
    """A check that could not run, saying why."""
    return Verdict(Status.SKIP, detail)


@dataclass(frozen=True)
class Check:
    """One line of the checklist: the check's name, its status, what it saw and the fix."""

    name: str
    status: Status
    detail: str
    fix: str = ""

    def to_json(self) -> dict[str, str]:
        """The check as a JSON object."""
        return {"name": self.name, "status": self.status.value, "detail": self.detail, "fix": self.fix}


@dataclass(frozen=True)
class DoctorOptions:
    """What the doctor checks; ``None`` means: as ``prefect.yaml`` and the Prefect variables it names say.

    ``timeout_seconds`` bounds every network call; a worker counts as polling when its last heartbeat is at most
    ``worker_stale_seconds`` old."""

    prefect_yaml: Path = Path("prefect.yaml")
    job_id: int | None = None
    credentials: str | None = None
    snowflake: str | None = None
    targets: str | None = None
    receiver_url: str | None = None
    work_pool: str | None = None
    secret_block: str | None = None
    timeout_seconds: float = 15.0
    worker_stale_seconds: float = 120.0


@dataclass
class Facts:
    """What the checks found, for the checks after them (each field set by the check that reads it)."""

    project: ProjectConfig | None = None
    variables: dict[str, Any] = field(default_factory=dict)
    missing_variables: set[str] = field(default_factory=set)
    credentials_block: str | None = None
    credentials: DbtCloudCredentials | None = None
    connector: SnowflakeConnector | None = None
    job_id: int | None = None
    job: Job | None = None
    receiver_urls: list[str] = field(default_factory=list)
    secrets: set[str] = field(default_factory=set)

    def add_secret(self, value: str | None) -> None:
        """Scrub ``value`` from every text of the checks. Below 8 characters it is not kept: replacing a value that
        short (fakesnow's password ``snow``) would mangle ordinary words, and no real token or password is that short."""
        if value and len(value) >= MIN_SECRET_LENGTH:
            self.secrets.add(value)


@dataclass
class Doctor:
    """The options and the facts of one run of the doctor, handed to every check."""

    options: DoctorOptions
    facts: Facts = field(default_factory=Facts)


@dataclass(frozen=True)
class CheckSpec:
    """A check: its name (one line of the checklist), its function, and the checks that must pass first."""

    name: str
    run: Callable[[Doctor], Verdict]
    needs: tuple[str, ...] = ()
    summary: str = ""


def _clean(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        text = scrub(text, secret)
    return text


def _run_one(spec: CheckSpec, doctor: Doctor, done: dict[str, Check]) -> Check:
    blocked = [name for name in spec.needs if name in done and done[name].status not in (Status.OK, Status.WARN)]
    if blocked:
        why = ", ".join(f"{name} {'failed' if done[name].status is Status.FAIL else 'was skipped'}" for name in blocked)
        verdict = skip(f"not checked: {why}.")
    else:
        try:
            verdict = spec.run(doctor)
        except Exception as exc:  # one check's surprise never hides the others
            verdict = fail(
                f"the check itself failed: {type(exc).__name__}: {exc}",
                "fix what the error names; if it looks like a bug of the doctor, report it (the other checks ran).",
            )
    secrets = doctor.facts.secrets
    return Check(spec.name, verdict.status, _clean(verdict.detail, secrets), _clean(verdict.fix, secrets))


def run_checks(options: DoctorOptions, checks: Sequence[CheckSpec]) -> list[Check]:
    """Run ``checks`` in order on one :class:`Doctor`; one :class:`Check` each."""
    doctor = Doctor(options)
    done: dict[str, Check] = {}
    for spec in checks:
        done[spec.name] = _run_one(spec, doctor, done)
    return list(done.values())


def exit_code(checks: Iterable[Check]) -> int:
    """1 when a check failed, else 0 (warnings and skips do not fail)."""
    return 1 if any(check.status is Status.FAIL for check in checks) else 0
