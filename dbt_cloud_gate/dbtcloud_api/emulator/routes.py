"""The emulator's request handling: :class:`Emulator` answers one HTTP request at a time, with no sockets.

Each request is recorded, then meets the injected faults and the rate limit, then authentication and the OpenAPI
spec (read as dbt Cloud reads it, :mod:`.lenient`), then its route: the v2 jobs and runs endpoints
(:mod:`.jobs_api`, :mod:`.runs_api`, :mod:`.artifacts`), the v3 webhook subscriptions in :mod:`.webhook_api`,
and the ``/_emulator/`` admin endpoints that tests and other processes use. The account's jobs and runs live in
:class:`~dbt_cloud_gate.dbtcloud_api.emulator.state.AccountState`, which :class:`Emulator` extends.
"""

from __future__ import annotations

import json
import random
import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from dbt_cloud_gate.dbtcloud_api.emulator import artifacts, jobs_api, lenient, render, runs_api, steps, webhook_api
from dbt_cloud_gate.dbtcloud_api.emulator.faults import FaultInjection
from dbt_cloud_gate.dbtcloud_api.emulator.render import JSON_HEADERS, Reply, envelope, error, ok
from dbt_cloud_gate.dbtcloud_api.emulator.specs import (
    MAX_CAUSE,
    Fault,
    JobSpec,
    RecordedRequest,
    RunRecord,
)
from dbt_cloud_gate.dbtcloud_api.emulator.state import AccountState
from dbt_cloud_gate.dbtcloud_api.emulator.webhooks import WebhookHub
from dbt_cloud_gate.dbtcloud_api.openapi import SpecValidator

_V3_MESSAGES = {
    400: "The request was invalid. Please double check the provided data and try again.",
    404: "Requested resource not found.",
    405: "Method not allowed.",
}
_INVALID = "The request was invalid. Please double check the provided data and try again."
_NOT_FOUND = "Requested resource not found."

_HTML_502 = (
    "<html><head><title>{code} Bad Gateway</title></head><body><center><h1>{code} Bad Gateway</h1></center>"
    "<hr><center>nginx</center></body></html>"
)

# The v2 routes under /api/v2/accounts/{id}/, tried in order; a pattern's groups are the IDs in the path.
_ROUTES: list[tuple[str, str]] = [
    ("POST", r"jobs/(\d+)/run/"),
    ("POST", r"jobs/(\d+)/rerun/"),
    ("GET", r"jobs/"),
    ("POST", r"jobs/"),
    ("GET", r"jobs/(\d+)/"),
    ("POST", r"jobs/(\d+)/"),
    ("DELETE", r"jobs/(\d+)/"),
    ("GET", r"runs/"),
    ("GET", r"runs/(\d+)/"),
    ("POST", r"runs/(\d+)/cancel/"),
    ("GET", r"runs/(\d+)/retry/"),
    ("POST", r"runs/(\d+)/retry/"),
    ("GET", r"runs/(\d+)/artifacts/"),
    ("GET", r"runs/(\d+)/artifacts/(.+)"),
]
_V2_PREFIX = re.compile(r"^/api/v2/accounts/\d+/")
# A Host header as clients send it: a name or address and a port (it becomes the runs' ``href``).
_HOST = re.compile(r"[A-Za-z0-9.\-]+(:\d+)?|\[[0-9A-Fa-f:.]+\](:\d+)?")


