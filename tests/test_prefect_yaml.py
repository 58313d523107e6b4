"""prefect.yaml: loads as Prefect's CLI reads it, no unknown keys, entrypoints import, parameters validate,
every cron and time zone parses."""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml
from prefect.client.schemas.schedules import CronSchedule
from prefect.flows import load_flow_from_entrypoint
from pydantic import TypeAdapter

from dbt_cloud_gate.automations import HEARTBEAT_SECONDS, WATCH_TAG, install_crash_automation
from dbt_cloud_gate.models import LoadTarget
from dbt_cloud_gate.settings import LEGACY_PARAMETERS, RECONCILE, ReconcileSettings
from dbt_cloud_gate.stack.__main__ import TARGETS_VARIABLE
from dbt_cloud_gate.stack.embedded import DEMO_TARGETS
from dbt_cloud_gate.variables import VARIABLE_NAME
from tests.prefect_compat import (
    PREFECT_YAML_MODELS,
    TRIGGER_TEMPLATES_KEEP_TYPES,
    initialize_deployment_triggers,
    load_deploy_configs_and_actions,
)

ROOT = Path(__file__).resolve().parents[1]
PREFECT_YAML = ROOT / "prefect.yaml"
# What the deployments' templates resolve to in a real workspace (Prefect variables).
VARIABLES = {
    "dbt_cloud_job_id": "987654",
    "dbt_cloud_credentials_block": "prod",
    "snowflake_connector_block": "prod-snowflake",
    "dbt_cloud_external_job_id": "67890",
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
    configs, _ = load_deploy_configs_and_actions(PREFECT_YAML)
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
    assert {c["name"] for c in configs} == {
        "dbt-cloud-job",
        "nightly-etl",
        "weekly-reconcile",
        "etl-after-dbt-cloud-run",
    }
    _, actions = load_deploy_configs_and_actions(PREFECT_YAML)
    assert actions["pull"] and "prefect.deployments.steps.set_working_directory" in actions["pull"][-1]


needs_yaml_models = pytest.mark.skipif(
    PREFECT_YAML_MODELS is None, reason="Prefect < 3.4.19 has no models of prefect.yaml (the main CI stage checks)"
)


@needs_yaml_models
def test_no_unknown_keys() -> None:
    # Prefect ignores unknown keys silently: a typo (schedule vs schedules, parameter vs parameters) would vanish.
    assert PREFECT_YAML_MODELS is not None
    PrefectYamlModel, DeploymentConfig, WorkPoolConfig = PREFECT_YAML_MODELS
    data = raw()
    # `definitions` holds YAML anchors (Prefect's docs show it); Prefect's model leaves it out and ignores it.
    assert set(data) <= _keys(PrefectYamlModel) | {"definitions"}, set(data) - _keys(PrefectYamlModel)
    for deployment in data["deployments"]:
        unknown = set(deployment) - _keys(DeploymentConfig)
        assert not unknown, f"{deployment['name']}: unknown keys {unknown}"
        assert set(deployment["work_pool"]) <= _keys(WorkPoolConfig)
        for schedule in deployment.get("schedules", []):
            assert set(schedule) <= SCHEDULE_KEYS, set(schedule) - SCHEDULE_KEYS


@needs_yaml_models
def test_unknown_key_check_would_catch_a_typo() -> None:
    assert PREFECT_YAML_MODELS is not None
    DeploymentConfig = PREFECT_YAML_MODELS[1]
    assert "parameter" not in _keys(DeploymentConfig) and "schedule_" not in _keys(DeploymentConfig)


@pytest.mark.parametrize("deployment", deployments(), ids=lambda d: d["name"])
def test_entrypoint_imports_and_parameters_validate(deployment: dict[str, Any]) -> None:
    flow = load_flow_from_entrypoint(str(ROOT / deployment["entrypoint"]))
    parameters = resolve(deployment["parameters"])
    if deployment.get("triggers"):  # a run also gets the trigger's parameters (from the event): sample values here
        samples: dict[str, Any] = {"job_id": 1, "start": {"run_id": 1}}
        for name in deployment["triggers"][0].get("parameters", {}):
            parameters.setdefault(name, samples[name])
    validated = flow.validate_parameters(parameters)
    assert set(validated) >= set(parameters)
    if "job_id" in deployment["parameters"]:
        assert isinstance(validated["job_id"], int) and validated["job_id"] == int(parameters["job_id"])
        # No account IDs or tokens written into the file: they come from variables and blocks.
        assert isinstance(deployment["parameters"]["job_id"], str) and "{{" in deployment["parameters"]["job_id"]
    if "targets" in deployment["parameters"]:
        # Read at each run from the variable the local stack sets: no example tables written into the file.
        assert validated["targets"] == TARGETS_VARIABLE and VARIABLE_NAME.match(TARGETS_VARIABLE)
    assert "api_token" not in yaml.safe_dump(raw())


def test_the_stacks_targets_variable_holds_valid_targets_for_its_seeded_tables() -> None:
    value = [target.model_dump(mode="json", exclude_defaults=True) for target in DEMO_TARGETS]
    targets = TypeAdapter(list[LoadTarget]).validate_python(value)
    assert [t.target_table for t in targets] == ["ANALYTICS.MARTS.ORDERS", "ANALYTICS.MARTS.CUSTOMERS"]
    # The file's comment shows how to set the variable with a valid target.
    comment = PREFECT_YAML.read_text().split("\nname:")[0]
    assert f"prefect variable set {TARGETS_VARIABLE} " in comment
    example = re.search(r"'(\[.*?\])'", " ".join(line.lstrip("# ") for line in comment.splitlines()), re.S)
    assert example and LoadTarget.model_validate(json.loads(example.group(1))[0]).key_columns == ["ORDER_ID"]


def test_the_weekly_reconcile_takes_the_grouped_settings_and_shows_their_guards() -> None:
    (deployment,) = [d for d in deployments() if d["name"] == "weekly-reconcile"]
    flow = load_flow_from_entrypoint(str(ROOT / deployment["entrypoint"]))
    validated = flow.validate_parameters(resolve(deployment["parameters"]))
    # The groups, not the flat names of the previous release (a deployment gets no DeprecationWarning shim).
    assert not set(deployment["parameters"]) & set(LEGACY_PARAMETERS)
    reconcile = ReconcileSettings.model_validate(validated["reconcile"])
    # The file spells out the delete guards at the flow's defaults: deletes off, the ceiling on, no dry run.
    assert reconcile == RECONCILE and set(deployment["parameters"]["reconcile"]) >= {
        "propagate_deletes",
        "max_delete_fraction",
        "allow_empty_source",
        "dry_run",
    }


@pytest.mark.parametrize("deployment", deployments(), ids=lambda d: d["name"])
def test_every_cron_and_time_zone_parses(deployment: dict[str, Any]) -> None:
    assert deployment.get("schedules") or deployment.get("triggers")  # started by a schedule or by events
    for schedule in deployment.get("schedules", []):
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


# -- the event-triggered example ------------------------------------------------------------------------------


def _with_variables(value: Any) -> Any:
    """Workspace variables filled in anywhere in a string, as `prefect deploy` does across the whole config."""
    if isinstance(value, str):
        return re.sub(r"\{\{\s*prefect\.variables\.(\w+)\s*\}\}", lambda m: VARIABLES[m.group(1)], value)
    if isinstance(value, list):
        return [_with_variables(v) for v in value]
    if isinstance(value, dict):
        return {k: _with_variables(v) for k, v in value.items()}
    return value


def _webhook_event(job_id: int, run_id: int, status_code: int, event_type: str = "job.run.completed") -> Any:
    """The Prefect event the receiver emits for a delivery, as the server holds it."""
    from datetime import UTC, datetime

    from prefect.server.events.schemas.events import ReceivedEvent

    from dbt_cloud_gate.dbtcloud_api.webhooks import delivery_payload, encode_body, parse_delivery
    from dbt_cloud_gate.events import webhook_event

    body = delivery_payload(event_type, account_id=7, run_id=run_id, job_id=job_id, run_status_code=status_code)
    event = webhook_event(parse_delivery(encode_body(body)))
    return ReceivedEvent(**event.model_dump(), received=datetime.now(UTC))


def test_the_event_trigger_loads_matches_the_receivers_event_and_its_parameters_validate() -> None:
    import copy
    import uuid

    from prefect.server.events.actions import RunDeployment
    from prefect.server.events.schemas.automations import AutomationCore
    from prefect.utilities.schema_tools.hydration import HydrationContext, hydrate

    (deployment,) = [d for d in deployments() if d.get("triggers")]
    # An example: off, and no schedule, so that it starts nothing until someone turns it on for their job.
    assert [t["enabled"] for t in deployment["triggers"]] == [False] and not deployment.get("schedules")
    # And it says so where the UI lists deployments: its tags and description.
    assert "example" in deployment["tags"] and deployment["description"].startswith("EXAMPLE")
    # Its job comes from the event, and the event must be of the external job: not the one nightly-etl triggers.
    assert "job_id" not in deployment["parameters"], "deploying must not need the example's variable"
    assert "dbt_cloud_external_job_id" in str(deployment["triggers"][0]["match_related"])
    assert "dbt_cloud_job_id" not in str(deployment["triggers"])
    (trigger,) = initialize_deployment_triggers(
        deployment["name"], _with_variables(copy.deepcopy(deployment["triggers"]))
    )
    trigger.set_deployment_id(uuid.uuid4())
    automation = AutomationCore.model_validate(trigger.as_automation().model_dump(mode="json"))
    external = int(VARIABLES["dbt_cloud_external_job_id"])
    success = _webhook_event(external, 777001, 10)
    assert automation.trigger.covers(success)
    assert not automation.trigger.covers(_webhook_event(external, 777002, 20))  # a failed run: nothing to load
    assert not automation.trigger.covers(_webhook_event(external, 777003, 20, "job.run.errored"))
    assert not automation.trigger.covers(_webhook_event(12345, 777004, 10))  # another job's run

    # Rendered as the server renders a run-deployment action's parameters: the label (a string) becomes an int;
    # a server that renders templates to strings hands the flow the digits, which its parameter types convert.
    parameters = copy.deepcopy(trigger.parameters) or {}
    RunDeployment._upgrade_v1_templates(parameters)
    rendered = hydrate(
        parameters, HydrationContext(raise_on_error=True, render_jinja=True, jinja_context={"event": success})
    )
    as_rendered = int if TRIGGER_TEMPLATES_KEEP_TYPES else str
    assert rendered == {"job_id": as_rendered(external), "start": {"run_id": as_rendered(777001)}}
    flow = load_flow_from_entrypoint(str(ROOT / deployment["entrypoint"]))
    validated = flow.validate_parameters({**resolve(deployment["parameters"]), **rendered})
    assert validated["start"].run_id == 777001 and validated["job_id"] == external


@pytest.mark.parametrize("deployment", deployments(), ids=lambda d: d["name"])
def test_the_parameter_schema_carries_the_rules_the_code_enforces(deployment: dict[str, Any]) -> None:
    # jsonschema, as Prefect's server checks a run's parameters (importing Prefect's own helper first is circular
    # on Prefect 3.1).
    from jsonschema import Draft202012Validator
    from jsonschema import ValidationError as SchemaError

    def validate(value: dict[str, Any], schema: dict[str, Any], raise_on_error: bool) -> None:
        Draft202012Validator(schema).validate(value)

    flow = load_flow_from_entrypoint(str(ROOT / deployment["entrypoint"]))
    schema = flow.parameters.model_dump()
    parameters = resolve(deployment["parameters"])
    if "job_id" in schema["properties"]:  # a number, as `prefect variable set` stores it (the trigger's: sampled)
        parameters["job_id"] = int(parameters.get("job_id", 1))
    validate(parameters, schema, raise_on_error=True)  # what `prefect deployment run --param` is checked against
    bad = []
    if "job_id" in schema["properties"]:
        bad.append({**parameters, "job_id": 0})
    if "wait" in schema["properties"]:
        bad.append({**parameters, "wait": {"poll_interval_seconds": -5}})
        bad.append({**parameters, "wait": {"on_timeout": "later"}})
    if "reconcile" in schema["properties"]:
        bad.append({**parameters, "reconcile": {"max_delete_fraction": 2}})
    assert bad
    for wrong in bad:
        with pytest.raises(SchemaError):
            validate(wrong, schema, raise_on_error=True)


def test_every_deployment_is_watched_for_lost_processes_and_the_build_step_installs_the_automation() -> None:
    # Heartbeats at the interval the automation's window assumes, and its tag on every deployment (through the
    # YAML anchor, as the CLI reads it); a deployment without them would stay Running for good after a crash.
    for deployment in deployments():
        env = deployment["work_pool"]["job_variables"]["env"]
        assert env["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"] == str(HEARTBEAT_SECONDS), deployment["name"]
        assert WATCH_TAG in deployment["tags"], deployment["name"]
    _, actions = load_deploy_configs_and_actions(PREFECT_YAML)
    [step] = actions["build"]
    [(name, inputs)] = step.items()
    module, _, function = name.rpartition(".")
    assert getattr(importlib.import_module(module), function) is install_crash_automation and not inputs
