"""The embedded default: the local dbt Cloud emulator and a fakesnow Snowflake server, both on loopback.

Used by the quickstart and the end-to-end tests; nothing here is needed with a real dbt Cloud account and
Snowflake. fakesnow runs in server mode (not the in-process patch) so that other processes, such as a Prefect
worker, reach it too; with ``db_path`` its data is kept in a local folder between runs.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import socket
import threading
import time
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from prefect_snowflake import SnowflakeConnector, SnowflakeCredentials

from dbt_cloud_gate.dbtcloud_api.errors import local_extra_missing
from dbt_cloud_gate.loads import quote_table
from dbt_cloud_gate.models import LoadTarget

DEMO_DATABASE = "ANALYTICS"


def _demo_target(model: str, key: str) -> LoadTarget:
    """A quickstart target: what dbt built of ``model`` in DBT_PROD, upserted on ``key`` into its namesake in MARTS
    (the tables ``seed_demo_tables`` makes)."""
    table = model.upper()
    return LoadTarget(
        name=model,
        source_model=model,
        source_table=f"{DEMO_DATABASE}.DBT_PROD.{table}",
        target_table=f"{DEMO_DATABASE}.MARTS.{table}",
        key_columns=[key],
        watermark_column="UPDATED_AT",
    )


DEMO_TARGETS = [_demo_target("orders", "ORDER_ID"), _demo_target("customers", "CUSTOMER_ID")]


@contextlib.contextmanager
def fakesnow_server(db_path: str | None = None, port: int = 0) -> Iterator[dict[str, Any]]:
    """Serve fakesnow on 127.0.0.1 in a thread; yields the connection settings (host, port, protocol...)."""
    import uvicorn

    try:
        from fakesnow.instance import FakeSnow

        server_module = importlib.import_module("fakesnow.server")
    except ImportError as exc:
        needs = {"fakesnow": "fakesnow[server]", "pyarrow": "fakesnow[server]", "duckdb": "fakesnow[server]"}
        raise local_extra_missing(exc, "the local Snowflake stand-in (fakesnow's server)", needs) from exc
    # fakesnow sets its logger to INFO when imported and logs every session login (twice: its own handler and
    # Prefect's), and warns on every query result it turns into Arrow: noise on every console that uses it.
    logging.getLogger("fakesnow.server").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message="Arrow output on a DB-API result", category=UserWarning)
    if db_path:
        Path(db_path).mkdir(parents=True, exist_ok=True)
        # Every session of this server shares one instance whose databases live as files in db_path.
        server_module.shared_fs = FakeSnow(db_path=db_path)  # type: ignore[attr-defined]
    if not port:
        with contextlib.closing(socket.socket()) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
    server = uvicorn.Server(uvicorn.Config(server_module.app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="fakesnow", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the fakesnow server did not start")
        time.sleep(0.05)
    try:
        yield {
            "account": "fakesnow",
            "user": "fake",
            "password": "snow",
            "host": "127.0.0.1",
            "port": port,
            "protocol": "http",
        }
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def fakesnow_connector(
    settings: dict[str, Any], database: str = DEMO_DATABASE, schema: str = "PUBLIC"
) -> SnowflakeConnector:
    """A prefect-snowflake ``SnowflakeConnector`` for a fakesnow server (host, port and http from ``settings``)."""
    credentials = SnowflakeCredentials(**settings)
    return SnowflakeConnector(credentials=credentials, database=database, schema=schema, warehouse="DEMO_WH")


def seed_demo_tables(connector: SnowflakeConnector, new_rows: int = 3, now: datetime | None = None) -> None:
    """Create the demo's source (what dbt builds) and target tables, and add ``new_rows`` changed source rows.

    The emulator only pretends to run dbt, so this stands in for the tables a real dbt run would rebuild.
    """
    moment = (now or datetime.now(UTC)).astimezone(UTC).replace(tzinfo=None)
    with connector.get_connection() as connection:
        cursor = connection.cursor()
        cursor.execute(f"CREATE DATABASE IF NOT EXISTS {DEMO_DATABASE}")
        for schema in ("DBT_PROD", "MARTS"):
            cursor.execute(f"CREATE SCHEMA IF NOT EXISTS {DEMO_DATABASE}.{schema}")
        for table in ("DBT_PROD.ORDERS", "MARTS.ORDERS"):
            cursor.execute(
                f"CREATE TABLE IF NOT EXISTS {quote_table(f'{DEMO_DATABASE}.{table}')} "
                "(ORDER_ID NUMBER, CUSTOMER_ID NUMBER, AMOUNT NUMBER(12,2), UPDATED_AT TIMESTAMP_NTZ)"
            )
        for table in ("DBT_PROD.CUSTOMERS", "MARTS.CUSTOMERS"):
            cursor.execute(
                f"CREATE TABLE IF NOT EXISTS {quote_table(f'{DEMO_DATABASE}.{table}')} "
                "(CUSTOMER_ID NUMBER, NAME VARCHAR, UPDATED_AT TIMESTAMP_NTZ)"
            )
        cursor.execute(f"SELECT COALESCE(MAX(ORDER_ID), 0) FROM {DEMO_DATABASE}.DBT_PROD.ORDERS")
        start = int(cursor.fetchone()[0])
        for index in range(1, new_rows + 1):
            stamp = moment - timedelta(milliseconds=new_rows - index + 1)
            cursor.execute(
                f"INSERT INTO {DEMO_DATABASE}.DBT_PROD.ORDERS VALUES (%(id)s, %(customer)s, %(amount)s, %(at)s)",
                {"id": start + index, "customer": (start + index) % 5 + 1, "amount": 10 * (start + index), "at": stamp},
            )
            cursor.execute(
                f"INSERT INTO {DEMO_DATABASE}.DBT_PROD.CUSTOMERS VALUES (%(id)s, %(name)s, %(at)s)",
                {"id": (start + index) % 5 + 1, "name": f"customer {(start + index) % 5 + 1}", "at": stamp},
            )


class AlertSink:
    """A local HTTP endpoint that records every POST body: where alert blocks send in tests and the soak."""

    def __init__(self) -> None:
        received: list[dict[str, Any]] = []
        self.received = received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                try:
                    received.append(json.loads(raw))
                except ValueError:
                    received.append({"raw": raw.decode(errors="replace")})
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/hook"
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        """Stop serving."""
        self._server.shutdown()
        self._server.server_close()