class Emulator(AccountState, FaultInjection[Fault]):
    """A stateful stand-in for one dbt Cloud account's v2 API (and its v3 webhook subscriptions)."""

    def __init__(
        self,
        jobs: list[JobSpec] | None = None,
        *,
        account_id: int = 1,
        token: str = "emulator-token",
        validator: SpecValidator | None = None,
        rate_limit_per_minute: int | None = None,
        seed: int = 0,
        clock: Callable[[], float] = time.time,
        first_run_id: int | None = None,
    ) -> None:
        super().__init__(account_id=account_id, clock=clock, first_run_id=first_run_id)
        self.token = token
        self.validator = validator
        self.rate_limit_per_minute = rate_limit_per_minute
        self.base_url = "http://127.0.0.1"
        # How clients reach this emulator (``https`` behind TLS): with a request's Host, the runs' ``href``.
        self.scheme = "http"
        self._request_base: str | None = None
        self._rng = random.Random(seed)
        self.requests: list[RecordedRequest] = []
        self.faults = []
        self._window: deque[float] = deque()
        # v3 webhook subscriptions and the deliveries they get; the hub hears of every run through the state's sink.
        self.webhooks = WebhookHub.for_emulator(self, validate=validator is not None)
        self.sink = self.webhooks
        for spec in jobs or []:
            self.add_job(spec)

    @classmethod
    def from_jobs_file(cls, path: str | Path, **kwargs: Any) -> Emulator:
        """An emulator with the jobs of a JSON file: ``{"jobs": [{...JobSpec fields...}]}`` or a list."""
        return cls(cls.read_jobs_file(path), **kwargs)

    def run_json(self, run: RunRecord, now: float, includes: set[str]) -> dict[str, Any]:
        """The run as dbt Cloud serializes it, at time ``now``."""
        return render.run_json(
            run,
            self.jobs[run.job_id],
            now,
            includes,
            account_id=self.account_id,
            base_url=self._request_base or self.base_url,
            job=self.job_objects[run.job_id],
        )

    def run_results(self, run: RunRecord, step: int | None = None) -> dict[str, Any] | None:
        """The ``run_results.json`` a finished run's step leaves (default: the last step, as dbt Cloud serves it);
        ``None`` for a step that leaves none (set-up steps, ``dbt deps``, ``dbt source freshness``)."""
        return steps.run_results(run, self.jobs[run.job_id], step)

    # -- request handling ----------------------------------------------------------------------------

    def handle(
        self, method: str, target: str, headers: dict[str, str], body: bytes, *, origin: str | None = None
    ) -> Reply:
        """Answer one HTTP request (thread-safe). ``origin``: the address of the server it came in on."""
        lowered = {k.lower(): v for k, v in headers.items()}
        with self._lock:
            self._request_base = self._public_url(lowered, origin) or origin
            try:
                return self._handle(method.upper(), target, lowered, body)
            finally:
                self._request_base = None

    def _public_url(self, headers: dict[str, str], origin: str | None) -> str | None:
        """The address the client reached the emulator at (a relay's ``X-Forwarded-*`` first), if it says."""
        host = (headers.get("x-forwarded-host") or headers.get("host") or "").split(",")[0].strip()
        served = urlsplit(origin).scheme if origin else self.scheme
        scheme = (headers.get("x-forwarded-proto") or served).split(",")[0].strip().lower()
        if not _HOST.fullmatch(host) or scheme not in ("http", "https"):
            return None
        return f"{scheme}://{host}"

    def _handle(self, method: str, target: str, headers: dict[str, str], raw_body: bytes) -> Reply:
        now = self.clock()
        split = urlsplit(target)
        path = unquote(split.path)
        query = parse_qs(split.query, keep_blank_values=True)
        scheme, _, presented = headers.get("authorization", "").partition(" ")
        body: Any = None
        body_error: str | None = None
        if raw_body:
            try:
                body = json.loads(raw_body)
            except ValueError:
                body_error = "The request body is not valid JSON."
        record = RecordedRequest(method, path, query, body, scheme or None, now)
        self.requests.append(record)

        slow_delay = 0.0
        lose_response = False
        faulted = self._apply_faults(record, method, path, now)
        if faulted is not None:
            if record.fault == "drop":
                return faulted
            if record.fault == "lost_response":
                lose_response = True
            elif record.fault == "slow":
                slow_delay = faulted.delay
            else:
                record.status = faulted.status
                return faulted
        limited = self._rate_limited(now)
        if limited is not None:
            record.status = limited.status
            return limited
        redirect = self._slash_redirect(record, path, split.query)
        if redirect is not None:
            record.status = redirect.status
            return redirect
        if path.startswith("/_emulator/"):
            result = self._admin(method, path, body)
        elif scheme.lower() not in ("token", "bearer") or presented.strip() != self.token:
            result = error(401, "Invalid token.")
        elif body_error:
            result = error(400, body_error)
        else:
            result = self._route(record, method, path, query, body, raw_body, now)
        record.status = result.status
        if lose_response:
            return Reply(drop=True)
        result.delay = slow_delay
        return result

    def _rate_limited(self, now: float) -> Reply | None:
        """A 429 when the account's requests in the last minute reach the limit (else the request is counted)."""
        if self.rate_limit_per_minute is None:
            return None
        while self._window and self._window[0] <= now - 60.0:
            self._window.popleft()
        if len(self._window) >= self.rate_limit_per_minute:
            wait = max(1, int(self._window[0] + 60.0 - now + 0.999))
            return Reply(429, envelope(None, 429, "Too many requests."), {**JSON_HEADERS, "Retry-After": str(wait)})
        self._window.append(now)
        return None

    def _slash_redirect(self, record: RecordedRequest, path: str, query_string: str) -> Reply | None:
        """dbt Cloud's 308 for a v2 path without its trailing slash; recorded as a departure from the spec."""
        if not path.startswith("/api/v2/") or path.endswith("/"):
            return None
        known, slashed = self._known_path(path), self._known_path(path + "/")
        reply = lenient.slash_redirect(path, query_string, known=known, slashed_known=slashed)
        if reply is not None:
            record.spec_problems = [f"{path} lacks its trailing slash (answered 308 to {path}/)"]
        return reply

    def _known_path(self, path: str) -> bool:
        """Whether a v2 path names an operation of the spec or a route of the emulator (any method)."""
        if self.validator is not None and self.validator.match("GET", path)[2]:
            return True
        rest = _V2_PREFIX.sub("", path)
        return rest != path and any(re.fullmatch(pattern, rest) for _method, pattern in _ROUTES)

    def _apply_faults(self, record: RecordedRequest, method: str, path: str, now: float) -> Reply | None:
        job_id = self._job_of_path(path)

        def matches(fault: Fault) -> bool:
            if fault.method and fault.method.upper() != method:
                return False
            if fault.path and not re.search(fault.path, path):
                return False
            if fault.job_id is not None and fault.job_id != job_id:
                return False
            if fault.kind == "not_found_fresh":
                run = self._run_of_path(path)
                return (
                    run is not None
                    and now - run.created < fault.fresh_seconds
                    and bool(re.search(r"/runs/\d+/$", path))
                )
            return True

        fault = next(self._firing(matches), None)
        if fault is None:
            return None
        record.fault = fault.kind
        return _fault_reply(fault)

    def _job_of_path(self, path: str) -> int | None:
        found = re.search(r"/jobs/(\d+)/", path)
        if found:
            return int(found.group(1))
        run = self._run_of_path(path)
        return run.job_id if run else None

    def _run_of_path(self, path: str) -> RunRecord | None:
        found = re.search(r"/runs/(\d+)/", path)
        return self.runs.get(int(found.group(1))) if found else None

    def _route(
        self,
        record: RecordedRequest,
        method: str,
        path: str,
        query: dict[str, list[str]],
        body: Any,
        raw_body: bytes,
        now: float,
    ) -> Reply:
        """An authenticated request: checked against the spec, then routed within this account."""
        v3 = path.startswith("/api/v3/")
        operation: str | None = None
        if v3 and self.webhooks.validator is not None:
            record.spec_problems = self.webhooks.validator.validate(method, path, query, body, has_body=bool(raw_body))
            if record.spec_problems:
                return _spec_error(method, record.spec_problems)
        elif not v3 and self.validator is not None:
            # Answered as dbt Cloud reads requests; every departure from the spec is still recorded.
            checked = lenient.check(self.validator, method, path, query, body, has_body=bool(raw_body))
            record.spec_problems = checked.recorded
            if checked.refused:
                return _spec_error(method, checked.refused)
            query, body, operation = checked.query, checked.body, checked.operation
        version = "v3" if v3 else "v2"
        prefix = f"/api/{version}/accounts/{self.account_id}/"
        if not path.startswith(prefix):
            if re.match(rf"^/api/{version}/accounts/\d+/", path):
                return error(403, "You do not have permission to access this account.")
            return error(404, _NOT_FOUND)
        rest = path[len(prefix) :]
        if v3:
            code, data, extra = webhook_api.handle(self.webhooks, method, rest, query, body, now)
            message = _V3_MESSAGES.get(code, "Success!" if code < 300 else "The request failed.")
            return Reply(code, envelope(data, code, message, extra), dict(JSON_HEADERS))
        includes = lenient.include_related(query.get("include_related", []))
        for route_method, pattern in _ROUTES:
            found = re.fullmatch(pattern, rest)
            if found and route_method == method:
                return self._dispatch(
                    pattern, method, found.groups(), query, lenient.without_nulls(body), includes, now
                )
        if operation is not None:
            return error(
                501, f"{operation} ({method} {path}) is an operation of the spec the emulator does not implement."
            )
        return error(404, _NOT_FOUND)

    def _dispatch(
        self,
        pattern: str,
        method: str,
        groups: tuple[str, ...],
        query: dict[str, list[str]],
        body: Any,
        includes: set[str],
        now: float,
    ) -> Reply:
        ident = int(groups[0]) if groups else 0
        if pattern == r"runs/":
            return runs_api.list_runs(self, query, includes, now, self.run_json)
        if pattern == r"jobs/":
            if method == "GET":
                return jobs_api.list_jobs(self, query, includes, now, self.run_json)
            return jobs_api.create_job(self, body, now)
        if pattern.startswith("jobs/"):
            spec = jobs_api.live_job(self, ident)
            if spec is None:
                return jobs_api.not_found()
            if pattern == r"jobs/(\d+)/run/":
                return self._trigger(spec, body, now)
            if pattern == r"jobs/(\d+)/rerun/":
                return runs_api.rerun_job(self, ident, now, self.run_json)
            if method == "GET":
                return ok(jobs_api.job_view(self, ident, includes, now, self.run_json))
            if method == "DELETE":
                return jobs_api.delete_job(self, ident, now)
            return jobs_api.update_job(self, ident, body, now)
        run = self.runs.get(ident)
        if run is None:
            return error(404, _NOT_FOUND)
        if pattern == r"runs/(\d+)/":
            return ok(self.run_json(run, now, includes))
        if pattern == r"runs/(\d+)/cancel/":
            self.cancel_run(run, now)
            return ok(self.run_json(run, now, includes))
        if pattern == r"runs/(\d+)/retry/":
            if method == "GET":
                return runs_api.failure_details(self, run, now)
            return runs_api.retry_run(self, run, now, includes, self.run_json)
        return artifacts.serve(run, self.jobs[run.job_id], groups[1] if len(groups) > 1 else None, query, now)

    def _trigger(self, spec: JobSpec, body: Any, now: float) -> Reply:
        if not isinstance(body, dict) or not str(body.get("cause") or "").strip():
            return error(400, "The request was invalid.", {"cause": ["This field is required."]})
        cause = str(body["cause"])
        if len(cause) > MAX_CAUSE:
            return error(400, _INVALID, {"cause": [f"Ensure this field has no more than {MAX_CAUSE} characters."]})
        overrides = {key: value for key, value in body.items() if key != "cause"}
        return ok(self.run_json(self.trigger(spec, cause, overrides, now), now, set()))

    # -- admin endpoints (for tests and for processes that cannot hold the emulator object) ---------

    def _admin(self, method: str, path: str, body: Any) -> Reply:
        if path.startswith("/_emulator/webhooks/"):
            code, data = webhook_api.admin(self.webhooks, method, path[len("/_emulator/webhooks/") :], body)
            return Reply(code, envelope(data, code), dict(JSON_HEADERS))
        if method == "GET" and path == "/_emulator/requests":
            return ok([asdict(record) for record in self.requests])
        if method == "GET" and path == "/_emulator/runs":
            now = self.clock()
            return ok([self.run_json(run, now, {"trigger"}) for run in self.runs.values()])
        if method == "POST" and path == "/_emulator/faults":
            try:
                fault = self.add_fault(Fault.from_dict(body or {}))
            except (TypeError, ValueError) as exc:
                return error(400, str(exc))
            return ok(asdict(fault))
        if method == "DELETE" and path == "/_emulator/faults":
            self.clear_faults()
            return ok([])
        if method == "POST" and path.startswith("/_emulator/jobs/"):
            try:
                self.set_job(int(path.rsplit("/", 1)[-1]), **(body or {}))
            except (KeyError, ValueError) as exc:
                return error(400, str(exc))
            return ok(self.job_objects[int(path.rsplit("/", 1)[-1])])
        return error(404, "Unknown emulator admin endpoint.")


