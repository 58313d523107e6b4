"""The preflight task: every load target of an ETL flow checked before its dbt Cloud job is triggered.

The checks live in ``dbt_cloud_gate.preflight``; this module holds the Prefect task only.
"""

from __future__ import annotations

import time

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect_snowflake import SnowflakeConnector

from dbt_cloud_gate.blocks.dbt_cloud import DbtCloudCredentials, resolve_credentials
from dbt_cloud_gate.preflight import Findings, PreflightItem, raise_for_problems, run_preflight
from dbt_cloud_gate.settings import LoadSettings

__all__ = ["preflight_loads"]


@task(name="preflight-loads", cache_policy=NO_CACHE)
def preflight_loads(
    connector: SnowflakeConnector,
    credentials: DbtCloudCredentials | str | None,
    items: list[PreflightItem],
    settings: LoadSettings,
    *,
    what: str,
) -> Findings:
    """Check the targets of ``items`` (``what`` names them in the error); raise ``PreflightFailed`` listing every
    problem, or log the warnings and what could not be checked and return the findings."""
    log = get_run_logger()
    started = time.monotonic()
    # The dbt side needs the job's manifest only to check source_model, and only with check_model_built on.
    creds = resolve_credentials(credentials) if settings.check_model_built else None
    if creds is None:
        found = run_preflight(connector, None, items, settings)
    else:
        with creds.get_client() as client:
            found = run_preflight(connector, client, items, settings)
    for warning in found.warnings:
        log.warning("Preflight: %s", warning)
    if found.unchecked:
        log.info("Preflight could not check: %s.", "; ".join(found.unchecked))
    raise_for_problems(found, what)
    log.info(
        "Preflight of %s passed: %s target(s), %s statement(s), %s dbt Cloud request(s), %.2f s.",
        what,
        sum(len(item.targets) for item in items),
        found.statements,
        found.requests,
        time.monotonic() - started,
    )
    return found
