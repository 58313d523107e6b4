"""The doctor: ``python -m dbt_cloud_gate doctor [--json]`` checks a real setup end to end and prints a checklist
with the fix of each failure (issue 17).

- :mod:`.core`: ``Check`` (name, status ok/warn/fail/skip, detail, fix), the options, the runner;
- :mod:`.project`: what ``prefect.yaml`` asks (deployments, variables, work pools, the pull step);
- :mod:`.prefect_checks`, :mod:`.workers`: the Prefect API, variables, blocks, work pool, worker, its environment;
- :mod:`.dbt_checks`: the token's reach, the job's own schedule, the webhook subscription and receiver;
- :mod:`.load_checks`: every load target, through the ETL flows' own preflight;
- :mod:`.catalog`: the checks in order (add one there), :mod:`.render`: text and JSON, :mod:`.cli`: the command.

Nothing is triggered and no secret is printed; every network call has a finite timeout (``--timeout`` for
Prefect, dbt Cloud and the receiver; the connector's and the preflight's own for Snowflake).
"""

from dbt_cloud_gate.doctor.catalog import CHECKS, run_doctor
from dbt_cloud_gate.doctor.core import Check, CheckSpec, Doctor, DoctorOptions, Status, Verdict, exit_code
from dbt_cloud_gate.doctor.render import render_json, render_text

__all__ = [
    "CHECKS",
    "Check",
    "CheckSpec",
    "Doctor",
    "DoctorOptions",
    "Status",
    "Verdict",
    "exit_code",
    "render_json",
    "render_text",
    "run_doctor",
]
