"""dbt-cloud-gate: Prefect 3 flows that trigger a dbt Cloud job, wait for its run, and gate downstream steps on it.

The public API is every name in ``__all__``, importable from here::

    from dbt_cloud_gate import run_dbt_cloud_job, DbtCloudCredentials, DbtCloudRunFailed, WaitSettings

Names are imported on first use (PEP 562), so ``import dbt_cloud_gate.dbtcloud_api`` (the Prefect-free dbt Cloud
client) does not import Prefect. The subpackages, one job each:

- ``dbtcloud_api``: the dbt Cloud client (HTTP and dbt Cloud only; no Prefect), and ``dbtcloud_api.emulator``, the
  local dbt Cloud (extra ``[local]``).
- the modules beside this file: the Prefect-side library (settings, models, errors, outcomes, loads, waiter,
  webhook receiver), neither tasks nor flows.
- ``blocks``: configuration and secrets; ``tasks``: the Prefect tasks; ``flows``: the flows.
- ``stack``: the local stack and the embedded stand-ins (extra ``[local]``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Public name -> the module that defines it.
_EXPORTS: dict[str, str] = {
    # Flows.
    "run_dbt_cloud_job": "dbt_cloud_gate.flows.dbt_cloud",
    "run_dbt_cloud_jobs": "dbt_cloud_gate.flows.fanout",
    "dbt_cloud_etl": "dbt_cloud_gate.flows.etl",
    "dbt_cloud_etl_many": "dbt_cloud_gate.flows.etl",
    "dbt_cloud_reconcile": "dbt_cloud_gate.flows.reconcile",
    "ensure_dbt_cloud_webhooks": "dbt_cloud_gate.flows.webhooks",
    # Blocks.
    "DbtCloudCredentials": "dbt_cloud_gate.blocks.dbt_cloud",
    "DbtCloudJob": "dbt_cloud_gate.blocks.job",
    # Settings.
    "WaitSettings": "dbt_cloud_gate.settings",
    "StartSettings": "dbt_cloud_gate.settings",
    "TriggerOverrides": "dbt_cloud_gate.settings",
    "LoadSettings": "dbt_cloud_gate.settings",
    "ReconcileSettings": "dbt_cloud_gate.settings",
    # Models.
    "DbtCloudRunResult": "dbt_cloud_gate.models",
    "DbtCloudRunSummary": "dbt_cloud_gate.models",
    "DbtCloudJobRequest": "dbt_cloud_gate.models",
    "LoadTarget": "dbt_cloud_gate.models",
    "LoadReport": "dbt_cloud_gate.models",
    "EtlPipeline": "dbt_cloud_gate.models",
    "EtlSummary": "dbt_cloud_gate.models",
    # Errors.
    "DbtCloudGateError": "dbt_cloud_gate.errors",
    "DbtCloudRunError": "dbt_cloud_gate.errors",
    "DbtCloudRunFailed": "dbt_cloud_gate.errors",
    "DbtCloudRunCancelled": "dbt_cloud_gate.errors",
    "DbtCloudRunTimedOut": "dbt_cloud_gate.errors",
    "DbtCloudRunInvalid": "dbt_cloud_gate.errors",
    "DbtCloudRunsFailed": "dbt_cloud_gate.errors",
    "DbtCloudJobAlreadyRunning": "dbt_cloud_gate.errors",
    "DbtCloudNativeScheduleOn": "dbt_cloud_gate.errors",
    "EtlFailed": "dbt_cloud_gate.errors",
    "DeletesRefused": "dbt_cloud_gate.errors",
    # The dbt Cloud client (Prefect-free).
    "DbtCloudClient": "dbt_cloud_gate.dbtcloud_api",
    "AsyncDbtCloudClient": "dbt_cloud_gate.dbtcloud_api",
    "DbtCloudError": "dbt_cloud_gate.dbtcloud_api",
    "RunStatus": "dbt_cloud_gate.dbtcloud_api",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from dbt_cloud_gate.blocks.dbt_cloud import DbtCloudCredentials
    from dbt_cloud_gate.blocks.job import DbtCloudJob
    from dbt_cloud_gate.dbtcloud_api import AsyncDbtCloudClient, DbtCloudClient, DbtCloudError, RunStatus
    from dbt_cloud_gate.errors import (
        DbtCloudGateError,
        DbtCloudJobAlreadyRunning,
        DbtCloudNativeScheduleOn,
        DbtCloudRunCancelled,
        DbtCloudRunError,
        DbtCloudRunFailed,
        DbtCloudRunInvalid,
        DbtCloudRunsFailed,
        DbtCloudRunTimedOut,
        DeletesRefused,
        EtlFailed,
    )
    from dbt_cloud_gate.flows.dbt_cloud import run_dbt_cloud_job
    from dbt_cloud_gate.flows.etl import dbt_cloud_etl, dbt_cloud_etl_many
    from dbt_cloud_gate.flows.fanout import run_dbt_cloud_jobs
    from dbt_cloud_gate.flows.reconcile import dbt_cloud_reconcile
    from dbt_cloud_gate.flows.webhooks import ensure_dbt_cloud_webhooks
    from dbt_cloud_gate.models import (
        DbtCloudJobRequest,
        DbtCloudRunResult,
        DbtCloudRunSummary,
        EtlPipeline,
        EtlSummary,
        LoadReport,
        LoadTarget,
    )
    from dbt_cloud_gate.settings import (
        LoadSettings,
        ReconcileSettings,
        StartSettings,
        TriggerOverrides,
        WaitSettings,
    )


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'dbt_cloud_gate' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
