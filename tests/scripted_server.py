"""A tiny HTTP server on loopback whose every answer a test scripts: for what a real dbt Cloud (and the emulator)
cannot easily produce: another run than the one asked for, an HTML page with status 200, an answer after 40 s,
an answer trickled a byte at a time."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

ACCOUNT = 4242


@dataclass
class Answer:
    """What to send back: ``status`` and ``body``; ``delay`` seconds before anything, then the whole response
    at once, or one byte every ``trickle`` seconds."""

    status: int = 200
    body: Any = None
    content_type: str = "application/json"
    delay: float = 0.0
    trickle: float = 0.0

    def raw(self) -> bytes:
        if isinstance(self.body, bytes):
            payload = self.body
        elif isinstance(self.body, str):
            payload = self.body.encode()
        else:
            payload = json.dumps(self.body).encode()
        head = (
            f"HTTP/1.1 {self.status} X\r\nContent-Type: {self.content_type}\r\n"
            f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
        )
        return head.encode() + payload


@dataclass
class Seen:
    """A request the server received."""

    method: str
    path: str
    at: float
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


def envelope(data: Any) -> dict[str, Any]:
    return {"status": {"code": 200, "is_success": True, "user_message": "Success!"}, "data": data, "extra": {}}


def run_data(
    run_id: int,
    status: int,
    *,
    account_id: int = ACCOUNT,
    job_id: int = 11,
    finished: bool = True,
    started_at: datetime | None = None,
    created_at: datetime | None = None,
    cause: str = "test",
) -> dict[str, Any]:
    """A run as dbt Cloud sends it; ``finished`` sets ``finished_at`` for a terminal status."""
    now = datetime.now(UTC)
    terminal = status in (10, 20, 30)
    return {
        "id": run_id,
        "account_id": account_id,
        "job_definition_id": job_id,
        "status": status,
        "created_at": (created_at or now).isoformat(sep=" "),
        "started_at": started_at.isoformat(sep=" ")
        if started_at
        else (now.isoformat(sep=" ") if status >= 3 else None),
        "finished_at": now.isoformat(sep=" ") if terminal and finished else None,
        "is_complete": terminal,
        "trigger": {"cause": cause, "job_definition_id": job_id},
        "job": {"id": job_id, "account_id": account_id, "project_id": 1, "environment_id": 1, "name": "job"},
        "run_steps": [{"index": 1, "status": status if terminal else 3, "name": "Invoke dbt with `dbt build`"}],
        "artifacts_saved": False,
    }


class ScriptedServer:
    """Answers each request with ``respond(method, path)``; records what it got. Use as a context manager."""

    def __init__(self, respond: Callable[[str, str], Answer]) -> None:
        self.respond = respond
        self.seen: list[Seen] = []
        self._stop = threading.Event()
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self._sock.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> ScriptedServer:
        thread = threading.Thread(target=self._accept, daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._sock.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                continue
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            data = b""
            try:
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                head, _, rest = data.partition(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
                length = int(headers.get("content-length", "0"))
                while len(rest) < length:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    rest += chunk
            except (OSError, ValueError):
                return
            path = target.split("?", 1)[0]
            self.seen.append(Seen(method, path, time.monotonic(), rest, headers))
            answer = self.respond(method, path)
            if self._stop.wait(answer.delay):
                return
            raw = answer.raw()
            try:
                if answer.trickle <= 0:
                    conn.sendall(raw)
                    return
                for index in range(len(raw)):
                    conn.sendall(raw[index : index + 1])
                    if self._stop.wait(answer.trickle):
                        return
            except OSError:
                return  # the client gave up and closed
