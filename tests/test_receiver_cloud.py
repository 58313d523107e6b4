"""The receiver posting to Prefect Cloud: ``python -m dbt_cloud_gate.receiver serve`` with a workspace's
PREFECT_API_URL and PREFECT_API_KEY sends each event with the key as a bearer token, reads it back the same way
before it leaves the outbox, and never logs the key. Prefect Cloud cannot be reached from here: a fake of its events
endpoints on loopback stands in for it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from dbt_cloud_gate.dbtcloud_api.webhooks import delivery_payload, encode_body, sign
from dbt_cloud_gate.receiver import DEFAULT_PATH
from dbt_cloud_gate.stack.services import ROOT, free_port, stop_process_tree
from tests.test_receiver import Served

WORKSPACE = "/api/accounts/0f1e2d3c-0000-4000-8000-000000000001/workspaces/0f1e2d3c-0000-4000-8000-000000000002"
API_KEY = "pnu_fakeCloudKey0123456789abcdefghijklmn"
SECRET = "a-webhook-secret-0123456789abcdef"


def fake_cloud() -> tuple[Starlette, list[dict[str, Any]], list[str | None]]:
    """Prefect Cloud's events endpoints: ``POST .../events`` records what it gets, ``POST .../events/filter``
    finds them by ID (401 without the workspace's key, as Cloud)."""
    received: list[dict[str, Any]] = []
    reads: list[str | None] = []

    async def events(request: Request) -> Response:
        received.append({"authorization": request.headers.get("authorization"), "events": await request.json()})
        ok = request.headers.get("authorization") == f"Bearer {API_KEY}"
        return Response(status_code=204 if ok else 401)

    async def read(request: Request) -> Response:
        reads.append(request.headers.get("authorization"))
        if request.headers.get("authorization") != f"Bearer {API_KEY}":
            return Response(status_code=401)
        wanted = set((await request.json())["filter"]["id"]["id"])
        found = [event for post in received for event in post["events"] if event["id"] in wanted]
        return JSONResponse({"events": found, "total": len(found), "next_page": None})

    routes = [Route(f"{WORKSPACE}/events", events, methods=["POST"])]
    return Starlette(routes=[*routes, Route(f"{WORKSPACE}/events/filter", read, methods=["POST"])]), received, reads


def test_the_cli_sends_events_to_prefect_cloud_with_the_api_key_as_a_bearer_token(tmp_path: Path) -> None:
    app, received, reads = fake_cloud()
    port = free_port()
    with Served(app) as cloud:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API", "DBT_CLOUD_WEBHOOK"))}
        env.update(
            PREFECT_API_URL=f"http://127.0.0.1:{cloud.port}{WORKSPACE}",
            PREFECT_API_KEY=API_KEY,
            DBT_CLOUD_WEBHOOK_SECRET=SECRET,
            DBT_CLOUD_GATE_OUTBOX=str(tmp_path / "outbox.sqlite3"),
        )
        process = subprocess.Popen(
            [sys.executable, "-m", "dbt_cloud_gate.receiver", "serve", "--port", str(port), "--log-level", "debug"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert process.poll() is None and time.monotonic() < deadline, "the receiver did not start"
                time.sleep(0.2)
            body = encode_body(
                delivery_payload("job.run.completed", account_id=7, run_id=4242, job_id=11, run_status_code=10)
            )
            answer = httpx.post(
                f"http://127.0.0.1:{port}{DEFAULT_PATH}",
                content=body,
                headers={"Authorization": sign(body, SECRET), "Content-Type": "application/json"},
                timeout=10,
            )
            while (outbox := httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).json()["outbox"])["depth"]:
                assert time.monotonic() < deadline, outbox  # posted, then read back: out of the outbox
                time.sleep(0.1)
        finally:
            stop_process_tree(process, timeout=10)
    output = process.stdout.read().decode(errors="replace") if process.stdout else ""
    assert answer.status_code == 200 and answer.json()["status"] == "accepted", (answer.text, output)
    [posted] = received
    assert posted["authorization"] == f"Bearer {API_KEY}" and reads and set(reads) == {f"Bearer {API_KEY}"}
    [event] = posted["events"]
    assert event["event"] == "dbt-cloud.run.webhook.completed" and event["resource"]["prefect.resource.id"] == (
        "dbt-cloud.run.4242"
    )
    assert "event " in output and "of run 4242" in output  # its log names the delivery...
    assert API_KEY not in output and API_KEY not in json.dumps(event)  # ...and never the key
