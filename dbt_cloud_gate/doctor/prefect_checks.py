"""The doctor's checks of the Prefect side: the API, ``prefect.yaml``, the variables it names, the blocks, the work
pool, a worker polling it, and the worker's environment as the pull step needs it.

A worker's environment cannot be read through Prefect's API. What can be seen is checked: a worker's heartbeat
(``worker``), a recent flow run of the pool that failed at the pull step for want of ``DBT_CLOUD_GATE_HOME``
(``worker-environment`` fails then), and ``DBT_CLOUD_GATE_HOME`` where the doctor runs: run the doctor on the
worker's machine, in its environment, to check that one (elsewhere its absence is a warning).
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Coroutine
from datetime import UTC, datetime
from typing import Any, TypeVar

from prefect.client.orchestration import get_client
from prefect.exceptions import ObjectNotFound
from prefect.settings import PREFECT_API_URL
from pydantic import SecretStr

from dbt_cloud_gate.alerts import alert_block_problems, unloadable_blocks_message
from dbt_cloud_gate.blocks.dbt_cloud import resolve_credentials
from dbt_cloud_gate.blocks.snowflake import resolve_connector
from dbt_cloud_gate.dbtcloud_api import DbtCloudConfigError
from dbt_cloud_gate.deploy_steps import WORKER_FIX, checkout_problem
from dbt_cloud_gate.doctor.core import Doctor, Verdict, fail, ok, skip, warn
from dbt_cloud_gate.doctor.project import HOME_VARIABLE, ProjectError, VariableUse, read_project
from dbt_cloud_gate.doctor.workers import pull_step_failures

__all__ = [
    "MISSING",
    "check_alert_blocks",
    "check_credentials_block",
    "check_prefect_api",
    "check_prefect_yaml",
    "check_snowflake_block",
    "check_variables",
    "check_work_pool",
    "check_worker",
    "check_worker_environment",
    "check_yaml_blocks",
    "configured",
    "read_variable",
]

T = TypeVar("T")
MISSING: Any = object()
_WHOLE_TEMPLATE = re.compile(r"^\s*\{\{\s*prefect\.variables\.([A-Za-z0-9_-]+)\s*\}\}\s*$")
# What each parameter's variable holds, for the fix that sets it.
_EXAMPLES = {
    "job_id": "12345` (the dbt Cloud job's ID, a number)",
    "credentials": "prod` (a saved dbt Cloud Gate Credentials block's name)",
    "snowflake": "prod-snowflake` (a saved SnowflakeConnector block's name)",
    "targets": '\'[{"name": ..., "source_model": ..., ...}]\'` (the load targets as JSON, docs/deploying.md)',
}


def run_async(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run one coroutine of Prefect's async client (its work pool calls have no sync twin on Prefect 3.1)."""
    return asyncio.run(coroutine)


def read_variable(doctor: Doctor, name: str) -> Any:
    """The value of Prefect variable ``name`` (read once per run of the doctor), or :data:`MISSING`."""
    facts = doctor.facts
    if name in facts.variables:
        return facts.variables[name]
    if name in facts.missing_variables:
        return MISSING
    with get_client(sync_client=True) as client:
        found = client.read_variable_by_name(name)
    if found is None:
        facts.missing_variables.add(name)
        return MISSING
    facts.variables[name] = found.value
    return found.value


def configured(doctor: Doctor, option: Any, flag: str, parameter: str) -> tuple[Any, str]:
    """The value of ``parameter`` and where it came from: ``option`` (``flag``) when given, else the deployments' value
    in prefect.yaml, its ``{{ prefect.variables.X }}`` read. ``(None, why)`` when there is none."""
    if option is not None:
        return option, flag
    project = doctor.facts.project
    if project is None:
        return None, f"prefect.yaml could not be read and {flag} was not given"
    found = project.parameter(parameter)
    if found is None:
        return None, f"no deployment of prefect.yaml sets `{parameter}` and {flag} was not given"
    value, where = found
    match = _WHOLE_TEMPLATE.match(value) if isinstance(value, str) else None
    if match is None:
        return value, where
    name = match.group(1)
    read = read_variable(doctor, name)
    if read is MISSING:
        return None, f"the Prefect variable {name} ({where}) is not set"
    return read, f"variable {name}"


