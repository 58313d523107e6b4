"""The parts of the local stack, each started and stopped as a unit, and the steps that deploy the project on it.

Processes (the Prefect server, a worker) run in sessions of their own: a Ctrl-C in the terminal reaches only the
command that started them, which then stops them in order, each with every process it started
(:func:`stop_process_tree`). The dbt Cloud emulator and fakesnow run as threads of that command.
"""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Self, cast

import httpx
from prefect.blocks.system import Secret
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.exceptions import ObjectNotFound
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.variables import Variable
from prefect_snowflake import SnowflakeConnector

from dbt_cloud_gate.blocks.dbt_cloud import DbtCloudCredentials
from dbt_cloud_gate.dbtcloud_api.emulator import Emulator, EmulatorServer
from dbt_cloud_gate.receiver import DEFAULT_PATH
from dbt_cloud_gate.stack.embedded import fakesnow_connector, fakesnow_server, seed_demo_tables
from dbt_cloud_gate.stack.processes import (
    ProcessId,
    alive,
    become_subreaper,
    descendants,
    kill_process_tree,
    stop_orphans,
    stop_process_tree,
    stop_processes,
)
from dbt_cloud_gate.tasks.webhooks import WebhookReport, ensure_webhook

__all__ = [
    "ROOT",
    "WORK_POOL",
    "PrefectServer",
    "ProcessId",
    "WebhookReceiver",
    "Worker",
    "alive",
    "become_subreaper",
    "dbt_cloud_emulator",
    "deploy_all",
    "descendants",
    "ensure_emulator_webhook",
    "ensure_work_pool",
    "fakesnow_connector",
    "fakesnow_server",
    "free_port",
    "kill_process_tree",
    "log_tail",
    "port_is_free",
    "prefect_cli",
    "save_blocks",
    "seed_demo_tables",
    "set_variables",
    "stop_orphans",
    "stop_process_tree",
    "stop_processes",
]

