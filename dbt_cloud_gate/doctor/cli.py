"""``python -m dbt_cloud_gate doctor``: its arguments, each checked where it enters, and the command itself."""

from __future__ import annotations

import argparse
from pathlib import Path

from dbt_cloud_gate.dbtcloud_api import DbtCloudConfigError
from dbt_cloud_gate.dbtcloud_api.webhooks import check_client_url
from dbt_cloud_gate.doctor.catalog import run_doctor
from dbt_cloud_gate.doctor.core import DoctorOptions, exit_code
from dbt_cloud_gate.doctor.render import render_json, render_text
from dbt_cloud_gate.variables import VARIABLE_NAME

__all__ = ["add_arguments", "run"]

DESCRIPTION = (
    "Check a setup end to end (Prefect API, prefect.yaml's variables, blocks, work pool and worker, the dbt Cloud "
    "token's reach and the job's schedule, every load target, the webhooks) and print a checklist with the fix of "
    "each failure. Nothing is triggered. Exit code 0 when nothing failed, 1 otherwise."
)


def _job_id(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a job ID: give the dbt Cloud job's number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value} is not a job ID: a dbt Cloud job ID is a positive number")
    return value


def _name(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("a block name cannot be empty")
    return text.strip()


def _variable(text: str) -> str:
    if not VARIABLE_NAME.match(text.strip()):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a Prefect variable name (lowercase letters, digits, dashes and underscores)"
        )
    return text.strip()


def _url(text: str) -> str:
    try:
        return check_client_url(text)
    except DbtCloudConfigError as exc:
        raise argparse.ArgumentTypeError(
            f"{exc} Give the receiver's URL, like https://hooks.example.com/dbt-cloud/webhooks"
        ) from None


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 600:
        raise argparse.ArgumentTypeError(f"{text!r}: give a number of seconds above 0, at most 600")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The doctor's options on ``parser``."""
    parser.add_argument("--json", action="store_true", help="print the checks as JSON")
    parser.add_argument("--prefect-yaml", type=Path, default=Path("prefect.yaml"), help="default: ./prefect.yaml")
    parser.add_argument("--job-id", type=_job_id, help="the dbt Cloud job (default: the variable prefect.yaml names)")
    parser.add_argument("--credentials", type=_name, help="the dbt Cloud credentials block (default: prefect.yaml's)")
    parser.add_argument("--snowflake", type=_name, help="the SnowflakeConnector block (default: prefect.yaml's)")
    parser.add_argument(
        "--targets", type=_variable, help="the variable holding the load targets (default: prefect.yaml's)"
    )
    parser.add_argument("--receiver-url", type=_url, help="the webhook receiver's URL (default: the subscription's)")
    parser.add_argument("--work-pool", type=_name, help="the work pool (default: prefect.yaml's)")
    parser.add_argument("--secret-block", type=_name, help="the webhook secrets' Secret block")
    parser.add_argument("--timeout", type=_seconds, default=15.0, help="seconds for each network call (default 15)")


def run(args: argparse.Namespace) -> int:
    """Run the doctor with the parsed ``args``, print the checklist; the exit code."""
    options = DoctorOptions(
        prefect_yaml=args.prefect_yaml,
        job_id=args.job_id,
        credentials=args.credentials,
        snowflake=args.snowflake,
        targets=args.targets,
        receiver_url=args.receiver_url,
        work_pool=args.work_pool,
        secret_block=args.secret_block,
        timeout_seconds=args.timeout,
    )
    checks = run_doctor(options)
    print(render_json(checks) if args.json else render_text(checks), flush=True)
    return exit_code(checks)