def _spec_error(method: str, problems: list[str]) -> Reply:
    """What dbt Cloud answers a request its spec refuses: 404 (no such path), 405 (method), else 400."""
    if any(p.startswith("no operation") for p in problems):
        return error(404, _NOT_FOUND)
    if any(p.startswith("method ") for p in problems):
        return error(405, f'Method "{method}" not allowed.')
    return error(400, _INVALID, {"__all__": problems})


def _fault_reply(fault: Fault) -> Reply:
    """The answer a firing fault gives (``drop`` and ``lost_response``: a dropped connection)."""
    if fault.kind == "429":
        headers = dict(JSON_HEADERS)
        if fault.retry_after is not None:
            headers["Retry-After"] = fault.retry_after
        return Reply(429, envelope(None, 429, "Too many requests."), headers)
    if fault.kind == "5xx":
        return Reply(fault.status, _HTML_502.format(code=fault.status).encode(), {"Content-Type": "text/html"})
    if fault.kind == "not_found_fresh":
        return error(404, _NOT_FOUND)
    if fault.kind == "status":
        return error(fault.status, f"Injected error {fault.status}.")
    if fault.kind == "slow":
        return Reply(delay=fault.delay)
    return Reply(drop=True)  # drop, lost_response


def http_date(seconds_from_now: float) -> str:
    """An HTTP date ``seconds_from_now`` in the future (for a ``Retry-After`` header)."""
    return format_datetime(datetime.fromtimestamp(time.time() + seconds_from_now, tz=UTC), usegmt=True)
