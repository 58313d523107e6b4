"""The doctor's check of the load targets: the preflight the ETL flows run before each trigger
(:func:`dbt_cloud_gate.preflight.run_preflight`), on the targets the deployments read."""

from __future__ import annotations

from pydantic import TypeAdapter, ValidationError

from dbt_cloud_gate.doctor.core import Doctor, Verdict, fail, ok, skip, warn
from dbt_cloud_gate.doctor.dbt_checks import dbt_cloud_client
from dbt_cloud_gate.doctor.prefect_checks import MISSING, configured, read_variable
from dbt_cloud_gate.models import LoadTarget
from dbt_cloud_gate.preflight import PreflightItem, run_preflight
from dbt_cloud_gate.settings import LoadSettings
from dbt_cloud_gate.variables import from_variable

__all__ = ["check_load_targets"]

_TARGETS = TypeAdapter(list[LoadTarget])


def check_load_targets(doctor: Doctor) -> Verdict:
    """Every load target passes the preflight (tables, columns, types, rights), and the job builds its model."""
    connector = doctor.facts.connector
    assert connector is not None  # needs snowflake-block
    value, source = configured(doctor, doctor.options.targets, "--targets", "targets")
    if value is None:
        return skip(f"no load targets to check: {source}.")
    if isinstance(value, str):
        source = f"variable {value} ({source})"
        if doctor.options.targets is None and read_variable(doctor, value) is MISSING:
            return skip(f"the {source} that holds the targets is not set (see variables).")
    try:
        targets = (
            from_variable(value, LoadTarget, "targets") if isinstance(value, str) else _TARGETS.validate_python(value)
        )
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:5])
        return fail(f"the targets of {source} are not a list of LoadTarget: {problems}.", f"correct {source}.")
    except ValueError as exc:
        return fail(
            str(exc), f"set the variable: `prefect variable set {value} '[...]' --overwrite` (docs/deploying.md)."
        )
    job_id = doctor.facts.job_id
    items = [PreflightItem("targets", job_id or 0, targets)]
    settings = LoadSettings(check_model_built=job_id is not None)
    if job_id is not None and doctor.facts.credentials is not None:
        with dbt_cloud_client(doctor) as client:
            found = run_preflight(connector, client, items, settings)
    else:
        found = run_preflight(connector, None, items, settings)
    where = f"{len(targets)} target(s) of {source}"
    if found.problems:
        return fail(
            f"{where}: " + " ".join(f"{p.parameter}: {p.message}" for p in found.problems),
            " ".join(f"{p.parameter}: {p.fix}" for p in found.problems),
        )
    notes = [w.rstrip(".") for w in found.warnings] + [f"not checked: {item}" for item in found.unchecked]
    if not settings.check_model_built:
        notes.append("not checked: whether dbt Cloud job builds each source_model (the job was not read)")
    if found.warnings:
        return warn(
            f"{where} pass; " + "; ".join(notes) + ".", "see the warning(s); the loads still guard at run time."
        )
    return ok(f"{where} pass ({found.statements} statement(s)){'; ' + '; '.join(notes) if notes else ''}.")
