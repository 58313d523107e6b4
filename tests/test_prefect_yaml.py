"""prefect.yaml: loads as Prefect's CLI reads it, no unknown keys, entrypoints import, parameters validate,
every cron and time zone parses."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml
from prefect.cli.deploy._config import _load_deploy_configs_and_actions
from prefect.cli.deploy._models import DeploymentConfig, PrefectYamlModel, WorkPoolConfig
from prefect.client.schemas.schedules import CronSchedule
from prefect.flows import load_flow_from_entrypoint
from rich.console import Console

from tasks.snowflake import LoadTarget

ROOT = Path(__file__).resolve().parents[1]
PREFECT_YAML = ROOT / "prefect.yaml"
# What the deployments' templates resolve to in a real workspace (Prefect variables).
VARIABLES = {
    "dbt_cloud_job_id": "987654",
    "dbt_cloud_credentials_block": "prod",
    "snowflake_connector_block": "prod-snowflake",
}
SCHEDULE_KEYS = {
    "cron",
    "timezone",
    "active",
    "day_or",
    "interval",
    "anchor_date",
    "rrule",
    "parameters",
    "slug",
    "max_active_runs",
    "catchup",
    "replaces",
}


def raw() -> dict[str, Any]:
    return yaml.safe_load(PREFECT_YAML.read_text())


def deployments() -> list[dict[str, Any]]:
    configs, _ = _load_deploy_configs_and_actions(PREFECT_YAML, console=Console(quiet=True))
    return configs


def _keys(model: type[Any]) -> set[str]:
    return {field.alias or name for name, field in model.model_fields.items()}


def resolve(value: Any) -> Any:
    if isinstance(value, str):
        found = re.fullmatch(r"\{\{\s*prefect\.variables\.(\w+)\s*\}\}", value)
        if found:
            return VARIABLES[found.group(1)]
        assert "{{" not in value, f"unresolved template {value!r}"
        return value
    if isinstance(value, list):
        return [resolve(v) for v in value]
    if isinstance(value, dict):
        return {k: resolve(v) for k, v in value.items()}
    return value


def test_loads_as_the_cli_reads_it() -> None:
    configs = deployments()
    assert {c["name"] for c in configs} == {"dbt-cloud-job", "nightly-etl", "weekly-reconcile"}
    _, actions = _load_deploy_configs_and_actions(PREFECT_YAML, console=Console(quiet=True))
    assert actions["pull"] and "prefect.deployments.steps.set_working_directory" in actions["pull"][-1]


def test_no_unknown_keys() -> None:
    # Prefect ignores unknown keys silently: a typo (schedule vs schedules, parameter vs parameters) would vanish.
    data = raw()
    assert set(data) <= _keys(PrefectYamlModel), set(data) - _keys(PrefectYamlModel)
    for deployment in data["deployments"]:
        unknown = set(deployment) - _keys(DeploymentConfig)
        assert not unknown, f"{deployment['name']}: unknown keys {unknown}"
        assert set(deployment["work_pool"]) <= _keys(WorkPoolConfig)
        for schedule in deployment.get("schedules", []):
            assert set(schedule) <= SCHEDULE_KEYS, set(schedule) - SCHEDULE_KEYS


def test_unknown_key_check_would_catch_a_typo() -> None:
    assert "parameter" not in _keys(DeploymentConfig) and "schedule_" not in _keys(DeploymentConfig)


@pytest.mark.parametrize("deployment", deployments(), ids=lambda d: d["name"])
def test_entrypoint_imports_and_parameters_validate(deployment: dict[str, Any]) -> None:
    flow = load_flow_from_entrypoint(str(ROOT / deployment["entrypoint"]))
    parameters = resolve(deployment["parameters"])
    validated = flow.validate_parameters(parameters)
    assert set(validated) >= set(parameters)
    if "job_id" in parameters:
        assert isinstance(validated["job_id"], int) and validated["job_id"] == 987654
        # No account IDs or tokens written into the file: they come from variables and blocks.
        assert isinstance(deployment["parameters"]["job_id"], str) and "{{" in deployment["parameters"]["job_id"]
    for target in validated.get("targets", []):
        assert LoadTarget.model_validate(target).lookback_seconds is not None
    assert "api_token" not in yaml.safe_dump(raw())


@pytest.mark.parametrize("deployment", deployments(), ids=lambda d: d["name"])
def test_every_cron_and_time_zone_parses(deployment: dict[str, Any]) -> None:
    assert deployment["schedules"]
    for schedule in deployment["schedules"]:
        ZoneInfo(schedule["timezone"])
        parsed = CronSchedule(cron=schedule["cron"], timezone=schedule["timezone"])
        assert parsed.cron == schedule["cron"]
    assert deployment["work_pool"]["name"] == "dbt-cloud-gate"


def test_bad_cron_or_zone_would_be_caught() -> None:
    with pytest.raises(ValueError):
        CronSchedule(cron="61 * * * *", timezone="UTC")
    with pytest.raises(ValueError):
        CronSchedule(cron="0 5 * * *", timezone="Europe/Londn")


def test_no_job_is_triggered_by_two_active_schedules() -> None:
    # The pipeline owns the schedule: two active schedules reading one job variable run that job twice.
    active: dict[str, list[str]] = {}
    for deployment in raw()["deployments"]:
        job = deployment.get("parameters", {}).get("job_id")
        if job is not None and any(s.get("active", True) for s in deployment.get("schedules", [])):
            active.setdefault(str(job), []).append(deployment["name"])
    assert active and all(len(names) == 1 for names in active.values()), active


def test_every_parameter_of_every_deployed_flow_is_described() -> None:
    # The Prefect UI's run form shows these descriptions (read from the flows' docstrings).
    for deployment in deployments():
        flow = load_flow_from_entrypoint(str(ROOT / deployment["entrypoint"]))
        properties = flow.parameters.model_dump()["properties"]
        missing = [name for name, schema in properties.items() if not schema.get("description")]
        assert not missing, f"{deployment['entrypoint']}: parameters without a description: {missing}"
