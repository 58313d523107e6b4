"""The process-wide webhook waiter: one Prefect event subscription wakes every wait for a dbt Cloud run.

Modelled on Prefect's own ``prefect.task_runs.TaskRunWaiter``: a lazy singleton (one per Prefect API URL) behind a
lock runs ONE ``get_events_subscriber`` in a background thread with its own event loop, filtered on the terminal
webhook events (``dbt-cloud.run.webhook.completed`` / ``errored``, see :mod:`dbt_cloud_gate.events`). It is a
:class:`dbtcloud_api.wait.Waker`: a wait sleeps in :meth:`RunEventWaiter.wait` (or ``await_wake``) instead of
``time.sleep`` and is woken when its run's event arrives; the wait then reads the run once, and that GET decides.

No wake-up is lost:

* the flows start the waiter BEFORE they trigger the run (the server's backfill on connect only covers events it
  has persisted, which it does every 5 s);
* an event for a run nobody is waiting on at that moment (the trigger has not returned yet, or the wait is in the
  middle of a poll) is kept in a TTL cache, and a wait registers, then checks that cache, under one lock;
* after a reconnect every registered wait is woken once, so that it polls (events may have passed unseen).

No flood of events can turn into a flood of reads (anyone who can post to the Prefect server can forge events):
wake-ups for one run are handed out at most once per ``debounce_seconds`` (3 s). An event within that time of
the last wake-up for its run moves the next wake-up to the end of it (a wait woken for it sleeps until then),
and further events before that moment are covered by it and cost nothing. 50 events in 5 s cause at most 3
reads of the run; an event for a run nobody waits on only refreshes one entry of a bounded cache.

It needs a Prefect server that other processes can post to (``PREFECT_API_URL`` set, not an ephemeral or test
server started inside this process): elsewhere :func:`webhook_waiter` answers ``None`` and says why, and the waits
poll as they do without webhooks. Cancelled runs send no webhook: the waits keep polling at
``fallback_poll_seconds`` to see them (and lost deliveries, or a receiver that is down).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import sys
import threading
import time
from collections import OrderedDict
from typing import Any

from prefect.events import Event
from prefect.events.clients import get_events_subscriber
from prefect.settings import PREFECT_API_URL

from dbt_cloud_gate.events import run_id_of, webhook_event_filter

__all__ = [
    "RunEventWaiter",
    "stop_webhook_waiters",
    "webhook_waiter",
    "webhook_waits_unavailable",
]

logger = logging.getLogger("dbt_cloud_gate.waiter")


# How long an event for a run nobody waits on is kept (a wait registers within seconds of its trigger).
PENDING_TTL_SECONDS = 900.0
# At most one wake-up (so one read) of a run per this many seconds, however many events arrive for it.
DEBOUNCE_SECONDS = 3.0
MAX_PENDING = 50_000
CONNECT_TIMEOUT_SECONDS = 10.0
# Reconnect backoff: 0.5 s doubling to 30 s; reset once a connection has lasted a minute.
BACKOFF_INITIAL_SECONDS = 0.5
BACKOFF_MAX_SECONDS = 30.0
STABLE_CONNECTION_SECONDS = 60.0
# After a failed start, ask again only after this long (a fan-out must not pay the connect timeout per call).
RETRY_START_AFTER_SECONDS = 30.0


class _Slot:
    """One sleeping wait: a thread's Event, or a future on the waiting coroutine's loop."""

    __slots__ = ("event", "future", "loop")

    def __init__(
        self,
        event: threading.Event | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        future: asyncio.Future[None] | None = None,
    ) -> None:
        self.event = event
        self.loop = loop
        self.future = future

    def wake(self) -> None:
        if self.event is not None:
            self.event.set()
        elif self.loop is not None and self.future is not None:
            try:
                self.loop.call_soon_threadsafe(_resolve, self.future)
            except RuntimeError:  # the waiting loop is closed: nobody to wake
                pass


def _trim(entries: OrderedDict[int, float], older_than: float) -> None:
    """Drop the oldest entries (run ID -> moment) from the front while their moment is before ``older_than`` or
    there are more than ``MAX_PENDING``: forged events for endless run IDs cost bounded memory."""
    while entries:
        oldest, moment = next(iter(entries.items()))
        if moment > older_than and len(entries) <= MAX_PENDING:
            break
        del entries[oldest]


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class RunEventWaiter:
    """One subscription to the terminal webhook events of ``api_url``'s Prefect server; a Waker for every wait."""

    def __init__(
        self,
        api_url: str,
        *,
        pending_ttl_seconds: float = PENDING_TTL_SECONDS,
        terminal_only: bool = True,
        debounce_seconds: float = DEBOUNCE_SECONDS,
    ) -> None:
        self.api_url = api_url
        self.pending_ttl_seconds = pending_ttl_seconds
        self.terminal_only = terminal_only
        self.debounce_seconds = debounce_seconds
        self._lock = threading.Lock()
        self._slots: dict[int, set[_Slot]] = {}
        self._pending: OrderedDict[int, float] = OrderedDict()  # run ID -> expiry (monotonic)
        self._due: OrderedDict[int, float] = OrderedDict()  # run ID -> when its latest wake-up is handed out
        self._connected = threading.Event()
        self._stopping = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._thread: threading.Thread | None = None
        # Counters, for logs, tests and the benchmark.
        self.connections = 0
        self.events_seen = 0
        self.wakeups = 0

    # -- lifecycle ------------------------------------------------------------------------------------------

    @property
    def alive(self) -> bool:
        """Whether the subscriber thread runs (connected or reconnecting)."""
        return self._thread is not None and self._thread.is_alive() and not self._stopping.is_set()

    @property
    def connected(self) -> bool:
        """Whether the subscription is open right now."""
        return self._connected.is_set()

    def start(self, timeout: float = CONNECT_TIMEOUT_SECONDS) -> bool:
        """Start the subscriber thread and wait up to ``timeout`` for the first connection; ``False`` (and the
        thread stopped) when it did not connect in time."""
        if self.alive:
            return self._connected.wait(timeout)
        ready = threading.Event()
        # The thread runs in a copy of this context: the Prefect settings (API URL, auth) a test or a flow set.
        context = contextvars.copy_context()
        self._thread = threading.Thread(
            target=context.run, args=(self._run, ready), name="dbt-cloud-webhook-waiter", daemon=True
        )
        self._thread.start()
        ready.wait(5)
        if self._connected.wait(timeout):
            return True
        self.stop()
        return False

    def stop(self, timeout: float = 5.0) -> None:
        """Close the subscription and end the thread; sleeping waits are woken (they poll, then sleep plainly)."""
        self._stopping.set()
        loop, task = self._loop, self._task
        if loop is not None and task is not None:
            try:
                loop.call_soon_threadsafe(task.cancel)
            except RuntimeError:
                pass
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        self._wake_all()

    def _run(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            self._task = loop.create_task(self._consume())
            ready.set()
            loop.run_until_complete(self._task)
        except asyncio.CancelledError:
            pass
        finally:
            self._connected.clear()
            loop.close()

    async def _consume(self) -> None:
        backoff = BACKOFF_INITIAL_SECONDS
        events = webhook_event_filter(None, terminal_only=self.terminal_only)
        while not self._stopping.is_set():
            opened = time.monotonic()
            try:
                # Reconnects are ours (not the subscriber's own), so that each one is seen and wakes the waits.
                async with get_events_subscriber(filter=events.model_copy(deep=True), reconnection_attempts=0) as sub:
                    self.connections += 1
                    self._connected.set()
                    if self.connections > 1:
                        logger.info("Webhook event subscription to %s reopened: every wait polls once.", self.api_url)
                        self._wake_all()
                    async for event in sub:
                        self._on_event(event)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the server is down or restarting: reconnect with backoff
                logger.warning(
                    "Webhook event subscription to %s failed (%s); reconnecting in %.1f s (waits keep polling).",
                    self.api_url,
                    type(exc).__name__,
                    backoff,
                )
            self._connected.clear()
            if time.monotonic() - opened > STABLE_CONNECTION_SECONDS:
                backoff = BACKOFF_INITIAL_SECONDS
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX_SECONDS)

    # -- events ---------------------------------------------------------------------------------------------

    def _on_event(self, event: Event) -> None:
        run_id = run_id_of(event)
        if run_id is None:
            return
        self.events_seen += 1
        self.notify(run_id)

    def notify(self, run_id: int) -> None:
        """Wake every wait sleeping for ``run_id``; with none, keep the wake-up for the next one (TTL). Debounced:
        see the module's docstring."""
        now = time.monotonic()
        with self._lock:
            due = self._due.get(run_id)
            if due is not None and now <= due:
                return  # a wake-up is already due after this event: its read covers it
            self._due.pop(run_id, None)
            self._due[run_id] = (
                now if due is None or now - due >= self.debounce_seconds else due + self.debounce_seconds
            )
            _trim(self._due, now - self.debounce_seconds)  # wake-ups older than the debounce hold nothing back
            slots = self._slots.get(run_id)
            if not slots:
                self._pending.pop(run_id, None)
                self._pending[run_id] = now + self.pending_ttl_seconds
                _trim(self._pending, now)
                return
            woken = list(slots)
        self.wakeups += len(woken)
        for slot in woken:
            slot.wake()

    def sleeping(self, run_id: int) -> int:
        """How many waits sleep on ``run_id`` right now."""
        with self._lock:
            return len(self._slots.get(run_id, ()))

    def _wake_all(self) -> None:
        with self._lock:
            woken = [slot for slots in self._slots.values() for slot in slots]
        self.wakeups += len(woken)
        for slot in woken:
            slot.wake()

    def _register(self, run_id: int, slot: _Slot) -> bool:
        """``True`` if a wake-up for ``run_id`` was kept (handed out once), else ``slot`` waits for the next one.
        Both under one lock: an event cannot slip between the check and the registration."""
        with self._lock:
            expires = self._pending.pop(run_id, None)
            if expires is not None and expires > time.monotonic():
                return True
            self._slots.setdefault(run_id, set()).add(slot)
            return False

    def _hold(self, run_id: int, end: float) -> tuple[float, bool]:
        """How long a wait woken for ``run_id`` sleeps on before it reads the run (until its wake-up is due: the
        debounce), at most until ``end``, the end of its sleep; and whether the wake-up is kept for its next sleep
        because the sleep ends first (events after that read are covered by the wake-up still due)."""
        now = time.monotonic()
        with self._lock:
            due = self._due.get(run_id)
            if due is None or due <= now:
                return 0.0, False
            if due <= end:
                return due - now, False
            self._pending.pop(run_id, None)
            self._pending[run_id] = now + self.pending_ttl_seconds
            return max(0.0, end - now), True

    # -- the Waker protocol ---------------------------------------------------------------------------------

    def wait(self, run_id: int, seconds: float) -> bool:
        """Sleep up to ``seconds``; ``True`` as soon as ``run_id``'s terminal event arrives (or had arrived)."""
        end = time.monotonic() + max(0.0, seconds)
        slot = _Slot(event=threading.Event())
        woken = self._register(run_id, slot)
        if not woken:
            try:
                assert slot.event is not None
                woken = slot.event.wait(max(0.0, seconds)) and not self._stopping.is_set()
            finally:
                self._unregister(run_id, slot)
        if woken:
            hold, kept = self._hold(run_id, end)
            self._stopping.wait(hold)
            woken = not kept
        return woken and not self._stopping.is_set()

    async def await_wake(self, run_id: int, seconds: float) -> bool:
        """The asyncio twin of :meth:`wait` (many waits on one loop share the one subscription)."""
        end = time.monotonic() + max(0.0, seconds)
        loop = asyncio.get_running_loop()
        slot = _Slot(loop=loop, future=loop.create_future())
        woken = self._register(run_id, slot)
        if not woken:
            try:
                assert slot.future is not None
                done, _ = await asyncio.wait({slot.future}, timeout=max(0.0, seconds))
                woken = bool(done) and not self._stopping.is_set()
            finally:
                self._unregister(run_id, slot)
                if slot.future is not None and not slot.future.done():
                    slot.future.cancel()
        if woken:
            hold, kept = self._hold(run_id, end)
            await asyncio.sleep(hold)
            woken = not kept
        return woken and not self._stopping.is_set()

    def _unregister(self, run_id: int, slot: _Slot) -> None:
        with self._lock:
            slots = self._slots.get(run_id)
            if slots is not None:
                slots.discard(slot)
                if not slots:
                    del self._slots[run_id]