def check_prefect_api(doctor: Doctor) -> Verdict:
    """The Prefect API of this profile answers."""
    url = PREFECT_API_URL.value()
    if not url:
        return fail(
            "PREFECT_API_URL is not set: Prefect would start a temporary server of its own, with none of your "
            "blocks, variables, pools or deployments.",
            "point the doctor at your server: `prefect config set PREFECT_API_URL=http://HOST:4200/api`, or "
            "`prefect cloud login`, or PREFECT_API_URL=... in the environment.",
        )
    with get_client(sync_client=True) as client:
        problem = client.api_healthcheck()
    if problem is not None:
        return fail(
            f"the Prefect API at {url} does not answer: {type(problem).__name__}: {problem}",
            "start the Prefect server (`prefect server start`), or fix PREFECT_API_URL / the Prefect Cloud login.",
        )
    return ok(f"the Prefect API at {url} answers.")


def check_prefect_yaml(doctor: Doctor) -> Verdict:
    """prefect.yaml is there and readable: its deployments, work pools and variables."""
    path = doctor.options.prefect_yaml
    try:
        project = read_project(path)
    except ProjectError as exc:
        return fail(str(exc), "run the doctor from the repository root, or pass --prefect-yaml PATH.")
    doctor.facts.project = project
    names = ", ".join(d.name for d in project.deployments)
    return ok(f"{path}: {len(project.deployments)} deployment(s) ({names}).")


def _variable_problem(name: str, value: Any, uses: list[VariableUse]) -> str | None:
    """What is wrong with variable ``name``'s value for the parameters it fills, or None."""
    if value is MISSING:
        return "not set"
    parameters = {use.parameter for use in uses}
    if any(p and p.endswith("job_id") for p in parameters):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            return f"holds {value!r}, not a positive whole number (a job ID)"
    elif (isinstance(value, str) and not value.strip()) or value in (None, [], {}):
        return f"holds {value!r}, an empty value"
    return None


def _set_command(name: str, uses: list[VariableUse]) -> str:
    parameter = next((use.parameter for use in uses if use.parameter in _EXAMPLES), None)
    example = _EXAMPLES.get(parameter or "", "VALUE`")
    return f"`prefect variable set {name} {example}"


def check_variables(doctor: Doctor) -> Verdict:
    """Every variable prefect.yaml names exists and holds a value its parameter takes."""
    project = doctor.facts.project
    assert project is not None  # needs prefect-yaml
    needed = project.needed_variables()
    if not needed:
        return ok("prefect.yaml names no Prefect variable.")
    problems, fixes, good = [], [], []
    for name, uses in needed.items():
        value = read_variable(doctor, name)
        problem = _variable_problem(name, value, uses)
        if problem is None:
            good.append(name)
            continue
        when = "each flow run" if all(u.when == "run" for u in uses) else "`prefect deploy --all`"
        problems.append(f"{name} {problem} (read by {when}, for {uses[0].where})")
        fixes.append(_set_command(name, uses))
    if problems:
        return fail(
            "; ".join(problems) + ". Until then `prefect deploy --all` dies with a schema error such as "
            "`'' is not of type 'integer'`, or the runs fail before triggering anything.",
            "set each: " + "; ".join(fixes) + " (add --overwrite to replace a value; or the UI's Variables page).",
        )
    return ok(f"{len(good)} variable(s) set: {', '.join(good)}.")


def _blocks_named(name: str) -> list[str]:
    """Every saved block called ``name``, as ``type-slug/name``."""
    with get_client(sync_client=True) as client:
        documents = client.read_block_documents(include_secrets=False)
    return [
        f"{doc.block_type.slug if doc.block_type else doc.block_type_name}/{doc.name}"
        for doc in documents
        if doc.name == name
    ]


def _missing_block(kind: str, name: str, source: str, create: str) -> Verdict:
    others = _blocks_named(name)
    if others:
        return fail(
            f"block {name!r} ({source}) is not a {kind} block: the block(s) of that name are {', '.join(others)}.",
            f"save a {kind} block under another name and point {source} at it, or replace that block: {create}.",
        )
    return fail(f"there is no {kind} block named {name!r} ({source}).", f"save one: {create}; or fix {source}.")


