"""Moves the outbox's events into Prefect, and lets one leave the outbox only once Prefect has stored it.

Why a read-back: Prefect's ``POST /events`` answers 204 once the events are queued in the server's memory
(``prefect/server/api/events.py``: ``create_events`` -> ``messaging.publish``); its event persister writes them to
the database in batches, every ``PREFECT_SERVER_SERVICES_EVENT_PERSISTER_FLUSH_INTERVAL`` (5 s) or 20 events
(``prefect/server/events/services/event_persister.py``), and drops a batch after 5 failed writes. A server killed
in between has lost them. Only ``POST /events/filter`` reads the database, so an event counts as delivered when a
read by its ID finds it.

Each cycle takes the oldest ``batch_size`` waiting events and
  - posts, as one ``POST /events``, those this process has not posted, or posted ``repost_after_seconds`` ago and
    still not stored (the server lost them);
  - reads back, by ID, those it posted before, and confirms the ones found.
Posting again is safe: the event ID is ``uuid5(eventId)``; the server's publisher drops an ID it saw in the last
5 minutes and its persister skips an ID already stored (the ID is the events table's primary key), so Prefect
holds each event once. A failed request (a timeout, a refused connection, an error status) forgets what was
posted (the server may have restarted with an empty queue) and backs off, 0.5 s doubling to 10 s. An event is
never dropped: one Prefect keeps refusing stays (and, among the oldest 50, holds back the newer ones), and the
outbox's age in ``/healthz`` and ``/metrics`` grows. Should the server drop a batch it had queued (its persister
gives up after 5 failed writes), the reposts get through once its publisher forgets the ID, within 5 minutes.

:class:`DurableEmitter` is what the receiver is given: "emitting" an event writes it to the outbox; the forwarder
runs in the app's lifespan.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import httpx
from prefect.events import Event
from pydantic import BaseModel, ConfigDict, Field

from dbt_cloud_gate.dbtcloud_api.types import Seconds
from dbt_cloud_gate.outbox import Outbox, PendingEvent

__all__ = [
    "DurableEmitter",
    "Forwarder",
    "ForwarderSettings",
    "Metric",
    "PrefectEventsApi",
    "PrefectEventsRefused",
    "prefect_auth_headers",
    "prometheus_text",
]

logger = logging.getLogger("dbt_cloud_gate.receiver.forwarder")

# Prefect's /events/filter answers at most 50 events a page (INTERACTIVE_PAGE_SIZE): a batch is read back in one.
MAX_BATCH = 50
# How far the read-back's window reaches around the events' `occurred` (the filter needs one; clocks may differ).
_WINDOW = timedelta(minutes=10)


class PrefectEventsRefused(RuntimeError):
    """Prefect answered an events request with an error status (``status_code``)."""

    def __init__(self, message: str, status_code: int) -> None:
        super().__init__(message)
        self.status_code = status_code


def prefect_auth_headers(api_key: str | None = None, auth_string: str | None = None) -> dict[str, str]:
    """JSON headers for Prefect's API: ``api_key`` (Prefect Cloud) as a bearer token, else ``auth_string`` (a
    server's basic auth) as basic auth."""
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    elif auth_string:
        headers["Authorization"] = "Basic " + base64.b64encode(auth_string.encode()).decode()
    return headers


