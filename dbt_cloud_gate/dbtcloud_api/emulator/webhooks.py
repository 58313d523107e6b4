"""The emulator's dbt Cloud webhooks: v3 subscriptions, and signed deliveries sent the way dbt Cloud sends them.

* ``job.run.started`` when a run starts; ``job.run.errored`` at once when it fails; ``job.run.completed`` after
  its artifacts are in (``completed_delay_seconds`` after the end, for a success or a failure); nothing for a
  cancelled run.
* Each delivery: a POST of the JSON body with ``Authorization`` = hex HMAC-SHA256 of the body keyed by the
  subscription's ``hmac_secret``; a 2xx within ``timeout_seconds`` (10) is a success; anything else is retried up
  to ``max_retries`` (5) times after ``retry_delays``; ``deactivate_after`` (5) consecutive failed attempts
  deactivate the subscription (``active`` false, ``deactivate_reason`` set) until a PUT turns it on again.
* Order and uniqueness are not guaranteed (several sender threads; retries); :class:`WebhookFault` adds drops,
  delays, bad signatures and duplicates on purpose.

A background scheduler thread (started with the first subscription) finds due events and retries; a small thread
pool sends them. Every send has a finite timeout, and :meth:`WebhookHub.close` stops both.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import random
import re
import secrets
import string
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

import httpx

from dbt_cloud_gate.dbtcloud_api.emulator.faults import fires, spent
from dbt_cloud_gate.dbtcloud_api.models import RunStatus
from dbt_cloud_gate.dbtcloud_api.openapi import SpecValidator, load_default_validator
from dbt_cloud_gate.dbtcloud_api.webhooks import (
    EVENT_COMPLETED,
    EVENT_ERRORED,
    EVENT_STARTED,
    EVENT_TYPES,
    delivery_payload,
    encode_body,
    sign,
)

if TYPE_CHECKING:
    from dbt_cloud_gate.dbtcloud_api.emulator.state import Emulator, _Run

logger = logging.getLogger("dbt_cloud_gate.dbtcloud_api.emulator.webhooks")

WebhookFaultKind = Literal["drop", "delay", "bad_signature", "duplicate"]
# What one API call answers: status code, the envelope's data, and its extra (or None).
V3Answer = tuple[int, Any, dict[str, Any] | None]

_ALNUM = string.ascii_letters + string.digits
_SUBSCRIPTION_PATH = re.compile(r"webhooks/subscription/([^/]+)(/test)?")


def _epoch_micros(seconds: float) -> str:
    # The v3 API writes created_at, updated_at and dispatched_at as epoch microseconds in a string.
    return str(int(seconds * 1_000_000))


@dataclass
class WebhookFault:
    """A fault on matching deliveries: ``drop`` (never sent), ``delay`` (first attempt ``delay`` seconds late),
    ``bad_signature`` (signed with another key), ``duplicate`` (sent twice, same ``eventId``).

    ``event_type``/``job_id`` narrow what it matches; ``times`` caps how often it fires, ``skip`` lets the first
    matches through, ``probability`` fires it at random (the emulator's seed).
    """

    kind: WebhookFaultKind
    event_type: str | None = None
    job_id: int | None = None
    times: int | None = None
    probability: float = 1.0
    delay: float = 0.0
    skip: int = 0
    hits: int = 0
    skipped: int = 0

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WebhookFault:
        """From a JSON object; unknown keys and kinds are an error."""
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown webhook fault setting(s) {sorted(unknown)}")
        fault = cls(**data)
        if fault.kind not in ("drop", "delay", "bad_signature", "duplicate"):
            raise ValueError(f"unknown webhook fault kind {fault.kind!r}")
        return fault


@dataclass
class DeliveryAttempt:
    """One POST (or a drop) of one event to one subscription, as recorded for tests and benchmarks."""

    event_id: str
    event_type: str
    subscription_id: str
    run_id: int
    job_id: int
    attempt: int
    occurred: float  # when the run's transition happened (emulator clock)
    at: float  # when the attempt was sent
    status: int | None = None
    error: str | None = None
    fault: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """Whether the receiver answered 2xx."""
        return self.status is not None and 200 <= self.status < 300


@dataclass
class Subscription:
    """A webhook subscription as the emulator stores it (``hmac_secret`` is shown once, at creation)."""

    id: str
    name: str
    client_url: str
    event_types: list[str]
    job_ids: list[int]
    active: bool
    hmac_secret: str
    account_id: int
    created: float
    description: str = ""
    updated: float = 0.0
    http_status_code: str = "0"
    dispatched_at: str | None = None
    deactivate_reason: str | None = None
    consecutive_failures: int = 0

    def wants(self, event_type: str, job_id: int) -> bool:
        """Whether this subscription takes ``event_type`` for ``job_id`` (no job IDs: every job)."""
        return self.active and event_type in self.event_types and (not self.job_ids or job_id in self.job_ids)

    def to_json(self, *, with_secret: bool = False) -> dict[str, Any]:
        """The API's view: job IDs as strings (as dbt Cloud answers, though its spec says integers)."""
        data: dict[str, Any] = {
            "id": self.id,
            "account_id": self.account_id,
            "name": self.name,
            "description": self.description,
            "client_url": self.client_url,
            "event_types": list(self.event_types),
            "job_ids": [str(job) for job in self.job_ids],
            "active": self.active,
            "http_status_code": self.http_status_code,
            "dispatched_at": self.dispatched_at,
            "deactivate_reason": self.deactivate_reason,
            "created_at": _epoch_micros(self.created),
            "updated_at": _epoch_micros(self.updated or self.created),
        }
        if with_secret:
            data["hmac_secret"] = self.hmac_secret
        return data


@dataclass(order=True)
class _Pending:
    due: float
    seq: int
    subscription_id: str = field(compare=False)
    body: bytes = field(compare=False)
    event_id: str = field(compare=False)
    event_type: str = field(compare=False)
    run_id: int = field(compare=False)
    job_id: int = field(compare=False)
    occurred: float = field(compare=False)
    attempt: int = field(compare=False, default=1)
    bad_signature: bool = field(compare=False, default=False)
    fault: str | None = field(compare=False, default=None)
    retries: bool = field(compare=False, default=True)


@dataclass
class _Tracked:
    run: _Run
    started_sent: bool = False
    errored_sent: bool = False


class WebhookHub:
    """Subscriptions and deliveries of one emulated account. Built by the :class:`Emulator`; settings are plain
    attributes (change them before runs start)."""

    def __init__(
        self,
        emulator: Emulator,
        *,
        timeout_seconds: float = 10.0,
        max_retries: int = 5,
        retry_delays: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0, 16.0),
        deactivate_after: int = 5,
        completed_delay_seconds: float = 0.25,
        webhook_id_key: Literal["webhookId", "webhooksID"] = "webhookId",
        sender_threads: int = 8,
        validator: SpecValidator | None = None,
        seed: int = 0,
    ) -> None:
        self.emulator = emulator
        self.timeout_seconds = timeout_seconds
        self.max_retries = max_retries
        self.retry_delays = tuple(retry_delays)
        self.deactivate_after = deactivate_after
        self.completed_delay_seconds = completed_delay_seconds
        self.webhook_id_key: Literal["webhookId", "webhooksID"] = webhook_id_key
        self.sender_threads = sender_threads
        # The v3 spec is loaded when the emulator validates v2 requests: every request is then checked.
        self.validator = validator
        self.subscriptions: dict[str, Subscription] = {}
        self.deliveries: list[DeliveryAttempt] = []
        self.faults: list[WebhookFault] = []
        self._tracked: dict[int, _Tracked] = {}
        self._heap: list[_Pending] = []
        self._seq = itertools.count()
        self._rng = random.Random(seed)
        self._cond = threading.Condition()
        self._woken = False
        self._closed = False
        self._thread: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._http: httpx.Client | None = None

    @classmethod
    def for_emulator(cls, emulator: Emulator) -> WebhookHub:
        """The hub an emulator starts with: v3 requests validated when v2 ones are."""
        validator = load_default_validator("v3") if emulator.validator is not None else None
        return cls(emulator, validator=validator)

    # -- life cycle -------------------------------------------------------------------------------------

    def _ensure_started(self) -> None:
        with self._cond:
            if self._thread is not None or self._closed:
                return
            self._http = httpx.Client(
                timeout=httpx.Timeout(self.timeout_seconds),
                follow_redirects=False,
                limits=httpx.Limits(max_connections=self.sender_threads),
            )
            self._pool = ThreadPoolExecutor(self.sender_threads, thread_name_prefix="dbt-cloud-emulator-webhook")
            self._thread = threading.Thread(target=self._loop, name="dbt-cloud-emulator-webhooks", daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Stop sending: the scheduler ends, in-flight sends finish within their timeout."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=self.timeout_seconds + 5)
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        if self._http is not None:
            self._http.close()

    def wake(self) -> None:
        """A run was created or re-planned: look again now (called with the emulator's lock held)."""
        with self._cond:
            self._woken = True
            self._cond.notify_all()

    def track(self, run: _Run) -> None:
        """Watch a new run for its transitions (history runs, already over, are not)."""
        if run.status_at(self.emulator.clock()).is_terminal:
            return
        self._tracked[run.id] = _Tracked(run)

    # -- faults -----------------------------------------------------------------------------------------

    def add_fault(self, fault: WebhookFault) -> WebhookFault:
        """Inject ``fault`` into matching deliveries from now on."""
        with self._cond:
            self.faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        """Remove every webhook fault."""
        with self._cond:
            self.faults.clear()

    def _faults_for(self, event_type: str, job_id: int) -> list[WebhookFault]:
        fired = []
        for fault in self.faults:
            if spent(fault) or fault.event_type not in (None, event_type) or fault.job_id not in (None, job_id):
                continue
            if fires(fault, self._rng):
                fired.append(fault)
        return fired

    # -- events -----------------------------------------------------------------------------------------

    def _due_events(self, tracked: _Tracked, now: float) -> tuple[list[tuple[str, float]], float | None, bool]:
        """Events due for one run at ``now``, when its next one falls due, and whether it is done."""
        run = tracked.run
        cancelled = run.cancelled_at
        events: list[tuple[str, float]] = []
        if not tracked.started_sent and (cancelled is None or cancelled > run.started):
            if now < run.started:
                return events, run.started, False
            events.append((EVENT_STARTED, run.started))
            tracked.started_sent = True
        if cancelled is not None and cancelled <= now:
            return events, None, True  # dbt Cloud sends nothing for a cancellation
        if run.outcome == "cancelled" and now >= run.finished:
            return events, None, True
        completed_at = run.finished + self.completed_delay_seconds
        if run.outcome == "error" and now >= run.finished and not tracked.errored_sent:
            events.append((EVENT_ERRORED, run.finished))  # at once, before the artifacts
            tracked.errored_sent = True
        if now >= completed_at and run.outcome in ("success", "error"):
            events.append((EVENT_COMPLETED, run.finished))
            return events, None, True
        return events, (run.finished if now < run.finished else completed_at), False

    def _scan(self, now: float) -> float | None:
        """Turn due run transitions into deliveries; the next time something falls due."""
        next_due: float | None = None
        with self.emulator._lock:
            for run_id in list(self._tracked):
                tracked = self._tracked[run_id]
                events, due, done = self._due_events(tracked, now)
                for event_type, occurred in events:
                    self._publish(tracked.run, event_type, occurred, now)
                if done:
                    del self._tracked[run_id]
                elif due is not None:
                    next_due = due if next_due is None else min(next_due, due)
        return next_due

    def _publish(self, run: _Run, event_type: str, occurred: float, now: float) -> None:
        spec = self.emulator.jobs[run.job_id]
        status = {
            EVENT_STARTED: RunStatus.RUNNING,
            EVENT_ERRORED: RunStatus.ERROR,
            EVENT_COMPLETED: RunStatus.ERROR if run.outcome == "error" else RunStatus.SUCCESS,
        }[event_type]
        with self._cond:
            subscriptions = [s for s in self.subscriptions.values() if s.wants(event_type, run.job_id)]
            for subscription in subscriptions:
                if subscription.created > occurred:
                    continue  # the run changed before this subscription existed
                payload = delivery_payload(
                    event_type,
                    account_id=self.emulator.account_id,
                    run_id=run.id,
                    job_id=run.job_id,
                    run_status_code=int(status),
                    environment_id=spec.environment_id,
                    project_id=spec.project_id,
                    occurred=datetime.fromtimestamp(now, tz=UTC),
                    webhook_id=subscription.id,
                    webhook_id_key=self.webhook_id_key,
                    webhook_name=subscription.name,
                    job_name=spec.name,
                    run_reason=run.cause,
                    run_status_message=f"Database Error in model {spec.failing_model or spec.models[-1]}"
                    if status == RunStatus.ERROR
                    else None,
                    started_at=datetime.fromtimestamp(run.started, tz=UTC),
                    ended_at=None if event_type == EVENT_STARTED else datetime.fromtimestamp(run.finished, tz=UTC),
                )
                self._enqueue(subscription, payload, event_type, run.id, run.job_id, occurred, now)

    def _enqueue(
        self,
        subscription: Subscription,
        payload: dict[str, Any],
        event_type: str,
        run_id: int,
        job_id: int,
        occurred: float,
        now: float,
        *,
        retries: bool = True,
    ) -> str:
        pending = _Pending(
            due=now,
            seq=next(self._seq),
            subscription_id=subscription.id,
            body=encode_body(payload),
            event_id=str(payload["eventId"]),
            event_type=event_type,
            run_id=run_id,
            job_id=job_id,
            occurred=occurred,
            retries=retries,
        )
        copies = [pending]
        for fault in self._faults_for(event_type, job_id):
            pending.fault = fault.kind
            if fault.kind == "drop":
                self.deliveries.append(self._record(pending, now, error="dropped by an injected fault"))
                return pending.event_id
            if fault.kind == "delay":
                pending.due += fault.delay
            elif fault.kind == "bad_signature":
                pending.bad_signature = True
            elif fault.kind == "duplicate":
                twin = _Pending(**{**asdict(pending), "seq": next(self._seq), "due": pending.due + fault.delay})
                copies.append(twin)
        for item in copies:
            heapq.heappush(self._heap, item)
        self._cond.notify_all()
        return pending.event_id

    def _record(self, pending: _Pending, at: float, **details: Any) -> DeliveryAttempt:
        return DeliveryAttempt(
            event_id=pending.event_id,
            event_type=pending.event_type,
            subscription_id=pending.subscription_id,
            run_id=pending.run_id,
            job_id=pending.job_id,
            attempt=pending.attempt,
            occurred=pending.occurred,
            at=at,
            fault=pending.fault,
            **details,
        )

    # -- sending ----------------------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            now = self.emulator.clock()
            next_due = self._scan(now)
            with self._cond:
                if self._closed:
                    return
                while self._heap and self._heap[0].due <= now:
                    pending = heapq.heappop(self._heap)
                    assert self._pool is not None
                    self._pool.submit(self._attempt, pending)
                candidates = [now + 1.0] + ([next_due] if next_due is not None else [])
                if self._heap:
                    candidates.append(self._heap[0].due)
                wait = min(candidates) - self.emulator.clock()
                if wait > 0 and not self._woken:
                    self._cond.wait(wait)
                self._woken = False

    def _attempt(self, pending: _Pending) -> None:
        with self._cond:
            subscription = self.subscriptions.get(pending.subscription_id)
            if subscription is None or not subscription.active or self._closed:
                return  # deleted or deactivated meanwhile: dbt Cloud stops sending
            secret = subscription.hmac_secret
            url = subscription.client_url
        key = "not-the-" + secret if pending.bad_signature else secret
        headers = {
            "Authorization": sign(pending.body, key),
            "Content-Type": "application/json",
            "User-Agent": "dbt-cloud-emulator-webhooks",
        }
        started = time.monotonic()
        at = self.emulator.clock()
        status: int | None = None
        error: str | None = None
        assert self._http is not None
        try:
            response = self._http.post(url, content=pending.body, headers=headers, timeout=self.timeout_seconds)
            status = response.status_code
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"[:300]
        record = self._record(pending, at, status=status, error=error, seconds=time.monotonic() - started)
        with self._cond:
            self.deliveries.append(record)
            subscription = self.subscriptions.get(pending.subscription_id)
            if subscription is None:
                return
            subscription.http_status_code = str(status or 0)
            subscription.dispatched_at = _epoch_micros(at)
            if record.ok:
                subscription.consecutive_failures = 0
                return
            subscription.consecutive_failures += 1
            if subscription.consecutive_failures >= self.deactivate_after:
                subscription.active = False
                subscription.deactivate_reason = (
                    f"Deactivated after {subscription.consecutive_failures} consecutive failed deliveries."
                )
                logger.info("webhook subscription %s deactivated", subscription.id)
                return
            if pending.retries and pending.attempt <= self.max_retries:
                delays = self.retry_delays or (1.0,)
                delay = delays[min(pending.attempt - 1, len(delays) - 1)]
                retry = _Pending(
                    **{
                        **asdict(pending),
                        "seq": next(self._seq),
                        "due": self.emulator.clock() + delay,
                        "attempt": pending.attempt + 1,
                    }
                )
                heapq.heappush(self._heap, retry)
                self._cond.notify_all()

    # -- the v3 API -------------------------------------------------------------------------------------

    def handle(self, method: str, rest: str, query: dict[str, list[str]], body: Any, now: float) -> V3Answer:
        """Answer one ``/api/v3/accounts/{id}/<rest>`` request (already authenticated and validated)."""
        if rest == "webhooks/subscriptions":
            if method == "GET":
                return self._list(query)
            if method == "POST":
                return self._create(body, now)
            return 405, None, None
        found = _SUBSCRIPTION_PATH.fullmatch(rest)
        if found is None:
            return 404, None, None
        with self._cond:
            subscription = self.subscriptions.get(found.group(1))
        if subscription is None:
            return 404, None, None
        if found.group(2):
            return (200, {"event_id": self._test(subscription, now)}, None) if method == "GET" else (405, None, None)
        if method == "GET":
            return 200, subscription.to_json(), None
        if method == "PUT":
            return self._update(subscription, body, now)
        if method == "DELETE":
            with self._cond:
                self.subscriptions.pop(subscription.id, None)
            return 200, {"id": subscription.id}, None
        return 405, None, None

    def _list(self, query: dict[str, list[str]]) -> V3Answer:
        try:
            limit = int((query.get("limit") or ["100"])[-1])
            offset = int((query.get("offset") or ["0"])[-1])
        except ValueError:
            return 400, {"limit": ["A valid integer is required."]}, None
        with self._cond:
            everything = list(self.subscriptions.values())
        page = everything[offset : offset + limit]
        extra = {
            "filters": {"limit": limit, "offset": offset},
            "pagination": {"count": len(page), "total_count": len(everything)},
        }
        return 200, [s.to_json() for s in page], extra

    @staticmethod
    def _checked_body(body: Any) -> tuple[dict[str, Any] | None, dict[str, list[str]]]:
        """The body's subscription settings, or the field errors dbt Cloud would answer with."""
        if not isinstance(body, dict):
            return None, {"__all__": ["A JSON object is required."]}
        errors: dict[str, list[str]] = {}
        event_types = body.get("event_types")
        if not isinstance(event_types, list) or not event_types:
            errors["event_types"] = ["This list may not be empty."]
        elif any(kind not in EVENT_TYPES for kind in event_types):
            errors["event_types"] = [f"Event types must be among {list(EVENT_TYPES)}."]
        url = body.get("client_url")
        if not isinstance(url, str) or not re.match(r"^https?://[^\s/]+", url):
            errors["client_url"] = ["Enter a valid URL."]
        if not str(body.get("name") or "").strip():
            errors["name"] = ["This field may not be blank."]
        job_ids = body.get("job_ids") or []
        if not isinstance(job_ids, list) or any(isinstance(j, bool) or not isinstance(j, int) for j in job_ids):
            errors["job_ids"] = ["A list of integers is required."]
        if errors:
            return None, errors
        return {
            "name": str(body["name"]).strip(),
            "description": str(body.get("description") or ""),
            "client_url": url,
            "event_types": list(event_types or []),
            "job_ids": [int(j) for j in job_ids],
            "active": bool(body.get("active", True)),
        }, {}

    def _create(self, body: Any, now: float) -> V3Answer:
        settings, errors = self._checked_body(body)
        if settings is None:
            return 400, errors, None
        subscription = Subscription(
            id="wsu_" + "".join(secrets.choice(_ALNUM) for _ in range(27)),
            hmac_secret=secrets.token_hex(32),
            account_id=self.emulator.account_id,
            created=now,
            **settings,
        )
        with self._cond:
            self.subscriptions[subscription.id] = subscription
        self._ensure_started()
        return 201, subscription.to_json(with_secret=True), None

    def _update(self, subscription: Subscription, body: Any, now: float) -> V3Answer:
        settings, errors = self._checked_body(body)
        if settings is None:
            return 400, errors, None
        with self._cond:
            reactivated = settings["active"] and not subscription.active
            for name, value in settings.items():
                setattr(subscription, name, value)
            subscription.updated = now
            if reactivated:
                subscription.consecutive_failures = 0
                subscription.deactivate_reason = None
        return 200, subscription.to_json(), None

    def _test(self, subscription: Subscription, now: float) -> str:
        """Send dbt Cloud's test delivery: a fixed sample body, whatever the account's runs (one attempt)."""
        payload = delivery_payload(
            EVENT_COMPLETED,
            account_id=self.emulator.account_id,
            run_id=12345,
            job_id=123,
            run_status_code=int(RunStatus.SUCCESS),
            environment_id=1234,
            project_id=167194,
            webhook_id=subscription.id,
            webhook_id_key=self.webhook_id_key,
            webhook_name=subscription.name,
            job_name="Daily Job (dbt build)",
            run_reason="Kicked off from the UI by test@test.com",
            started_at=datetime.fromtimestamp(now - 85, tz=UTC),
            ended_at=datetime.fromtimestamp(now, tz=UTC),
        )
        with self._cond:
            event_id = self._enqueue(subscription, payload, EVENT_COMPLETED, 12345, 123, now, now, retries=False)
        self._ensure_started()
        return event_id

    # -- admin (for processes that cannot hold the emulator object) ---------------------------------------

    def admin(self, method: str, rest: str, body: Any) -> tuple[int, Any]:
        """``/_emulator/webhooks/<rest>``: ``deliveries`` (GET), ``faults`` (POST one, DELETE all),
        ``settings`` (POST timeout_seconds, max_retries, retry_delays, deactivate_after...)."""
        if method == "GET" and rest == "deliveries":
            with self._cond:
                return 200, [asdict(d) for d in self.deliveries]
        if rest == "faults" and method == "POST":
            try:
                return 200, asdict(self.add_fault(WebhookFault.from_dict(body or {})))
            except (TypeError, ValueError) as exc:
                return 400, str(exc)
        if rest == "faults" and method == "DELETE":
            self.clear_faults()
            return 200, []
        if rest == "settings" and method == "POST":
            allowed = {
                "timeout_seconds",
                "max_retries",
                "retry_delays",
                "deactivate_after",
                "completed_delay_seconds",
                "webhook_id_key",
            }
            unknown = set(body or {}) - allowed
            if unknown or not isinstance(body, dict):
                return 400, f"unknown webhook setting(s) {sorted(unknown)}; known: {sorted(allowed)}"
            for name, value in body.items():
                setattr(self, name, tuple(value) if name == "retry_delays" else value)
            return 200, {name: getattr(self, name) for name in sorted(allowed)}
        return 404, "Unknown emulator webhook admin endpoint."
