"""What ``prefect.yaml`` asks of a setup, read without Prefect's deploy machinery: its deployments' parameters and
work pools, every ``{{ prefect.variables.X }}`` it names (and whether ``prefect deploy`` needs it), the variables
its deployments read at each run (``targets: nightly_etl_targets``), and whether its pull step reads
``DBT_CLOUD_GATE_HOME`` from the worker's environment."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dbt_cloud_gate.deploy_steps import HOME_VARIABLE

__all__ = ["HOME_VARIABLE", "Deployment", "ProjectConfig", "ProjectError", "VariableUse", "read_project"]

# The pull step of ours that reads it (an older prefect.yaml reads it in a shell step).
PULL_STEP = "dbt_cloud_gate.deploy_steps.checkout_directory"
# A deployment parameter that, given as a string, names a Prefect variable read at each run.
_RUN_TIME_VARIABLE_PARAMETERS = ("targets", "pipelines")
_TEMPLATE = re.compile(r"\{\{\s*prefect\.variables\.([A-Za-z0-9_-]+)\s*\}\}")
# ``{{ prefect.blocks.secret.git-token }}``: a block by type slug and name (a field may follow the name).
_BLOCK_TEMPLATE = re.compile(r"\{\{\s*prefect\.blocks\.([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)[^}]*\}\}")


class ProjectError(ValueError):
    """``prefect.yaml`` is missing or cannot be read: the message says which and what to do."""


@dataclass(frozen=True)
class VariableUse:
    """One place that names a Prefect variable: ``where`` (``nightly-etl.parameters.job_id``), the parameter it
    fills (``None`` elsewhere), and ``when``: ``deploy`` (a template, filled by ``prefect deploy``), ``run`` (read
    by each flow run) or ``off`` (inside a trigger that is off: nothing needs it yet)."""

    variable: str
    where: str
    parameter: str | None
    when: str


@dataclass(frozen=True)
class Deployment:
    """A deployment of ``prefect.yaml``: its name, parameters and work pool; its tags and the flow-run heartbeat
    interval its work pool's ``job_variables`` set (``None``: not set)."""

    name: str
    parameters: dict[str, Any]
    work_pool: str | None
    tags: list[str] = field(default_factory=list)
    heartbeat: str | None = None


@dataclass(frozen=True)
class ProjectConfig:
    """The parts of ``prefect.yaml`` the doctor checks."""

    path: Path
    deployments: list[Deployment]
    uses: list[VariableUse]
    pull_reads_home: bool
    blocks: list[tuple[str, str]] = field(default_factory=list)

    def parameter(self, name: str) -> tuple[Any, str] | None:
        """The first deployment's value of parameter ``name`` and where it is (``None``: no deployment sets it)."""
        for deployment in self.deployments:
            if name in deployment.parameters:
                return deployment.parameters[name], f"{deployment.name}.parameters.{name}"
        return None

    @property
    def work_pools(self) -> list[str]:
        """The work pools the deployments name, each once."""
        return list(dict.fromkeys(d.work_pool for d in self.deployments if d.work_pool))

    @property
    def alert_blocks(self) -> list[str]:
        """Every alert block the deployments name, each once."""
        found: list[str] = []
        for deployment in self.deployments:
            blocks = deployment.parameters.get("alert_blocks") or []
            found += [str(block) for block in blocks] if isinstance(blocks, list) else [str(blocks)]
        return list(dict.fromkeys(found))

    def needed_variables(self) -> dict[str, list[VariableUse]]:
        """The variables that ``prefect deploy --all`` or a flow run needs, each with where it is used."""
        needed: dict[str, list[VariableUse]] = {}
        for use in self.uses:
            if use.when != "off":
                needed.setdefault(use.variable, []).append(use)
        return needed


def _templates(value: Any, where: str, when: str, parameter: str | None) -> list[VariableUse]:
    """Every ``{{ prefect.variables.X }}`` inside ``value`` (a YAML tree)."""
    if isinstance(value, str):
        return [VariableUse(name, where, parameter, when) for name in _TEMPLATE.findall(value)]
    if isinstance(value, dict):
        return [u for key, item in value.items() for u in _templates(item, f"{where}.{key}", when, parameter)]
    if isinstance(value, list):
        return [u for index, item in enumerate(value) for u in _templates(item, f"{where}[{index}]", when, parameter)]
    return []


def _deployment_uses(raw: dict[str, Any], name: str) -> list[VariableUse]:
    uses: list[VariableUse] = []
    parameters = raw.get("parameters") or {}
    for key, value in parameters.items() if isinstance(parameters, dict) else []:
        where = f"{name}.parameters.{key}"
        uses += _templates(value, where, "deploy", str(key))
        if key in _RUN_TIME_VARIABLE_PARAMETERS and isinstance(value, str) and not _TEMPLATE.search(value):
            uses.append(VariableUse(value.strip(), where, str(key), "run"))
    for key, value in raw.items():
        if key == "parameters":
            continue
        if key == "triggers" and isinstance(value, list):
            for index, trigger in enumerate(value):
                enabled = not (isinstance(trigger, dict) and trigger.get("enabled") is False)
                uses += _templates(trigger, f"{name}.triggers[{index}]", "deploy" if enabled else "off", None)
        else:
            uses += _templates(value, f"{name}.{key}", "deploy", None)
    return uses


def _load_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ProjectError(
            f"{path} does not exist: run the doctor from the repository root, or pass --prefect-yaml PATH."
        )
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ProjectError(f"{path} cannot be read as YAML: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("deployments"), list) or not data["deployments"]:
        raise ProjectError(f"{path} has no `deployments:` list: is it the project's prefect.yaml?")
    return data


def read_project(path: Path) -> ProjectConfig:
    """The deployments, variables and pull step of the ``prefect.yaml`` at ``path``; ``ProjectError`` if unreadable."""
    data = _load_yaml(path)
    deployments: list[Deployment] = []
    uses: list[VariableUse] = []
    for index, raw in enumerate(data["deployments"]):
        if not isinstance(raw, dict):
            raise ProjectError(f"{path}: deployments[{index}] is not a mapping.")
        name = str(raw.get("name") or f"deployments[{index}]")
        pool = raw.get("work_pool")
        pool_name = pool.get("name") if isinstance(pool, dict) else None
        parameters = raw.get("parameters") if isinstance(raw.get("parameters"), dict) else {}
        env = ((pool.get("job_variables") or {}).get("env") or {}) if isinstance(pool, dict) else {}
        heartbeat = env.get("PREFECT_FLOWS_HEARTBEAT_FREQUENCY") if isinstance(env, dict) else None
        tags = [str(tag) for tag in raw.get("tags") or []] if isinstance(raw.get("tags"), list) else []
        deployments.append(
            Deployment(
                name,
                dict(parameters or {}),
                str(pool_name) if pool_name else None,
                tags,
                None if heartbeat is None else str(heartbeat),
            )
        )
        uses += _deployment_uses(raw, name)
    for section in ("build", "push", "pull"):
        uses += _templates(data.get(section), section, "deploy", None)
    pull = yaml.safe_dump(data.get("pull"))
    pull_reads_home = HOME_VARIABLE in pull or PULL_STEP in pull
    blocks = list(dict.fromkeys(_BLOCK_TEMPLATE.findall(yaml.safe_dump(data))))
    return ProjectConfig(path, deployments, uses, pull_reads_home, blocks)
