"""The doctor's checks, in the order they run, and :func:`run_doctor`.

To add a check: write a function of a :class:`~dbt_cloud_gate.doctor.core.Doctor` returning a ``Verdict`` (catch
what it expects; the runner turns anything else into its own ``fail``), and append a :class:`CheckSpec` to
:data:`CHECKS` naming the checks whose facts it reads (it is skipped, saying so, when one of them did not pass).
"""

from __future__ import annotations

from collections.abc import Sequence

from prefect.settings import PREFECT_API_REQUEST_TIMEOUT, PREFECT_CLIENT_MAX_RETRIES, temporary_settings

from dbt_cloud_gate.doctor import dbt_checks as dbt
from dbt_cloud_gate.doctor import load_checks as loads
from dbt_cloud_gate.doctor import prefect_checks as pf
from dbt_cloud_gate.doctor.core import Check, CheckSpec, DoctorOptions, run_checks
from dbt_cloud_gate.doctor.crash_checks import check_crash_automation

__all__ = ["CHECKS", "run_doctor"]

API = "prefect-api"
YAML = "prefect-yaml"
CREDENTIALS = "credentials-block"
JOB = "dbt-cloud-job"

CHECKS: list[CheckSpec] = [
    CheckSpec(API, pf.check_prefect_api, summary="the Prefect API answers"),
    CheckSpec(YAML, pf.check_prefect_yaml, summary="prefect.yaml reads"),
    CheckSpec("variables", pf.check_variables, (API, YAML), "the variables prefect.yaml names are set"),
    CheckSpec(CREDENTIALS, pf.check_credentials_block, (API,), "the dbt Cloud credentials block loads"),
    CheckSpec("snowflake-block", pf.check_snowflake_block, (API,), "the SnowflakeConnector block loads"),
    CheckSpec("alert-blocks", pf.check_alert_blocks, (API, YAML), "the alert blocks load"),
    CheckSpec("yaml-blocks", pf.check_yaml_blocks, (API, YAML), "the blocks prefect.yaml's templates name exist"),
    CheckSpec("work-pool", pf.check_work_pool, (API,), "the work pool exists, not paused"),
    CheckSpec("worker", pf.check_worker, ("work-pool",), "a worker polls the pool"),
    CheckSpec("worker-environment", pf.check_worker_environment, (API, YAML), "DBT_CLOUD_GATE_HOME for the pull"),
    CheckSpec("crash-automation", check_crash_automation, (API, YAML), "lost flow runs end Crashed"),
    CheckSpec(JOB, dbt.check_dbt_cloud_job, (CREDENTIALS,), "the token reads the job"),
    CheckSpec("job-schedule", dbt.check_job_schedule, (JOB,), "the job's own schedule is off"),
    CheckSpec("load-targets", loads.check_load_targets, ("snowflake-block",), "the preflight of every target"),
    CheckSpec("webhook-subscription", dbt.check_webhook_subscription, (CREDENTIALS,), "the subscription is right"),
    CheckSpec("webhook-receiver", dbt.check_webhook_receiver, (), "the receiver answers /healthz"),
]


def run_doctor(options: DoctorOptions, checks: Sequence[CheckSpec] | None = None) -> list[Check]:
    """Run ``checks`` (default :data:`CHECKS`) with every Prefect request bounded by ``options.timeout_seconds``."""
    with temporary_settings({PREFECT_API_REQUEST_TIMEOUT: options.timeout_seconds, PREFECT_CLIENT_MAX_RETRIES: 1}):
        return run_checks(options, CHECKS if checks is None else checks)
