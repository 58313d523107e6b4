"""The one place where the tests bridge Prefect releases between the floor (pyproject) and the newest.

Only test harness code lives here: the package itself uses no API younger than its declared floor.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prefect.server.events.actions import RunDeployment
from rich.console import Console

__all__ = [
    "PREFECT_YAML_MODELS",
    "TRIGGER_TEMPLATES_KEEP_TYPES",
    "flow_heartbeats_off",
    "initialize_deployment_triggers",
    "load_deploy_configs_and_actions",
]

try:  # Prefect >= 3.4.19 split ``prefect/cli/deploy.py`` into a package with typed models of prefect.yaml.
    from prefect.cli.deploy._config import _load_deploy_configs_and_actions
    from prefect.cli.deploy._models import DeploymentConfig, PrefectYamlModel, WorkPoolConfig
    from prefect.cli.deploy._triggers import _initialize_deployment_triggers as initialize_deployment_triggers

    # (file, one deployment, its work pool): what ``prefect deploy`` reads of prefect.yaml; None before 3.4.19.
    PREFECT_YAML_MODELS: tuple[type[Any], type[Any], type[Any]] | None = (
        PrefectYamlModel,
        DeploymentConfig,
        WorkPoolConfig,
    )
except ImportError:  # Prefect < 3.4.19: the same functions in the single module, no models.
    from prefect.cli.deploy import (  # type: ignore[attr-defined,no-redef]
        _initialize_deployment_triggers as initialize_deployment_triggers,
    )
    from prefect.cli.deploy import (  # type: ignore[attr-defined,no-redef]
        _load_deploy_configs_and_actions,
    )

    PREFECT_YAML_MODELS = None

# A server of Prefect >= 3.6 (during that line) renders a single-expression template of a trigger's parameters to
# its JSON type ("{{ x | int }}" -> 67890); before, to the string "67890".
TRIGGER_TEMPLATES_KEEP_TYPES = hasattr(RunDeployment, "_wrap_v1_template")


def load_deploy_configs_and_actions(prefect_file: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """prefect.yaml's deployments and actions as ``prefect deploy`` reads them (quietly where it takes a console,
    a parameter of Prefect 3.6)."""
    if "console" in inspect.signature(_load_deploy_configs_and_actions).parameters:
        return _load_deploy_configs_and_actions(prefect_file, console=Console(quiet=True))
    return _load_deploy_configs_and_actions(prefect_file)


@contextlib.contextmanager
def flow_heartbeats_off() -> Iterator[None]:
    """Flow run heartbeats off (each sync flow waits up to ~1 s for its heartbeat thread to end).

    ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` came with flow heartbeats in Prefect 3.6; before it there is none to stop.
    """
    import prefect.settings

    try:
        setting = prefect.settings.PREFECT_FLOWS_HEARTBEAT_FREQUENCY
    except AttributeError:
        yield
        return
    with prefect.settings.temporary_settings({setting: None}):
        yield