class PrefectEventsApi:
    """``POST {api_url}/events`` and ``POST {api_url}/events/filter``, each with a finite timeout."""

    def __init__(
        self,
        api_url: str,
        *,
        api_key: str | None = None,
        auth_string: str | None = None,
        timeout_seconds: float = 5.0,
    ) -> None:
        self.events_url = api_url.rstrip("/") + "/events"
        self._http = httpx.AsyncClient(
            headers=prefect_auth_headers(api_key, auth_string),
            timeout=httpx.Timeout(timeout_seconds),
            follow_redirects=False,
        )

    async def _post(self, url: str, body: Any) -> httpx.Response:
        response = await self._http.post(url, json=body)
        if not response.is_success:
            raise PrefectEventsRefused(f"POST {url} answered {response.status_code}", response.status_code)
        return response

    async def post(self, events: Sequence[Mapping[str, Any]]) -> None:
        """Hand ``events`` (Prefect's JSON form) to the server: queued there, not yet stored."""
        await self._post(self.events_url, list(events))

    async def stored(self, events: Sequence[PendingEvent]) -> set[str]:
        """The IDs among ``events`` (at most 50) that the server's database holds."""
        occurred = [datetime.fromisoformat(e.event["occurred"]) for e in events]
        body = {
            "filter": {
                "id": {"id": [e.event_id for e in events]},
                "occurred": {
                    "since": (min(occurred) - _WINDOW).isoformat(),
                    "until": (max(occurred) + _WINDOW).isoformat(),
                },
            },
            "limit": MAX_BATCH,
        }
        found = (await self._post(f"{self.events_url}/filter", body)).json()
        return {str(event["id"]) for event in found.get("events", [])}

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()


class ForwarderSettings(BaseModel):
    """How the forwarder paces itself (defaults fit a Prefect server's 5 s persister flush)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    batch_size: int = Field(default=MAX_BATCH, ge=1, le=MAX_BATCH)
    confirm_poll_seconds: Seconds = 1.0  # read-back interval while events wait for the server's next flush
    repost_after_seconds: Seconds = 30.0  # posted, still not stored after this: post again (6 flushes missed)
    backoff_initial_seconds: Seconds = 0.5
    backoff_max_seconds: Seconds = 10.0  # a server back from an outage gets the backlog within 10 s
    idle_seconds: Seconds = 60.0  # an empty outbox is looked at again after this even with no wake-up


class Forwarder:
    """Sends the outbox's events to Prefect until each is read back from there (see the module's docstring)."""

    def __init__(self, outbox: Outbox, api: PrefectEventsApi, settings: ForwarderSettings | None = None) -> None:
        self.outbox = outbox
        self.api = api
        self.settings = settings or ForwarderSettings()
        self._wake = asyncio.Event()
        self._posted: dict[str, float] = {}  # event ID -> monotonic time this process last posted it
        self.posted_total = 0
        self.confirmed_total = 0
        self.failures_total = 0
        self.last_error: str | None = None

    def wake(self) -> None:
        """A new event is in the outbox: post it now rather than at the next poll."""
        self._wake.set()

    async def cycle(self) -> bool:
        """One pass over the oldest waiting events; ``True`` if some still wait."""
        self._wake.clear()
        waiting = await self.outbox.pending(self.settings.batch_size)
        if not waiting:
            self._posted.clear()
            return False
        now = time.monotonic()
        repost = self.settings.repost_after_seconds
        due = [e for e in waiting if e.event_id not in self._posted or now - self._posted[e.event_id] >= repost]
        due_ids = {e.event_id for e in due}
        earlier = [e for e in waiting if e.event_id not in due_ids]
        if earlier:  # read back first: what is stored now need not be posted again
            stored = await self.api.stored(earlier)
            if stored:
                self.confirmed_total += await self.outbox.confirm(stored)
                logger.info("%d event(s) stored in Prefect, out of the outbox", len(stored))
            for event_id in stored:
                self._posted.pop(event_id, None)
        if due:
            await self.api.post([e.event for e in due])
            self.posted_total += len(due)
            self._posted.update((e.event_id, now) for e in due)
        return True

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=seconds)

    async def run(self) -> None:
        """Forward until cancelled."""
        settings = self.settings
        backoff = settings.backoff_initial_seconds
        while True:
            try:
                waiting = await self.cycle()
            except Exception as exc:  # a timeout, a refused connection, an error status, a disk error
                self.failures_total += 1
                self.last_error = type(exc).__name__ + (
                    f" {exc.status_code}" if isinstance(exc, PrefectEventsRefused) else ""
                )
                self._posted.clear()  # the server may come back with an empty queue: post everything again
                logger.warning("forwarding to Prefect failed (%s); again in %.1f s", self.last_error, backoff)
                await asyncio.sleep(backoff)  # not cut short by new deliveries: a server that is down is left alone
                backoff = min(backoff * 2, settings.backoff_max_seconds)
                continue
            self.last_error = None
            backoff = settings.backoff_initial_seconds
            await self._pause(settings.confirm_poll_seconds if waiting else settings.idle_seconds)


Sample = tuple[Mapping[str, str], float]
Metric = tuple[str, str, str, Sequence[Sample]]  # name, help, type, samples


def prometheus_text(metrics: Iterable[Metric]) -> str:
    """Metrics in Prometheus' text exposition format (version 0.0.4)."""
    lines: list[str] = []
    for name, help_text, kind, samples in metrics:
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
        for labels, value in samples:
            tags = ",".join(f'{key}="{val}"' for key, val in labels.items())
            lines.append(f"{name}{{{tags}}} {value:g}" if tags else f"{name} {value:g}")
    return "\n".join(lines) + "\n"


