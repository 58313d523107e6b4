"""A local, stateful dbt Cloud API v2 emulator: the embedded default for the demo and the tests.

Modules: ``specs`` (jobs, steps, faults, run records), ``state`` (the account's jobs and run life cycle),
``render`` (API objects), ``routes`` (:class:`Emulator`: one request in, one reply out), ``lenient`` (dbt Cloud's
leniency beyond its spec, departures recorded), ``listing`` (list filters, ordering, paging), ``jobs_api`` and
``runs_api`` (job and run operations), ``artifacts`` (run_results.json per step, manifest.json), ``webhooks`` and
``webhook_api`` (v3 subscriptions and signed deliveries), ``server`` (loopback HTTP or https), ``jobs`` (the demo
account).
Needs the ``[local]`` extra (the OpenAPI spec validator's PyYAML and jsonschema).
"""

from dbt_cloud_gate.dbtcloud_api.emulator.jobs import DEMO_JOBS, demo_emulator
from dbt_cloud_gate.dbtcloud_api.emulator.routes import Emulator, http_date
from dbt_cloud_gate.dbtcloud_api.emulator.server import EmulatorServer
from dbt_cloud_gate.dbtcloud_api.emulator.specs import Fault, JobSpec, RecordedRequest, StepSpec
from dbt_cloud_gate.dbtcloud_api.emulator.webhooks import DeliveryAttempt, Subscription, WebhookFault, WebhookHub

__all__ = [
    "DEMO_JOBS",
    "DeliveryAttempt",
    "Emulator",
    "EmulatorServer",
    "Fault",
    "JobSpec",
    "RecordedRequest",
    "StepSpec",
    "Subscription",
    "WebhookFault",
    "WebhookHub",
    "demo_emulator",
    "http_date",
]