def check_credentials_block(doctor: Doctor) -> Verdict:
    """The dbt Cloud credentials block (ours, or prefect-dbt's) the deployments name loads."""
    name, source = configured(doctor, doctor.options.credentials, "--credentials", "credentials")
    if name is None:
        return skip(f"no block to check: {source}.")
    doctor.facts.credentials_block = str(name)
    try:
        credentials = resolve_credentials(str(name))
    except DbtCloudConfigError:
        create = (
            f"DbtCloudCredentials(account_id=..., api_token=..., access_url=...).save({str(name)!r}) "
            "(dbt_cloud_gate), or the UI's Blocks > dbt Cloud Gate Credentials"
        )
        return _missing_block("dbt Cloud credentials", str(name), source, create)
    doctor.facts.credentials = credentials
    doctor.facts.add_secret(credentials.api_token.get_secret_value())
    return ok(f"{name!r} ({source}): account {credentials.account_id} on {credentials.access_url}.")


def check_snowflake_block(doctor: Doctor) -> Verdict:
    """The prefect-snowflake SnowflakeConnector block the deployments name loads."""
    name, source = configured(doctor, doctor.options.snowflake, "--snowflake", "snowflake")
    if name is None:
        return skip(f"no block to check: {source}.")
    try:
        connector = resolve_connector(str(name))
    except ValueError:
        create = (
            f"SnowflakeConnector(credentials=SnowflakeCredentials(...), database=..., schema=..., "
            f"warehouse=...).save({str(name)!r}) (prefect_snowflake), or the UI's Blocks > Snowflake Connector"
        )
        return _missing_block("SnowflakeConnector", str(name), source, create)
    doctor.facts.connector = connector
    for secret in ("password", "token", "private_key_passphrase"):
        value = getattr(connector.credentials, secret, None)
        doctor.facts.add_secret(value.get_secret_value() if isinstance(value, SecretStr) else None)
    return ok(f"{name!r} ({source}): database {connector.database}, schema {connector.schema_}.")


def check_alert_blocks(doctor: Doctor) -> Verdict:
    """Every alert block the deployments name loads as a notification block."""
    project = doctor.facts.project
    assert project is not None  # needs prefect-yaml
    if not project.alert_blocks:
        return skip("no deployment of prefect.yaml names an alert block (alert_blocks).")
    problems = alert_block_problems(project.alert_blocks)  # what every flow checks before it triggers
    if problems:
        return fail(
            unloadable_blocks_message(problems),
            "save each (Prefect UI > Blocks, or SlackWebhook(url=...).save('name')), or fix prefect.yaml's "
            "alert_blocks (written as 'block-type-slug/name').",
        )
    return ok(f"{len(project.alert_blocks)} alert block(s) load: {', '.join(project.alert_blocks)}.")


def check_yaml_blocks(doctor: Doctor) -> Verdict:
    """Every block prefect.yaml names in a template (``{{ prefect.blocks.secret.git-token }}``) exists."""
    project = doctor.facts.project
    assert project is not None  # needs prefect-yaml
    if not project.blocks:
        return skip("prefect.yaml names no block in a template ({{ prefect.blocks.TYPE.NAME }}).")
    missing = []
    with get_client(sync_client=True) as client:
        for slug, name in project.blocks:
            try:
                client.read_block_document_by_name(name, slug, include_secrets=False)
            except ObjectNotFound:
                missing.append(f"{slug}/{name}")
    if missing:
        return fail(
            f"prefect.yaml names block(s) that do not exist: {', '.join(missing)} (its steps fail resolving them).",
            "save each with that type and name (Prefect UI > Blocks; a Secret: `Secret(value=...).save('NAME')`), "
            "or fix the template in prefect.yaml.",
        )
    return ok(f"{len(project.blocks)} block(s) exist: {', '.join(f'{s}/{n}' for s, n in project.blocks)}.")


def _pools(doctor: Doctor) -> list[str]:
    if doctor.options.work_pool:
        return [doctor.options.work_pool]
    project = doctor.facts.project
    return project.work_pools if project is not None else []


