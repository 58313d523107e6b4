"""The dbt Cloud webhook receiver: verify each delivery's HMAC, then turn it into a Prefect event.

``python -m dbt_cloud_gate.receiver serve --host 127.0.0.1 --port 8765`` serves ``POST /dbt-cloud/webhooks``
and ``GET /healthz``. It needs ``PREFECT_API_URL`` (a Prefect server or Cloud: the ephemeral mode cannot take
outside events) and the subscriptions' ``hmac_secret``\\ s, from Prefect ``Secret`` blocks (``--secret-block``,
repeatable) or the environment (``DBT_CLOUD_WEBHOOK_SECRETS``, a JSON object of name to secret, or
``DBT_CLOUD_WEBHOOK_SECRET``). It needs no dbt Cloud API token.

Per delivery: a capped body read (413) within the read deadlines of :mod:`dbt_cloud_gate.receiver_guard`, the
HMAC over the raw bytes, each known secret tried in constant time (401), the body parsed (400), a seen ``eventId``
acknowledged without a second event, then the event written to the receiver's durable outbox
(:mod:`dbt_cloud_gate.outbox`; 503 if it cannot be written, so that dbt Cloud retries). A forwarder in the app's
lifespan posts the outbox's events to ``{PREFECT_API_URL}/events`` and lets each leave only once Prefect has stored
it (:mod:`dbt_cloud_gate.forwarder`). ``GET /metrics`` shows the counts and the outbox in Prometheus' text format.
Only failures are rate limited: each costs a token of its client address's bucket, and an address out of tokens
gets 429 for its failures; a valid delivery costs nothing and is never refused for the company it keeps (behind a
TLS proxy every client has the proxy's address). Logs carry IDs only: never a secret, a signature or the body.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast

from prefect.events import Event
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from dbt_cloud_gate.dbtcloud_api.webhooks import (
    MAX_BODY_BYTES,
    SIGNATURE_HEADER,
    WebhookPayloadError,
    match_secret,
    parse_delivery,
)
from dbt_cloud_gate.events import webhook_event
from dbt_cloud_gate.forwarder import DurableEmitter, Forwarder, Metric, PrefectEventsApi, prometheus_text
from dbt_cloud_gate.outbox import OUTBOX_ENV, Outbox, OutboxError, default_outbox_path
from dbt_cloud_gate.receiver_guard import ConnectionLimits, serve

logger = logging.getLogger("dbt_cloud_gate.receiver")

SECRETS_ENV = "DBT_CLOUD_WEBHOOK_SECRETS"
SECRET_ENV = "DBT_CLOUD_WEBHOOK_SECRET"
DEFAULT_PATH = "/dbt-cloud/webhooks"
# The Secret block holding the subscriptions' hmac secrets (subscription ID to secret) that the
# ensure-dbt-cloud-webhook task writes and the receiver, the stack and the doctor read.
DEFAULT_SECRET_BLOCK = "dbt-cloud-webhook-secrets"
SecretsLoader = Callable[[], Awaitable[dict[str, str]]]


class Emitter(Protocol):
    """Where verified events go. Raises on failure (the delivery is then answered 503 and retried by dbt);
    returns ``False`` when it already had the event (a redelivery), ``True`` or ``None`` otherwise."""

    async def __call__(self, event: Event) -> bool | None: ...


class PrefectEventsEmitter(PrefectEventsApi):
    """Posts each event straight to ``{api_url}/events`` (a JSON list), with a short timeout.

    Not durable: Prefect answers once the event is queued in its memory. The served receiver uses
    :class:`~dbt_cloud_gate.forwarder.DurableEmitter`. ``api_key`` (Prefect Cloud) goes as a bearer token;
    ``auth_string`` (a server's basic auth) as basic auth.
    """

    async def __call__(self, event: Event) -> None:
        await self.post([event.model_dump(mode="json")])


class TokenBuckets:
    """A token bucket per client address: ``rate`` events a second on average, bursts of ``burst`` (the receiver
    counts failed deliveries with it)."""

    def __init__(self, rate: float, burst: float, *, max_clients: int = 10_000) -> None:
        self.rate = rate
        self.burst = burst
        self.max_clients = max_clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, client: str, now: float | None = None) -> float:
        """0 if the request may go on, else the seconds until a token is free."""
        moment = time.monotonic() if now is None else now
        tokens, last = self._buckets.pop(client, (self.burst, moment))
        tokens = min(self.burst, tokens + (moment - last) * self.rate)
        wait = 0.0 if tokens >= 1 else (1 - tokens) / self.rate
        self._buckets[client] = (tokens - 1 if tokens >= 1 else tokens, moment)
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)  # the least recently seen address
        return wait


class SeenEvents:
    """dbt event IDs seen recently (TTL, bounded): a redelivery is acknowledged without a second event."""

    def __init__(self, ttl_seconds: float = 3600.0, max_entries: int = 100_000) -> None:
        self.ttl_seconds = ttl_seconds
        self.max_entries = max_entries
        self._seen: OrderedDict[str, float] = OrderedDict()

    def add(self, event_id: str, now: float | None = None) -> bool:
        """Record ``event_id``; ``False`` if it was already there (and not expired)."""
        moment = time.monotonic() if now is None else now
        while self._seen:
            oldest, expires = next(iter(self._seen.items()))
            if expires > moment and len(self._seen) < self.max_entries:
                break
            del self._seen[oldest]
        if event_id in self._seen:
            return False
        self._seen[event_id] = moment + self.ttl_seconds
        return True

    def discard(self, event_id: str) -> None:
        """Forget ``event_id`` (its event could not be emitted: a retry must go through)."""
        self._seen.pop(event_id, None)


@dataclass
class ReceiverConfig:
    """How the receiver behaves. ``secrets`` maps a name to a subscription's ``hmac_secret``; a name that is an
    account ID (``"123"`` or ``"account:123"``) or a subscription ID (``wsu_...``) also binds the secret to it."""

    secrets: dict[str, str] = field(default_factory=dict)
    path: str = DEFAULT_PATH
    max_body_bytes: int = MAX_BODY_BYTES
    # Failed deliveries (401, 400, 413) a client address may send: this many a second, bursts of ``burst``; past
    # them its failures get 429. Valid deliveries are never counted.
    rate_per_second: float = 5.0
    burst: float = 50.0
    dedupe_ttl_seconds: float = 3600.0
    # Reloads the secrets (e.g. from Secret blocks) when a signature matches none, at most this often.
    reload_secrets: SecretsLoader | None = None
    reload_min_seconds: float = 30.0


def _binding_problem(name: str, account_id: int, webhook_id: str | None) -> str | None:
    """Why a secret named ``name`` may not vouch for this delivery, or ``None``."""
    account = name.removeprefix("account:")
    if account.isdigit() and int(account) != account_id:
        return f"the secret of account {account} signed a delivery for account {account_id}"
    if name.startswith("wsu_") and webhook_id is not None and webhook_id != name:
        return "the secret of another subscription signed this delivery"
    return None


class _Receiver:
    def __init__(self, config: ReceiverConfig, emit: Emitter) -> None:
        self.config = config
        self.emit = emit
        self.failures = TokenBuckets(config.rate_per_second, config.burst)
        self.seen = SeenEvents(config.dedupe_ttl_seconds)
        self._last_reload = time.monotonic()
        self._reload_lock = asyncio.Lock()
        self.counts: dict[str, int] = {}

    def _count(self, outcome: str) -> None:
        self.counts[outcome] = self.counts.get(outcome, 0) + 1

    def _answer(self, status: int, outcome: str, detail: str, **extra: Any) -> JSONResponse:
        self._count(outcome)
        return JSONResponse({"status": outcome, "detail": detail, **extra}, status_code=status)

    def _refuse(self, client: str, status: int, outcome: str, detail: str) -> JSONResponse:
        """A failed delivery: it costs ``client`` a token; with none left, 429 (and no log line)."""
        wait = self.failures.take(client)
        if wait > 0:
            self._count("rate_limited")
            return JSONResponse(
                {"status": "rate_limited", "detail": "Too many failed deliveries from this address."},
                status_code=429,
                headers={"Retry-After": str(max(1, round(wait)))},
            )
        logger.info("refused a delivery from %s: %s", client, outcome)
        return self._answer(status, outcome, detail)

    async def _read_capped(self, request: Request) -> bytes | None:
        """The body, or ``None`` once it passes the cap (the rest is not read)."""
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.config.max_body_bytes):
            return None
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.config.max_body_bytes:
                return None
            chunks.append(chunk)
        return b"".join(chunks)

    async def _match(self, body: bytes, signature: str | None) -> str | None:
        name = match_secret(body, signature, self.config.secrets)
        loader = self.config.reload_secrets
        if name is not None or loader is None or not signature:
            return name
        async with self._reload_lock:
            if time.monotonic() - self._last_reload < self.config.reload_min_seconds:
                return None
            self._last_reload = time.monotonic()
            try:
                self.config.secrets = await loader()
            except Exception as exc:  # a failed reload keeps the secrets there were
                logger.warning("reloading the webhook secrets failed: %s", type(exc).__name__)
                return None
        return match_secret(body, signature, self.config.secrets)

    async def deliver(self, request: Request) -> Response:
        # Nothing is charged before the signature is checked: a flood of unsigned requests (from the proxy's
        # address, as dbt Cloud's deliveries are) must not use up anything a valid delivery needs.
        client = request.client.host if request.client else "unknown"
        try:
            body = await self._read_capped(request)
        except ClientDisconnect:  # gone (or closed by a read deadline): nobody to answer
            self._count("disconnected")
            return Response(status_code=400)
        if body is None:
            return self._refuse(client, 413, "too_large", f"The body is over {self.config.max_body_bytes} bytes.")
        name = await self._match(body, request.headers.get(SIGNATURE_HEADER))
        if name is None:
            return self._refuse(client, 401, "unauthorized", "Missing or wrong signature.")
        try:
            delivery = parse_delivery(body)
        except WebhookPayloadError as exc:
            return self._refuse(client, 400, "bad_request", str(exc))
        problem = _binding_problem(name, delivery.account_id, delivery.webhook_id)
        if problem is not None:
            logger.warning("refused event %s: %s", delivery.event_id, problem)
            return self._refuse(client, 401, "unauthorized", "The signature's secret does not belong to this sender.")
        ids = f"event {delivery.event_id} ({delivery.event_type}) of run {delivery.run_id}, job {delivery.job_id}"
        if delivery.kind is None:
            logger.info("ignored %s: not an event type this receiver knows", ids)
            return self._answer(200, "ignored", "Unknown event type.")
        if not self.seen.add(delivery.event_id):
            logger.info("duplicate %s: acknowledged, no second event", ids)
            return self._answer(200, "duplicate", "Already received.")
        try:
            taken = await self.emit(webhook_event(delivery))
        except Exception as exc:
            self.seen.discard(delivery.event_id)
            logger.warning("could not take %s (%s); answered 503", ids, type(exc).__name__)
            return self._answer(503, "unavailable", "The event could not be stored; retry later.")
        if taken is False:  # the outbox had it (a redelivery after a restart): acknowledged, no second event
            logger.info("duplicate %s: already taken, no second event", ids)
            return self._answer(200, "duplicate", "Already received.")
        logger.info("accepted %s, account %s", ids, delivery.account_id)
        return self._answer(200, "accepted", "Event emitted.")

    async def health(self, request: Request) -> Response:
        report: dict[str, Any] = {"status": "ok", "secrets": len(self.config.secrets), "counts": dict(self.counts)}
        if isinstance(self.emit, DurableEmitter):
            try:
                report["outbox"] = await self.emit.health()
            except Exception as exc:  # a broken outbox: deliveries get 503 too
                report.update(status="outbox_unavailable", detail=type(exc).__name__)
                return JSONResponse(report, status_code=503)
        return JSONResponse(report)

    async def metrics(self, request: Request) -> Response:
        outcomes = [({"outcome": outcome}, float(count)) for outcome, count in sorted(self.counts.items())]
        metrics: list[Metric] = [
            ("dbt_cloud_gate_receiver_deliveries_total", "Deliveries by outcome.", "counter", outcomes)
        ]
        if isinstance(self.emit, DurableEmitter):
            metrics += await self.emit.metrics()
        return PlainTextResponse(prometheus_text(metrics), media_type="text/plain; version=0.0.4")


def create_app(config: ReceiverConfig, emit: Emitter) -> Starlette:
    """The receiver as an ASGI app: ``POST config.path`` takes deliveries, ``GET /healthz`` answers health,
    ``GET /metrics`` the same in Prometheus' format. A :class:`DurableEmitter` forwards in the app's lifespan."""
    if not config.secrets and config.reload_secrets is None:
        raise ValueError("The webhook receiver has no secret: every delivery would be refused.")
    receiver = _Receiver(config, emit)
    app = Starlette(
        routes=[
            Route(config.path, receiver.deliver, methods=["POST"]),
            Route("/healthz", receiver.health, methods=["GET"]),
            Route("/metrics", receiver.metrics, methods=["GET"]),
        ],
        lifespan=emit.lifespan if isinstance(emit, DurableEmitter) else None,
    )
    app.state.receiver = receiver
    return app


# -- secrets -------------------------------------------------------------------------------------------------


def _secret_entries(name: str, value: Any) -> dict[str, str]:
    """A Secret block's value: one secret (named by the block) or an object of name to secret."""
    if isinstance(value, str) and value.strip():
        return {name: value.strip()}
    if isinstance(value, Mapping) and value and all(isinstance(v, str) and v.strip() for v in value.values()):
        return {str(key): str(secret).strip() for key, secret in value.items()}
    raise ValueError(f"Secret block {name!r} holds neither a secret string nor an object of name to secret.")


def secrets_from_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """``DBT_CLOUD_WEBHOOK_SECRETS`` (JSON object of name to secret) and ``DBT_CLOUD_WEBHOOK_SECRET`` (one)."""
    env = os.environ if environ is None else environ
    found: dict[str, str] = {}
    many = env.get(SECRETS_ENV)
    if many:
        try:
            parsed = json.loads(many)
        except ValueError:
            raise ValueError(f"{SECRETS_ENV} is not a JSON object of name to secret.") from None
        found.update(_secret_entries(SECRETS_ENV, parsed))
    one = env.get(SECRET_ENV)
    if one and one.strip():
        found[SECRET_ENV] = one.strip()
    return found


async def secrets_from_blocks(names: list[str]) -> dict[str, str]:
    """The secrets held by saved Prefect ``Secret`` blocks."""
    from prefect.blocks.system import Secret

    found: dict[str, str] = {}
    for name in names:
        block = cast(Secret, await Secret.aload(name))
        found.update(_secret_entries(name, block.get()))
    return found


# -- command line --------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m dbt_cloud_gate.receiver", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve the receiver until Ctrl-C")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; TLS is a proxy's job)")
    serve.add_argument("--port", type=int, default=8765)
    serve.add_argument("--path", default=DEFAULT_PATH, help=f"the deliveries' path (default {DEFAULT_PATH})")
    serve.add_argument(
        "--secret-block", action="append", default=[], help="a Prefect Secret block with hmac secrets; repeatable"
    )
    serve.add_argument("--max-body-bytes", type=int, default=MAX_BODY_BYTES)
    failures, limits = ReceiverConfig(), ConnectionLimits()  # the defaults, each written once
    numbers: list[tuple[str, type, float, str]] = [
        ("--rate", float, failures.rate_per_second, "failed deliveries a second per client address"),
        ("--burst", float, failures.burst, "failed deliveries a client address may send at once"),
        ("--header-timeout", float, limits.header_timeout_seconds, "seconds for a request's headers"),
        ("--body-timeout", float, limits.body_timeout_seconds, "seconds for a body, after its headers"),
        ("--max-connections", int, limits.max_connections, "open connections before the longest-waiting one closes"),
    ]
    for flag, kind, default, text in numbers:
        serve.add_argument(flag, type=kind, default=default, help=f"{text} (%(default)s)")
    serve.add_argument(
        "--outbox",
        type=Path,
        default=None,
        help=f"the durable outbox (a SQLite file; default ${OUTBOX_ENV}, else "
        "$XDG_STATE_HOME/dbt-cloud-gate/receiver-outbox.sqlite3, ~/.local/state when unset)",
    )
    serve.add_argument("--log-level", default="info")
    return parser


def main(argv: list[str] | None = None) -> int:
    """``serve``: the receiver on ``--host``/``--port`` until interrupted."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    try:
        limits = ConnectionLimits(
            header_timeout_seconds=args.header_timeout,
            body_timeout_seconds=args.body_timeout,
            max_connections=args.max_connections,
        )
    except ValueError as exc:
        print(f"bad connection limits: {exc}", file=sys.stderr)
        return 2
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    if not settings.api.url:
        print(
            "PREFECT_API_URL is not set: the receiver needs a Prefect server (prefect server start) or Prefect "
            "Cloud to send events to; an ephemeral server cannot take events from another process.",
            file=sys.stderr,
        )
        return 2
    try:
        secrets = secrets_from_env()
        if args.secret_block:
            secrets.update(asyncio.run(secrets_from_blocks(args.secret_block)))
    except (ValueError, OSError) as exc:
        print(f"cannot read the webhook secrets: {exc}", file=sys.stderr)
        return 2
    if not secrets:
        print(f"no webhook secret: pass --secret-block NAME or set {SECRETS_ENV} / {SECRET_ENV}", file=sys.stderr)
        return 2

    async def reload() -> dict[str, str]:
        fresh = secrets_from_env()
        fresh.update(await secrets_from_blocks(args.secret_block))
        return fresh

    try:
        outbox = Outbox(args.outbox or default_outbox_path()).open()
    except OutboxError as exc:
        print(f"cannot open the outbox: {exc}", file=sys.stderr)
        return 2
    key = settings.api.key.get_secret_value() if settings.api.key else None
    auth = settings.api.auth_string.get_secret_value() if settings.api.auth_string else None
    api = PrefectEventsApi(str(settings.api.url), api_key=key, auth_string=auth)
    emitter = DurableEmitter(outbox, Forwarder(outbox, api))
    config = ReceiverConfig(
        secrets=secrets,
        path=args.path,
        max_body_bytes=args.max_body_bytes,
        rate_per_second=args.rate,
        burst=args.burst,
        reload_secrets=reload if args.secret_block else None,
    )
    print(
        f"dbt Cloud webhook receiver on http://{args.host}:{args.port}{args.path} ({len(secrets)} secret(s)), "
        f"outbox {outbox.path}"
    )
    serve(create_app(config, emitter), host=args.host, port=args.port, limits=limits, log_level=args.log_level)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
