"""The doctor's checks of dbt Cloud: the token's reach (account, job), the job's own schedule, the webhook
subscription, and the webhook receiver's health.

Nothing is triggered: a run is the most expensive thing the pipeline does. Whether the token may trigger the job
is inferred from a read that works (a service token that reads a job may still lack Job Runner rights); the
detail says so.
"""

from __future__ import annotations

from typing import Any, cast
from urllib.parse import urlsplit

import httpx
from prefect.blocks.system import Secret

from dbt_cloud_gate.dbtcloud_api import (
    DbtCloudAuthError,
    DbtCloudClient,
    DbtCloudError,
    DbtCloudNotFoundError,
    DbtCloudTransportError,
    RetryPolicy,
    Timeouts,
)
from dbt_cloud_gate.dbtcloud_api.webhooks import EVENT_COMPLETED, WebhookSubscription
from dbt_cloud_gate.doctor.core import Doctor, Verdict, fail, ok, skip, warn
from dbt_cloud_gate.doctor.prefect_checks import configured
from dbt_cloud_gate.receiver import DEFAULT_SECRET_BLOCK

__all__ = [
    "check_dbt_cloud_job",
    "check_job_schedule",
    "check_webhook_receiver",
    "check_webhook_subscription",
    "dbt_cloud_client",
]


def _ensure(doctor: Doctor, url: str | None, block: str) -> str:
    """The command that makes the subscription right, with what the doctor knows filled in."""
    credentials = doctor.facts.credentials_block or "BLOCK"
    return (
        f"`python -m flows.webhooks ensure --receiver-url {url or 'URL'} --credentials {credentials} "
        f"--secret-block {block}`"
    )


def dbt_cloud_client(doctor: Doctor) -> DbtCloudClient:
    """A client of the credentials block's account with short timeouts, one retry and no 404 grace."""
    credentials = doctor.facts.credentials
    assert credentials is not None  # needs credentials-block
    seconds = doctor.options.timeout_seconds
    return credentials.get_client(
        timeouts=Timeouts(connect=seconds, read=seconds, write=seconds, pool=seconds, total=seconds * 2),
        retry=RetryPolicy(
            max_attempts=2, max_elapsed_seconds=seconds * 2, backoff_initial_seconds=0.2, not_found_grace_seconds=0
        ),
    )


def _job_error(doctor: Doctor, job_id: int, source: str, exc: DbtCloudError) -> Verdict:
    credentials = doctor.facts.credentials
    assert credentials is not None
    block = f"block {doctor.facts.credentials_block!r}"
    account = credentials.account_id
    if isinstance(exc, DbtCloudAuthError) and exc.status_code == 401:
        return fail(
            f"dbt Cloud refused the API token of {block} (401: wrong, expired or revoked).",
            f"save a valid service token (Job Admin, or Job Runner) as api_token of {block}.",
        )
    if isinstance(exc, DbtCloudAuthError):
        return fail(
            f"the token of {block} may not read account {account} (403): a wrong account_id, or a token of another "
            "account or without rights on this one.",
            f"check account_id (and access_url) of {block}; give the service token Job Admin or Job Runner "
            "permission on the job's project.",
        )
    if isinstance(exc, DbtCloudNotFoundError):
        return fail(
            f"dbt Cloud job {job_id} ({source}) does not exist in account {account} (404), or the token cannot see it.",
            f"correct the job ID ({source}: `prefect variable set dbt_cloud_job_id ID --overwrite`, or --job-id), or "
            f"account_id of {block}.",
        )
    if isinstance(exc, DbtCloudTransportError):
        return fail(
            f"no answer from dbt Cloud at {credentials.access_url}: {exc}",
            f"check access_url of {block} (your region's or cell's host) and the network or proxy to it.",
        )
    return fail(f"dbt Cloud answered an error reading job {job_id}: {exc}", "see the error; try again later.")


def check_dbt_cloud_job(doctor: Doctor) -> Verdict:
    """The token reads the account's job (never triggers it)."""
    job_id, source = configured(doctor, doctor.options.job_id, "--job-id", "job_id")
    if job_id is None:
        return skip(f"no job to check: {source}.")
    if isinstance(job_id, bool) or not isinstance(job_id, int) or job_id <= 0:
        return skip(f"the job ID {job_id!r} ({source}) is not a positive whole number (see variables).")
    with dbt_cloud_client(doctor) as client:
        try:
            job = client.get_job(job_id)
        except DbtCloudError as exc:
            return _job_error(doctor, job_id, source, exc)
    doctor.facts.job_id, doctor.facts.job = job_id, job
    return ok(
        f"job {job_id} ({job.name!r}, {source}) of account {job.account_id} reads with the token. The right to "
        "trigger it is only inferred from that read (a token that reads may still lack Job Runner rights): the "
        "doctor never triggers a run."
    )