async def _read_pools(names: list[str]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    async with get_client() as client:
        for name in names:
            try:
                found[name] = await client.read_work_pool(name)
            except ObjectNotFound:
                found[name] = None
    return found


def check_work_pool(doctor: Doctor) -> Verdict:
    """The work pool(s) the deployments name exist, are not paused, and are process pools."""
    names = _pools(doctor)
    if not names:
        return skip("no work pool to check: prefect.yaml names none and --work-pool was not given.")
    pools = run_async(_read_pools(names))
    missing = [name for name, pool in pools.items() if pool is None]
    if missing:
        return fail(
            f"work pool(s) {', '.join(missing)} do not exist: `prefect deploy --all` fails, or its runs are never "
            "picked up.",
            "; ".join(f"`prefect work-pool create {name} --type process`" for name in missing) + ".",
        )
    paused = [name for name, pool in pools.items() if pool.is_paused]
    if paused:
        return fail(
            f"work pool(s) {', '.join(paused)} are paused: no worker picks up their runs.",
            "; ".join(f"`prefect work-pool resume {name}`" for name in paused) + ".",
        )
    other = [f"{name} ({pool.type})" for name, pool in pools.items() if pool.type != "process"]
    if other:
        return warn(
            f"work pool(s) {', '.join(other)} are not process pools, which prefect.yaml's pull step expects.",
            "use a process pool (`prefect work-pool create NAME --type process`), or adapt prefect.yaml's pull step.",
        )
    return ok(f"work pool(s) {', '.join(names)}: process, not paused.")


async def _read_workers(names: list[str]) -> dict[str, list[Any]]:
    async with get_client() as client:
        return {name: list(await client.read_workers_for_work_pool(name)) for name in names}


def _age(moment: datetime | None) -> float | None:
    if moment is None:
        return None
    aware = moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    return (datetime.now(UTC) - aware).total_seconds()


def check_worker(doctor: Doctor) -> Verdict:
    """A worker has polled each pool recently (its heartbeat)."""
    stale_after = doctor.options.worker_stale_seconds
    idle: dict[str, str] = {}
    live: list[str] = []
    for pool, workers in run_async(_read_workers(_pools(doctor))).items():
        ages = sorted((age, w.name) for w in workers if (age := _age(w.last_heartbeat_time)) is not None)
        fresh = [name for age, name in ages if age <= stale_after]
        if fresh:
            live.append(f"{pool}: {', '.join(fresh)}")
        else:
            idle[pool] = f"last heartbeat {ages[0][0]:.0f} s ago, {ages[0][1]}" if ages else "no worker ever polled it"
    if idle:
        home = f"{HOME_VARIABLE}=/path/to/dbt-cloud-gate"
        return fail(
            f"no worker has polled {', '.join(f'{pool} ({why})' for pool, why in idle.items())} in the last "
            f"{stale_after:.0f} s: scheduled runs stay Late.",
            "start one on a machine with the checkout: "
            + "; ".join(f"`{home} prefect worker start --pool {pool}`" for pool in idle)
            + ".",
        )
    return ok(f"polled within {stale_after:.0f} s: {'; '.join(live)}.")


def _home_here() -> Verdict:
    home = os.environ.get(HOME_VARIABLE, "").strip()
    fix = f"start the worker as {WORKER_FIX}."
    if not home:
        return warn(
            f"{HOME_VARIABLE} is not set where the doctor runs. A worker's environment cannot be read through "
            "Prefect's API; run the doctor on the worker's machine, in the worker's environment, to check it there.",
            fix,
        )
    problem = checkout_problem(home)  # what the pull step itself would say
    if problem is not None:
        return fail(f"{problem} where the doctor runs.", fix)
    return ok(f"{HOME_VARIABLE}={home} (a checkout) where the doctor runs, and no recent run failed for want of it.")


def check_worker_environment(doctor: Doctor) -> Verdict:
    """The worker's environment as prefect.yaml's pull step needs it (see the module docstring)."""
    project = doctor.facts.project
    assert project is not None  # needs prefect-yaml
    if not project.pull_reads_home:
        return skip(f"prefect.yaml's pull step does not read {HOME_VARIABLE}.")
    failed = run_async(pull_step_failures(_pools(doctor), HOME_VARIABLE))
    if failed:
        return fail(
            f"the latest finished flow run(s) of the pool failed at the pull step, for want of a checkout in "
            f"{HOME_VARIABLE}: {'; '.join(failed)}.",
            f"restart the worker with {WORKER_FIX}; then run one deployment: this check looks at the latest runs.",
        )
    return _home_here()
