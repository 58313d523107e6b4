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

The hub hears of runs as the account's :class:`~dbt_cloud_gate.dbtcloud_api.emulator.state.RunSink` (``track``,
``wake``) and reads the account through the :class:`Account` protocol, so it imports nothing of the state's;
:mod:`.webhook_api` maps the v3 subscription requests onto its ``create``/``update``/``delete``/``send_test``.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import random
import secrets
import string
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

import httpx

from dbt_cloud_gate.dbtcloud_api.emulator import plan
from dbt_cloud_gate.dbtcloud_api.emulator.faults import CountedFault, FaultInjection
from dbt_cloud_gate.dbtcloud_api.emulator.specs import JobSpec, RunRecord, reject_unknown
from dbt_cloud_gate.dbtcloud_api.models import RunStatus
from dbt_cloud_gate.dbtcloud_api.openapi import SpecValidator, load_default_validator
from dbt_cloud_gate.dbtcloud_api.webhooks import (
    EVENT_COMPLETED,
    EVENT_ERRORED,
    EVENT_STARTED,
    delivery_payload,
    encode_body,
    sign,
)

logger = logging.getLogger("dbt_cloud_gate.dbtcloud_api.emulator.webhooks")

WebhookFaultKind = Literal["drop", "delay", "bad_signature", "duplicate"]
_ALNUM = string.ascii_letters + string.digits


class Account(Protocol):
    """What the hub reads of the emulated account (:class:`.state.AccountState` has it): a protocol, so that this
    module needs nothing from the state's."""

    @property
    def account_id(self) -> int:
        """The account's ID."""

    @property
    def jobs(self) -> dict[int, JobSpec]:
        """The account's jobs by ID."""

    @property
    def lock(self) -> threading.RLock:
        """The lock the account's runs change under."""

    @property
    def clock(self) -> Callable[[], float]:
        """The account's clock (epoch seconds)."""


def _epoch_micros(seconds: float) -> str:
    # The v3 API writes created_at, updated_at and dispatched_at as epoch microseconds in a string.
    return str(int(seconds * 1_000_000))


@dataclass
class WebhookFault(CountedFault):
    """A fault on matching deliveries: ``drop`` (never sent), ``delay`` (first attempt ``delay`` seconds late),
    ``bad_signature`` (signed with another key), ``duplicate`` (sent twice, same ``eventId``).

    ``event_type``/``job_id`` narrow what it matches; ``times`` caps how often it fires, ``skip`` lets the first
    matches through, ``probability`` fires it at random (the emulator's seed).
    """

    kind: WebhookFaultKind
    event_type: str | None = None
    delay: float = 0.0

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WebhookFault:
        """From a JSON object; unknown keys and kinds are an error."""
        reject_unknown(cls, data, "webhook fault", show_known=False)
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
    """A delivery waiting in the heap for its due time (ordered by ``due``, then ``seq``)."""

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


# What an attempt copies from its pending delivery: every field the two share (the attempt adds when, and what
# the send found).
_ATTEMPT_FIELDS = tuple(sorted({f.name for f in fields(DeliveryAttempt)} & {f.name for f in fields(_Pending)}))


@dataclass
class _Tracked:
    """A run being watched, and which of its events went out already."""

    run: RunRecord
    started_sent: bool = False
    errored_sent: bool = False


class WebhookHub(FaultInjection[WebhookFault]):
    """Subscriptions and deliveries of one emulated account. Built by the :class:`Emulator`; settings are plain
    attributes (change them before runs start)."""

    def __init__(
        self,
        account: Account,
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
        self.account = account
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
        self.faults = []
        self._tracked: dict[int, _Tracked] = {}
        self._heap: list[_Pending] = []
        self._seq = itertools.count()
        self._rng = random.Random(seed)
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._woken = False
        self._closed = False
        self._thread: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._http: httpx.Client | None = None

    @classmethod
    def for_emulator(cls, account: Account, *, validate: bool) -> WebhookHub:
        """The hub an emulator starts with: v3 requests validated (``validate``) when v2 ones are."""
        return cls(account, validator=load_default_validator("v3") if validate else None)

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

    def track(self, run: RunRecord) -> None:
        """Watch a new run for its transitions (history runs, already over, are not)."""
        if run.status_at(self.account.clock()).is_terminal:
            return
        self._tracked[run.id] = _Tracked(run)

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
        with self.account.lock:
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

    def _publish(self, run: RunRecord, event_type: str, occurred: float, now: float) -> None:
        spec = self.account.jobs[run.job_id]
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
                    account_id=self.account.account_id,
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
                    run_status_message=plan.error_message(run, spec) if status == RunStatus.ERROR else None,
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
        for fault in list(
            self._firing(lambda fault: fault.event_type in (None, event_type) and fault.job_id in (None, job_id))
        ):
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
        """The attempt at ``pending``: the delivery's own fields (IDs, attempt, fault) and what the send found."""
        return DeliveryAttempt(**{name: getattr(pending, name) for name in _ATTEMPT_FIELDS}, at=at, **details)

    # -- sending ----------------------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            now = self.account.clock()
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
                wait = min(candidates) - self.account.clock()
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
        at = self.account.clock()
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
                        "due": self.account.clock() + delay,
                        "attempt": pending.attempt + 1,
                    }
                )
                heapq.heappush(self._heap, retry)
                self._cond.notify_all()

    # -- subscriptions (the v3 API's verbs; :mod:`.webhook_api` maps requests onto them) -----------------

    def list_subscriptions(self) -> list[Subscription]:
        """Every subscription, oldest first."""
        with self._cond:
            return list(self.subscriptions.values())

    def get(self, subscription_id: str) -> Subscription | None:
        """The subscription with this ID, if any."""
        with self._cond:
            return self.subscriptions.get(subscription_id)

    def create(self, settings: dict[str, Any], now: float) -> Subscription:
        """Store a new subscription with a fresh ID and secret (and start sending)."""
        subscription = Subscription(
            id="wsu_" + "".join(secrets.choice(_ALNUM) for _ in range(27)),
            hmac_secret=secrets.token_hex(32),
            account_id=self.account.account_id,
            created=now,
            **settings,
        )
        with self._cond:
            self.subscriptions[subscription.id] = subscription
        self._ensure_started()
        return subscription

    def update(self, subscription: Subscription, settings: dict[str, Any], now: float) -> None:
        """Replace a subscription's settings; turning it on again clears its failures."""
        with self._cond:
            reactivated = settings["active"] and not subscription.active
            for name, value in settings.items():
                setattr(subscription, name, value)
            subscription.updated = now
            if reactivated:
                subscription.consecutive_failures = 0
                subscription.deactivate_reason = None

    def delete(self, subscription_id: str) -> None:
        """Forget a subscription: its pending deliveries are not sent."""
        with self._cond:
            self.subscriptions.pop(subscription_id, None)

    def send_test(self, subscription: Subscription, now: float) -> str:
        """Send dbt Cloud's test delivery: a fixed sample body, whatever the account's runs (one attempt)."""
        payload = delivery_payload(
            EVENT_COMPLETED,
            account_id=self.account.account_id,
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

    def delivery_log(self) -> list[DeliveryAttempt]:
        """A copy of every delivery attempt so far."""
        with self._cond:
            return list(self.deliveries)