# -- the process-wide instances -------------------------------------------------------------------------------

_instances: dict[str, RunEventWaiter] = {}
_failed_at: dict[str, float] = {}
_instances_lock = threading.Lock()


def webhook_waits_unavailable(api_url: str | None = None) -> str | None:
    """Why webhook waits cannot work here, or ``None``: they need a Prefect server the receiver can post to."""
    url = api_url if api_url is not None else PREFECT_API_URL.value()
    if not url:
        return "PREFECT_API_URL is not set (ephemeral mode: no other process can send this one events)"
    # An ephemeral or test server started inside this process (prefect_test_harness, ephemeral mode) has a URL,
    # but lives and dies with this process: no receiver is pointed at it. Only look if that module is loaded.
    server_module: Any = sys.modules.get("prefect.server.api.server")
    instances = getattr(getattr(server_module, "SubprocessASGIServer", None), "_instances", {}) or {}
    for server in list(instances.values()):
        if getattr(server, "server_process", None) is not None and getattr(server, "api_url", None) == url:
            return f"PREFECT_API_URL ({url}) is a temporary server this process started (ephemeral or test mode)"
    return None


def webhook_waiter(
    log: logging.Logger | logging.LoggerAdapter[Any] = logger, *, connect_timeout: float = CONNECT_TIMEOUT_SECONDS
) -> RunEventWaiter | None:
    """The process-wide waiter for the current Prefect API, started (and connected) if it was not; ``None``, with
    the reason logged, when webhook waits cannot work here (then poll as without webhooks).

    Call it before triggering the run: only then is the run's terminal event sure to be seen.
    """
    reason = webhook_waits_unavailable()
    if reason is not None:
        log.info("Webhook waits are off: %s. Polling instead.", reason)
        return None
    api_url = str(PREFECT_API_URL.value())
    with _instances_lock:
        waiter = _instances.get(api_url)
        if waiter is not None and waiter.alive:
            return waiter
        failed = _failed_at.get(api_url)
        if failed is not None and time.monotonic() - failed < RETRY_START_AFTER_SECONDS:
            log.info("Webhook waits are off: the event subscription to %s failed moments ago. Polling.", api_url)
            return None
        waiter = RunEventWaiter(api_url)
        if not waiter.start(connect_timeout):
            _failed_at[api_url] = time.monotonic()
            log.warning(
                "Webhook waits are off: could not subscribe to %s's events within %g s. Polling instead.",
                api_url,
                connect_timeout,
            )
            return None
        _failed_at.pop(api_url, None)
        _instances[api_url] = waiter
    log.info("Webhook waits on: subscribed to dbt Cloud webhook events on %s.", api_url)
    return waiter


def stop_webhook_waiters() -> None:
    """Stop every process-wide waiter (tests, shutdown); the next :func:`webhook_waiter` starts afresh."""
    with _instances_lock:
        waiters = list(_instances.values())
        _instances.clear()
        _failed_at.clear()
    for waiter in waiters:
        waiter.stop()
