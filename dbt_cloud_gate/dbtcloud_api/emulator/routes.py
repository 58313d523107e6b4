"""The emulator's request handling: :class:`Emulator` answers one HTTP request at a time, with no sockets.

Each request is recorded, then meets the injected faults and the rate limit, then authentication and the OpenAPI
spec, then its route: the v2 jobs and runs endpoints here, the v3 webhook subscriptions in :mod:`.webhook_api`,
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

from dbt_cloud_gate.dbtcloud_api.emulator import render, webhook_api
from dbt_cloud_gate.dbtcloud_api.emulator.faults import FaultInjection
from dbt_cloud_gate.dbtcloud_api.emulator.render import JSON_HEADERS, Reply, envelope, error, ok
from dbt_cloud_gate.dbtcloud_api.emulator.specs import (
    MAX_CAUSE,
    SETUP_STEPS,
    Fault,
    JobSpec,
    RecordedRequest,
    RunRecord,
)
from dbt_cloud_gate.dbtcloud_api.emulator.state import AccountState
from dbt_cloud_gate.dbtcloud_api.emulator.webhooks import WebhookHub
from dbt_cloud_gate.dbtcloud_api.models import RunStatus
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
    ("GET", r"jobs/(\d+)/"),
    ("POST", r"jobs/(\d+)/"),
    ("GET", r"runs/"),
    ("GET", r"runs/(\d+)/"),
    ("POST", r"runs/(\d+)/cancel/"),
    ("POST", r"runs/(\d+)/retry/"),
    ("GET", r"runs/(\d+)/artifacts/"),
    ("GET", r"runs/(\d+)/artifacts/(.+)"),
]


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
            base_url=self.base_url,
            job=self.job_objects[run.job_id],
        )

    def run_results(self, run: RunRecord, step: int | None = None) -> dict[str, Any] | None:
        """The ``run_results.json`` a finished run's step leaves (default: the last step, as dbt Cloud serves it);
        ``None`` for a step that leaves none (set-up steps, ``dbt deps``)."""
        return render.run_results(run, self.jobs[run.job_id], step)

    # -- request handling ----------------------------------------------------------------------------

    def handle(self, method: str, target: str, headers: dict[str, str], body: bytes) -> Reply:
        """Answer one HTTP request (thread-safe)."""
        with self._lock:
            return self._handle(method.upper(), target, {k.lower(): v for k, v in headers.items()}, body)

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
        validator = self.webhooks.validator if v3 else self.validator
        if validator is not None:
            record.spec_problems = validator.validate(method, path, query, body, has_body=bool(raw_body))
            if record.spec_problems:
                return _spec_error(method, record.spec_problems)
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
        includes = set(
            ",".join(query.get("include_related", [])).replace("[", "").replace("]", "").replace('"', "").split(",")
        )
        for route_method, pattern in _ROUTES:
            found = re.fullmatch(pattern, rest)
            if found and route_method == method:
                return self._dispatch(pattern, method, found.groups(), query, body, includes, now)
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
            return self._list_runs(query, includes, now)
        if pattern.startswith("jobs/"):
            spec = self.jobs.get(ident)
            if spec is None:
                return error(404, _NOT_FOUND)
            if pattern == r"jobs/(\d+)/run/":
                return self._trigger(spec, body, now)
            if method == "GET":
                return ok(self.job_objects[ident])
            return self._update_job(ident, body, now)
        run = self.runs.get(ident)
        if run is None:
            return error(404, _NOT_FOUND)
        if pattern == r"runs/(\d+)/":
            return ok(self.run_json(run, now, includes))
        if pattern == r"runs/(\d+)/cancel/":
            self.cancel_run(run, now)
            return ok(self.run_json(run, now, includes))
        if pattern == r"runs/(\d+)/retry/":
            if run.status_at(now) != RunStatus.ERROR:
                return error(400, f"Run {run.id} did not fail, so it cannot be retried from its point of failure.")
            return ok(self.run_json(self.retry(run, now), now, includes))
        return self._artifacts(run, groups[1] if len(groups) > 1 else None, query, now)

    def _artifacts(self, run: RunRecord, name: str | None, query: dict[str, list[str]], now: float) -> Reply:
        """``runs/{id}/artifacts/`` (``name`` None: the list) and ``runs/{id}/artifacts/{name}``."""
        if run.status_at(now) not in (RunStatus.SUCCESS, RunStatus.ERROR):
            return error(404, f"No artifacts for run {run.id}: it has not completed, or was cancelled.")
        steps_asked = query.get("step") or []
        try:
            step = int(steps_asked[0]) if steps_asked else None
        except ValueError:
            return error(400, "The request was invalid.", {"step": ["A valid integer is required."]})
        total_steps = len(SETUP_STEPS) + len(run.steps)
        if step is not None and not 1 <= step <= total_steps:
            return error(404, f"Run {run.id} has no step {step}.")
        if name is None:
            return ok(["manifest.json", "run_results.json"])
        if name == "run_results.json":
            document = self.run_results(run, step)
            if document is None:
                return error(404, f"Artifact {name} not found for run {run.id} step {step or total_steps}.")
        elif name == "manifest.json":
            document = render.manifest(self.jobs[run.job_id])
        else:
            return error(404, f"Artifact {name} not found for run {run.id}.")
        return Reply(200, json.dumps(document).encode(), dict(JSON_HEADERS))

    def _trigger(self, spec: JobSpec, body: Any, now: float) -> Reply:
        if not isinstance(body, dict) or not str(body.get("cause") or "").strip():
            return error(400, "The request was invalid.", {"cause": ["This field is required."]})
        cause = str(body["cause"])
        if len(cause) > MAX_CAUSE:
            return error(400, _INVALID, {"cause": [f"Ensure this field has no more than {MAX_CAUSE} characters."]})
        overrides = {key: value for key, value in body.items() if key != "cause"}
        return ok(self.run_json(self.trigger(spec, cause, overrides, now), now, set()))

    def _update_job(self, job_id: int, body: Any, now: float) -> Reply:
        if not isinstance(body, dict):
            return error(400, "The request was invalid.")
        if body.get("id") not in (None, job_id):
            return error(400, "The job id in the body does not match the path.")
        job = self.job_objects[job_id]
        read_only = {"id", "account_id", "created_at", "updated_at", "cron_humanized", "next_run", "next_run_humanized"}
        for key, value in body.items():
            if key not in read_only:
                job[key] = value
        job["updated_at"] = render.iso(now)
        self.jobs[job_id].schedule_enabled = bool(job["triggers"].get("schedule"))
        return ok(job)

    def _list_runs(self, query: dict[str, list[str]], includes: set[str], now: float) -> Reply:
        def one(name: str) -> str | None:
            values = query.get(name)
            return values[-1] if values else None

        limit = int(one("limit") or 100)
        offset = int(one("offset") or 0)
        if limit > 100 or limit < 1:
            return error(
                400, "The request was invalid.", {"limit": ["Ensure this value is less than or equal to 100."]}
            )
        job = one("job_definition_id")
        runs = self.runs_for(None if job is None else int(job))
        status = one("status")
        if status is not None:
            runs = [run for run in runs if int(run.status_at(now)) == int(status)]
        status_in = one("status__in")
        if status_in is not None:
            wanted = {int(v) for v in status_in.strip("[]").split(",") if v.strip()}
            runs = [run for run in runs if int(run.status_at(now)) in wanted]
        order = one("order_by") or "id"
        key_name = order.lstrip("-")
        keys: dict[str, Callable[[RunRecord], float]] = {
            "id": lambda r: r.id,
            "created_at": lambda r: r.created,
            "finished_at": lambda r: r.end() if r.status_at(now).is_terminal else float("inf"),
        }
        if key_name not in keys:
            return error(400, "The request was invalid.", {"order_by": [f"Cannot order by {key_name}."]})
        runs.sort(key=keys[key_name], reverse=order.startswith("-"))
        page = runs[offset : offset + limit]
        extra = {
            "filters": {"account_id": self.account_id, "limit": limit, "offset": offset},
            "order_by": order,
            "pagination": {"count": len(page), "total_count": len(runs)},
        }
        return ok([self.run_json(run, now, includes) for run in page], extra)

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