def check_job_schedule(doctor: Doctor) -> Verdict:
    """The job's own dbt Cloud schedule is off: the pipeline owns the schedule."""
    job = doctor.facts.job
    assert job is not None  # needs dbt-cloud-job
    if job.schedule_enabled:
        return fail(
            f"dbt Cloud job {job.id} ({job.name!r}) has its own dbt Cloud schedule on "
            f"({job.cron_humanized or 'cron'}): it runs a second time besides the pipeline's schedule.",
            "turn off 'Run on schedule' in the job's triggers in dbt Cloud, or run the deployment once with "
            "start={'native_schedule': 'disable'} (the flow turns it off and notes it in the job's description).",
        )
    return ok(f"job {job.id}'s own dbt Cloud schedule is off (the pipeline's deployments schedule it).")


def _secret_ids(name: str) -> list[str] | None:
    """The subscription IDs the Secret block ``name`` holds secrets for (never the secrets); None: no such block."""
    try:
        block = cast(Secret, Secret.load(name, _sync=True))  # type: ignore[call-arg]
    except ValueError:
        return None
    value: Any = block.get()
    return [str(key) for key in value] if isinstance(value, dict) else []


def _subscription_problems(doctor: Doctor, subscription: WebhookSubscription) -> list[str]:
    problems = []
    if not subscription.active:
        problems.append(f"is inactive ({subscription.deactivate_reason or 'no reason given'})")
    if EVENT_COMPLETED not in subscription.event_types:
        problems.append(f"does not list {EVENT_COMPLETED} (it lists {', '.join(subscription.event_types) or 'none'})")
    job_id = doctor.facts.job_id
    if job_id is not None and subscription.job_ids and job_id not in subscription.job_ids:
        problems.append(f"leaves out job {job_id} (it covers {', '.join(map(str, subscription.job_ids))})")
    wanted = doctor.options.receiver_url
    if wanted and subscription.client_url.strip() != wanted:
        problems.append(f"points at {subscription.client_url}, not at the receiver {wanted}")
    return problems


def check_webhook_subscription(doctor: Doctor) -> Verdict:
    """The webhook subscription whose secret the block holds (or that points at --receiver-url) is right."""
    block = doctor.options.secret_block or DEFAULT_SECRET_BLOCK
    wanted = doctor.options.receiver_url
    ids = _secret_ids(block)
    if ids is None and not wanted:
        return skip(f"webhooks are not set up (no Secret block {block!r}, no --receiver-url); they are optional.")
    with dbt_cloud_client(doctor) as client:
        subscriptions = client.list_webhook_subscriptions()
    ours = [s for s in subscriptions if s.id in (ids or []) or (wanted and s.client_url.strip() == wanted)]
    if not ours:
        where = f"whose secret block {block!r} holds" if ids is not None else f"pointing at {wanted}"
        return fail(
            f"dbt Cloud has no webhook subscription {where}: webhook waits would wait for their fallback polls.",
            f"create it: {_ensure(doctor, wanted, block)} (it keeps the secret in the block).",
        )
    doctor.facts.receiver_urls = [wanted] if wanted else list(dict.fromkeys(s.client_url for s in ours))
    problems = [f"{s.id} {p}" for s in ours for p in _subscription_problems(doctor, s)]
    if problems:
        return fail(
            "webhook subscription " + "; ".join(problems) + ".",
            f"make it right (it reactivates, updates or recreates it): "
            f"{_ensure(doctor, wanted or ours[0].client_url, block)}, or in dbt Cloud's Account settings > Webhooks.",
        )
    failing = [s for s in ours if s.http_status_code not in (None, "", "0") and not s.http_status_code.startswith("2")]
    if failing:
        return warn(
            "the last delivery of " + ", ".join(f"{s.id} answered {s.http_status_code}" for s in failing) + ".",
            "check the receiver's log (webhook-receiver below): dbt Cloud turns a subscription off after 5 failures.",
        )
    urls = ", ".join(f"{s.id} -> {s.client_url}" for s in ours)
    return ok(f"active, with {EVENT_COMPLETED}: {urls}.")


def _health_url(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}/healthz"


def check_webhook_receiver(doctor: Doctor) -> Verdict:
    """The webhook receiver answers ``GET /healthz`` (at --receiver-url, or where the subscription points)."""
    urls = [doctor.options.receiver_url] if doctor.options.receiver_url else doctor.facts.receiver_urls
    if not urls:
        return skip("no receiver to check: no --receiver-url and no webhook subscription of ours.")
    problems, good = [], []
    for url in urls:
        health = _health_url(url)
        try:
            answer = httpx.get(health, timeout=doctor.options.timeout_seconds)
        except httpx.HTTPError as exc:
            problems.append(f"{health} does not answer ({type(exc).__name__})")
            continue
        if answer.status_code != 200:
            problems.append(f"{health} answered {answer.status_code}: {answer.text[:200]}")
        else:
            good.append(health)
    if problems:
        return fail(
            "the webhook receiver: " + "; ".join(problems) + ".",
            "start it (`python -m dbt_cloud_gate.receiver serve --secret-block BLOCK --host ... --port ...`, behind "
            "your TLS proxy), or point the subscription (or --receiver-url) at where it runs.",
        )
    return ok(f"answers: {', '.join(good)}.")