# The checkout whose prefect.yaml the stack deploys (this package inside it), else the working directory.
ROOT = next((p for p in Path(__file__).resolve().parents if (p / "prefect.yaml").is_file()), Path.cwd())
# The work pool every deployment of prefect.yaml names.
WORK_POOL = "dbt-cloud-gate"
HEALTH_TIMEOUT_SECONDS = 180.0  # a first start migrates a new database (20-30 s on 2 cores)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 at the time of the call."""
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server can listen on ``port`` of ``host`` now. With SO_REUSEADDR, as every server here binds: the
    connections a stopped server leaves in TIME_WAIT for a minute do not count, a listening socket does."""
    with contextlib.closing(socket.socket()) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def _start(args: list[str], env: Mapping[str, str], log: Path, cwd: Path = ROOT) -> subprocess.Popen[bytes]:
    """Start a command in a session of its own (a terminal's Ctrl-C does not reach it), output to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as sink:
        return subprocess.Popen(
            args,
            env=dict(env),
            cwd=cwd,
            stdout=sink,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def log_tail(path: Path, size: int = 4000) -> str:
    """The end of a log file ('' when there is none)."""
    try:
        return path.read_text(errors="replace")[-size:]
    except OSError:
        return ""


def wait_healthy(process: subprocess.Popen[Any], url: str, log: Path, name: str, timeout: float) -> None:
    """Wait until ``url`` answers 200; RuntimeError with the end of ``log`` if ``process`` exits or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{name} did not start; its log ends:\n{log_tail(log)}")
        time.sleep(0.3)


class _Service:
    """A process of the stack: ``start`` runs it, ``stop`` ends it with every process it started; a context manager
    that starts on entry and stops on exit."""

    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> Self:
        """Start the process (ready to use when this returns)."""
        raise NotImplementedError

    def stop(self) -> None:
        """Stop the process and every process it started."""
        if self.process is not None:
            stop_process_tree(self.process)
            self.process = None

    def _start_healthy(self, args: list[str], env: Mapping[str, str], url: str, name: str, timeout: float) -> None:
        """Start ``args`` and wait until ``url`` answers; stop what was started if the wait fails (a Ctrl-C too)."""
        self.process = _start(args, env, self.log_path)
        try:
            wait_healthy(self.process, url, self.log_path, name, timeout)
        except BaseException:
            self.stop()
            raise

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class PrefectServer(_Service):
    """``prefect server start`` on 127.0.0.1 with its own PREFECT_HOME (its database lives there).

    ``env`` is the environment for everything that talks to it (the CLI, a worker): PREFECT_HOME and
    PREFECT_API_URL set, telemetry off."""

    def __init__(self, home: Path, port: int = 0, ui: bool = True, extra_env: Mapping[str, str] | None = None) -> None:
        self.home = home.resolve()
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api_url = f"{self.url}/api"
        self.log_path = self.home / "server.log"
        env = {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_")}
        env.update(
            PREFECT_HOME=str(self.home),
            PREFECT_API_URL=self.api_url,
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            PREFECT_UI_ENABLED="true" if ui else "false",
            PREFECT_SERVER_API_HOST="127.0.0.1",
            PREFECT_SERVER_API_PORT=str(self.port),
        )
        env.update(extra_env or {})
        self.env = env

    def start(self, timeout: float = HEALTH_TIMEOUT_SECONDS) -> Self:
        """Start the server and wait until its health endpoint answers."""
        if not port_is_free(self.port):
            raise RuntimeError(f"port {self.port} on 127.0.0.1 is in use: choose another (--port)")
        self.home.mkdir(parents=True, exist_ok=True)
        args = ["--host", "127.0.0.1", "--port", str(self.port)]
        self._start_healthy(
            [sys.executable, "-m", "prefect", "server", "start", *args],
            self.env,
            f"{self.api_url}/health",
            "the Prefect server",
            timeout,
        )
        return self


class Worker(_Service):
    """``prefect worker start --pool WORK_POOL``: polls the server, runs each flow run in a process of its own.

    ``project_home`` is the checkout the flow runs import the project from (the deployments' pull step reads
    it from DBT_CLOUD_GATE_HOME in the worker's environment)."""

    def __init__(
        self,
        env: Mapping[str, str],
        log_path: Path,
        pool: str = WORK_POOL,
        project_home: Path = ROOT,
        query_seconds: float = 2,
    ) -> None:
        self.env = {
            **env,
            "DBT_CLOUD_GATE_HOME": str(project_home),
            "PREFECT_WORKER_QUERY_SECONDS": str(query_seconds),
        }
        self.log_path = log_path
        self.pool = pool

    def start(self) -> Self:
        """Start the worker (it registers with the server on its first poll)."""
        self.process = _start(
            [sys.executable, "-m", "prefect", "worker", "start", "--pool", self.pool], self.env, self.log_path
        )
        return self

    def stop(self, crash: bool = False) -> None:
        """Stop the worker and its flow run processes; ``crash`` kills them all at once instead."""
        if crash and self.process is not None:
            kill_process_tree(self.process)
            self.process = None
        super().stop()

    def log(self, size: int = 12000) -> str:
        """The end of the worker's log (flow run logs included)."""
        return log_tail(self.log_path, size)


class WebhookReceiver(_Service):
    """``python -m dbt_cloud_gate.receiver serve`` on 127.0.0.1: verifies dbt Cloud's deliveries with the secrets
    of the ``Secret`` block ``secret_block`` (or of ``env``'s ``DBT_CLOUD_WEBHOOK_SECRET(S)``) and posts them as
    events to the server of ``env``'s PREFECT_API_URL; ``extra_args`` go to ``serve`` as they are.

    ``url`` is what a webhook subscription points at. Start it after the block holds a secret (the receiver
    refuses to start without one); it reloads the block when a signature matches none of the secrets it has.
    Its durable outbox is ``outbox``, by default beside the log (the stack's state folder)."""

    def __init__(
        self,
        env: Mapping[str, str],
        log_path: Path,
        secret_block: str | None,
        port: int = 0,
        outbox: Path | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.env = dict(env)
        self.log_path = log_path
        self.secret_block = secret_block
        self.outbox = outbox or log_path.parent / "receiver-outbox.sqlite3"
        self.extra_args = list(extra_args)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}{DEFAULT_PATH}"
        self.health_url = f"http://127.0.0.1:{self.port}/healthz"

    def start(self, timeout: float = 60.0) -> Self:
        """Start the receiver and wait until its health endpoint answers."""
        if not port_is_free(self.port):
            raise RuntimeError(f"port {self.port} on 127.0.0.1 is in use: choose another for the webhook receiver")
        args = ["--host", "127.0.0.1", "--port", str(self.port), "--outbox", str(self.outbox), *self.extra_args]
        if self.secret_block is not None:
            args += ["--secret-block", self.secret_block]
        self._start_healthy(
            [sys.executable, "-m", "dbt_cloud_gate.receiver", "serve", *args],
            self.env,
            self.health_url,
            "the webhook receiver",
            timeout,
        )
        return self


def ensure_emulator_webhook(
    api_url: str, credentials: DbtCloudCredentials, receiver_url: str, secret_block: str
) -> WebhookReport:
    """A subscription of every job's run events pointed at ``receiver_url``, its secret in ``secret_block``.

    The emulator keeps no state between starts: secrets of subscriptions it no longer has are dropped from the
    block first, so that a restarted stack's block holds only the live one."""
    with temporary_settings({PREFECT_API_URL: api_url}), credentials.get_client() as client:
        live = {subscription.id for subscription in client.list_webhook_subscriptions()}
        with contextlib.suppress(ValueError):  # ValueError: no such block yet
            kept = cast(Secret, Secret.load(secret_block, _sync=True)).get()  # type: ignore[call-arg]
            if isinstance(kept, dict) and set(kept) - live:
                pruned = {key: value for key, value in kept.items() if key in live}
                Secret(value=pruned).save(secret_block, overwrite=True, _sync=True)  # type: ignore[call-arg]
        return ensure_webhook(client, receiver_url, secret_block=secret_block)


def dbt_cloud_emulator(emulator: Emulator, port: int = 0, ssl_context: ssl.SSLContext | None = None) -> EmulatorServer:
    """The emulator on 127.0.0.1 (``port=0`` picks a free one), on https with ``ssl_context``; a context manager."""
    return EmulatorServer(emulator, port=port, ssl_context=ssl_context)


def prefect_cli(env: Mapping[str, str], *args: str, timeout: float = 300) -> str:
    """Run ``prefect ARGS`` from the repository root, non-interactive; its output, or RuntimeError with it."""
    done = subprocess.run(
        [sys.executable, "-m", "prefect", *args],
        env=dict(env),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    if done.returncode != 0:
        raise RuntimeError(f"prefect {' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done.stdout


def save_blocks(
    api_url: str,
    credentials: DbtCloudCredentials,
    credentials_block: str,
    connector: SnowflakeConnector,
    connector_block: str,
) -> None:
    """Save (or overwrite) the dbt Cloud credentials block and the Snowflake connector block on the server."""
    with temporary_settings({PREFECT_API_URL: api_url}):
        credentials.save(credentials_block, overwrite=True)
        connector.save(connector_block, overwrite=True)


def set_variables(api_url: str, values: Mapping[str, Any]) -> None:
    """Set (or overwrite) the Prefect variables that prefect.yaml reads (a job ID as a number, as
    ``prefect variable set`` stores it: the deployment's parameter schema wants an integer; targets as a JSON list)."""
    with temporary_settings({PREFECT_API_URL: api_url}):
        for name, value in values.items():
            Variable.set(name, value, overwrite=True)


def ensure_work_pool(api_url: str, name: str = WORK_POOL) -> bool:
    """Create the process work pool unless it exists; True when it was created."""
    with temporary_settings({PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        try:
            client.read_work_pool(name)
        except ObjectNotFound:
            client.create_work_pool(WorkPoolCreate(name=name, type="process"))
            return True
        return False


def deploy_all(env: Mapping[str, str]) -> str:
    """``prefect deploy --all`` from the repository root (creates or updates every deployment of prefect.yaml)."""
    return prefect_cli(env, "--no-prompt", "deploy", "--all")