class DurableEmitter:
    """The receiver's emitter: an event is taken once it is a row in ``outbox``; ``forwarder`` does the rest.

    Give :meth:`lifespan` to the ASGI app: it opens the outbox, runs the forwarder, and closes both."""

    def __init__(self, outbox: Outbox, forwarder: Forwarder) -> None:
        self.outbox = outbox
        self.forwarder = forwarder

    async def __call__(self, event: Event) -> bool:
        """Write ``event`` to the outbox (raises when the row is not written: the delivery is answered 503);
        ``False`` if it was there already."""
        fresh = await self.outbox.put(event)
        self.forwarder.wake()
        return fresh

    @contextlib.asynccontextmanager
    async def lifespan(self, app: object = None) -> AsyncIterator[None]:
        """Forward while the app serves; on the way out stop forwarding and close the outbox."""
        self.outbox.open()
        task = asyncio.create_task(self.forwarder.run(), name="outbox-forwarder")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await self.forwarder.api.aclose()
            self.outbox.close()

    async def health(self) -> dict[str, Any]:
        """The outbox's depth and age and the forwarder's counts (raises if the outbox cannot be read)."""
        stats = await self.outbox.stats()
        forwarder = self.forwarder
        return {
            "depth": stats.depth,
            "oldest_age_seconds": None if stats.oldest_age_seconds is None else round(stats.oldest_age_seconds, 3),
            "posted": forwarder.posted_total,
            "confirmed": forwarder.confirmed_total,
            "forward_failures": forwarder.failures_total,
            "last_error": forwarder.last_error,
        }

    async def metrics(self) -> list[Metric]:
        """The outbox's and the forwarder's metrics, for :func:`prometheus_text` (raises if the outbox cannot be
        read)."""
        stats = await self.outbox.stats()
        prefix = "dbt_cloud_gate_receiver_"
        forwarder = self.forwarder
        return [
            (f"{prefix}outbox_depth", "Events in the outbox not yet confirmed stored in Prefect.", "gauge",
             [({}, stats.depth)]),
            (f"{prefix}outbox_oldest_age_seconds", "Age of the oldest event waiting in the outbox (0 when empty).",
             "gauge", [({}, stats.oldest_age_seconds or 0.0)]),
            (f"{prefix}events_posted_total", "Events posted to Prefect (reposts included).", "counter",
             [({}, forwarder.posted_total)]),
            (f"{prefix}events_confirmed_total", "Events read back from Prefect and taken out of the outbox.",
             "counter", [({}, forwarder.confirmed_total)]),
            (f"{prefix}forward_failures_total", "Failed forwarding cycles (Prefect down or refusing).", "counter",
             [({}, forwarder.failures_total)]),
        ]  # fmt: skip
