"""The demo account the emulator serves when no jobs file is given."""

from __future__ import annotations

from typing import Any

from dbt_cloud_gate.dbtcloud_api.emulator.routes import Emulator
from dbt_cloud_gate.dbtcloud_api.emulator.specs import JobSpec
from dbt_cloud_gate.dbtcloud_api.openapi import load_default_validator

DEMO_ACCOUNT_ID = 1
DEMO_TOKEN = "emulator-token"


def _demo_jobs() -> list[JobSpec]:
    # Every job runs JobSpec's default `dbt build`; the two builds leave the queue and start half a second each.
    quick_start: dict[str, Any] = {"queue_seconds": 0.5, "start_seconds": 0.5}
    return [
        JobSpec(
            id=101,
            name="Nightly build",
            run_seconds=3.0,
            models=["stg_orders", "stg_customers", "orders", "customers"],
            history_seconds=[3.1, 2.9, 3.0, 3.2, 2.8],
            **quick_start,
        ),
        JobSpec(
            id=102,
            name="Failing build",
            run_seconds=2.0,
            outcome="error",
            models=["stg_payments", "payments"],
            **quick_start,
        ),
        JobSpec(id=103, name="Scheduled in dbt Cloud too", schedule_enabled=True, run_seconds=2.0),
    ]


DEMO_JOBS = _demo_jobs()


def demo_emulator(**kwargs: Any) -> Emulator:
    """An emulator with the demo jobs, validating requests against the spec when it can be found."""
    kwargs.setdefault("account_id", DEMO_ACCOUNT_ID)
    kwargs.setdefault("token", DEMO_TOKEN)
    kwargs.setdefault("validator", load_default_validator())
    return Emulator(_demo_jobs(), **kwargs)
