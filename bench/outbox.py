"""What the receiver's durable outbox costs a delivery: the outbox write alone, per ``synchronous`` setting, and a
signed delivery through the whole app (HMAC, parse, outbox write, answer) over httpx.ASGITransport, no port.

The write is what a delivery waits for before its 200: ``Outbox.put`` (a commit on the outbox's own thread). The
receiver uses ``synchronous=FULL`` (an fsync of the WAL per commit); ``NORMAL`` is measured beside it for the
choice. ``--dir`` picks the disk (default: a temporary folder; tmpfs would hide the fsync).

    python3 -m bench.outbox               # 500 writes per setting, 200 deliveries
    python3 -m bench.outbox --writes 2000 --dir /var/lib/receiver
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from uuid import uuid4

import httpx
from prefect.events import Event

from dbt_cloud_gate.dbtcloud_api.webhooks import delivery_payload, encode_body, sign
from dbt_cloud_gate.forwarder import DurableEmitter, Forwarder, PrefectEventsApi
from dbt_cloud_gate.outbox import Outbox
from dbt_cloud_gate.receiver import DEFAULT_PATH, ReceiverConfig, create_app

SECRET = "bench-secret-0123456789abcdef"


def _figures(name: str, seconds: list[float]) -> str:
    ms = sorted(s * 1000 for s in seconds)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    return f"{name:<34} median {statistics.median(ms):6.2f} ms  p99 {p99:6.2f} ms  max {ms[-1]:6.2f} ms  (n={len(ms)})"


async def _writes(folder: Path, synchronous: str, count: int) -> list[float]:
    outbox = Outbox(folder / f"writes-{synchronous.lower()}.sqlite3").open()
    await outbox._run(lambda conn: conn.execute(f"PRAGMA synchronous={synchronous}"))
    times = []
    for _ in range(count):
        event = Event(
            id=uuid4(), occurred=datetime.now(UTC), event="bench.outbox", resource={"prefect.resource.id": "b"}
        )
        started = time.perf_counter()
        await outbox.put(event)
        times.append(time.perf_counter() - started)
    outbox.close()
    return times


async def _deliveries(folder: Path, count: int) -> list[float]:
    outbox = Outbox(folder / "deliveries.sqlite3").open()
    api = PrefectEventsApi("http://127.0.0.1:9/api")  # never called: the forwarder does not run here
    app = create_app(
        ReceiverConfig(secrets={"7": SECRET}, burst=count + 1), DurableEmitter(outbox, Forwarder(outbox, api))
    )
    times = []
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://r") as http:
        for n in range(count):
            body = encode_body(
                delivery_payload("job.run.completed", account_id=7, run_id=1000 + n, job_id=1, run_status_code=10)
            )
            headers = {"Authorization": sign(body, SECRET), "Content-Type": "application/json"}
            started = time.perf_counter()
            answer = await http.post(DEFAULT_PATH, content=body, headers=headers)
            times.append(time.perf_counter() - started)
            assert answer.status_code == 200, answer.text
    await api.aclose()
    outbox.close()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--writes", type=int, default=500)
    parser.add_argument("--deliveries", type=int, default=200)
    parser.add_argument("--dir", type=Path, default=None, help="the folder to write in (default: a temporary one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        folder = Path(tmp)
        print(f"outbox in {folder} (SQLite {sqlite3.sqlite_version}, WAL)")
        for synchronous in ("FULL", "NORMAL"):
            print(
                _figures(
                    f"Outbox.put, synchronous={synchronous}", asyncio.run(_writes(folder, synchronous, args.writes))
                )
            )
        print(_figures("signed delivery -> 200 (FULL)", asyncio.run(_deliveries(folder, args.deliveries))))


if __name__ == "__main__":
    main()
