"""``python -m dbt_cloud_gate.stack``: the project deployed on this machine, as in production, with no account anywhere.

It starts a Prefect server (UI included; its database in STATE_DIR/prefect), the dbt Cloud emulator (on http, and
on https with a certificate made on the first start in STATE_DIR/tls, for clients that speak only https), a
fakesnow server (data in STATE_DIR/fakesnow), saves the blocks and the variables prefect.yaml reads, adds a
few rows to the source tables, creates the process work pool, runs ``prefect deploy --all``, starts the dbt
Cloud webhook receiver (with an emulator subscription pointed at it, its secret in a Secret block) and a
worker. Ctrl-C (or SIGTERM, SIGHUP) stops everything it started; after a SIGKILL of the stack its guardian does
(:mod:`.guardian`). Each step is idempotent: a second start reuses the
server's database and fakesnow's data, overwrites the blocks and variables, keeps the pool, updates the
deployments and replaces the (fresh emulator's) subscription's secret in the block.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL, temporary_settings

from dbt_cloud_gate.blocks.dbt_cloud import DbtCloudCredentials
from dbt_cloud_gate.dbtcloud_api.emulator import EmulatorServer, demo_emulator
from dbt_cloud_gate.dbtcloud_api.emulator.jobs import DEMO_ACCOUNT_ID, DEMO_TOKEN
from dbt_cloud_gate.stack.embedded import DEMO_TARGETS
from dbt_cloud_gate.stack.guardian import Guardian
from dbt_cloud_gate.stack.services import (
    WORK_POOL,
    PrefectServer,
    ProcessId,
    WebhookReceiver,
    Worker,
    become_subreaper,
    dbt_cloud_emulator,
    deploy_all,
    descendants,
    ensure_emulator_webhook,
    ensure_work_pool,
    fakesnow_connector,
    fakesnow_server,
    log_tail,
    port_is_free,
    save_blocks,
    seed_demo_tables,
    set_variables,
    stop_orphans,
    stop_processes,
)
from dbt_cloud_gate.stack.tls import LocalTls, local_tls
from dbt_cloud_gate.tasks.webhooks import DEFAULT_SECRET_BLOCK

CREDENTIALS_BLOCK = "local-dbt-cloud"
SNOWFLAKE_BLOCK = "local-snowflake"
# The Prefect variable holding the load targets of prefect.yaml's ETL and reconcile deployments.
TARGETS_VARIABLE = "nightly_etl_targets"
DEMO_JOB_ID = 101  # the emulator's demo job that succeeds
# Every deployment of prefect.yaml, as "flow name/deployment name".
DEPLOYMENTS = ("dbt-cloud-etl/nightly-etl", "dbt-cloud-job/dbt-cloud-job", "dbt-cloud-reconcile/weekly-reconcile")


# A child (server, worker, receiver) that exits is restarted, unless it exited more often than this within a minute.
RESTARTS_PER_MINUTE = 3
# Ctrl-C, a kill, and the terminal closing: each stops every service and process the stack started.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _stop_on_signal(signum: int, frame: FrameType | None) -> None:
    """A stop signal: unwind (which stops every service); a second signal cannot cut the shutdown short."""
    for stop in STOP_SIGNALS:
        signal.signal(stop, signal.SIG_IGN)
    raise KeyboardInterrupt


def ports_in_use(args: argparse.Namespace) -> list[str]:
    """The ports asked for on the command line that something already listens on, each with its flag."""
    flags = {
        "--port": args.port,
        "--emulator-port": args.emulator_port,
        "--emulator-https-port": args.emulator_https_port,
        "--snowflake-port": args.snowflake_port,
        "--receiver-port": args.receiver_port,
    }
    return [f"{flag} {port}" for flag, port in flags.items() if port and not port_is_free(port)]


def _say(message: str) -> None:
    print(message, flush=True)


def _deployment_ids(api_url: str) -> dict[str, str]:
    with temporary_settings({PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        return {name: str(client.read_deployment_by_name(name).id) for name in DEPLOYMENTS}


def _instructions(state: Path, server: PrefectServer, info: dict[str, Any]) -> str:
    etl = info["deployments"]["dbt-cloud-etl/nightly-etl"]
    https, ca = info["emulator_https_url"], info["emulator_ca_file"]
    host = https.removeprefix("https://")
    return f"""
Local stack ready (state in {state}). Ctrl-C stops everything.
  Prefect UI          {server.url}
  dbt Cloud emulator  {info["emulator_url"]} and {https}  (account {DEMO_ACCOUNT_ID}, token {DEMO_TOKEN}; job 101 succeeds, 102 fails)
  its https CA        {ca}  (give it to https clients: REQUESTS_CA_BUNDLE, SSL_CERT_FILE, curl --cacert)
  fakesnow            127.0.0.1:{info["snowflake"]["port"]}  (data in {state / "fakesnow"})
  blocks              {CREDENTIALS_BLOCK} (dbt Cloud Gate Credentials), {SNOWFLAKE_BLOCK} (Snowflake Connector)
  webhook receiver    {info["receiver_url"]}  (subscription {info["webhook_subscription"]}, secret in block {DEFAULT_SECRET_BLOCK})
  worker              pool {WORK_POOL}, log {info["worker_log"]}

Try it:
  1. Open {server.url}/deployments/deployment/{etl} (the nightly-etl deployment).
  2. Click Run, then Quick run (Custom run shows every parameter described; job_id 102 fails in dbt).
  3. On the flow run's page: its logs, then the Artifacts tab (dbt run link, run summary, model table).
  From a shell: PREFECT_API_URL={server.api_url} prefect deployment run dbt-cloud-etl/nightly-etl
  A wait ended by the webhook (the run's logs say "the poll after a wake-up saw it end"):
    PREFECT_API_URL={server.api_url} prefect deployment run dbt-cloud-job/dbt-cloud-job --param 'wait={{"webhooks": true}}'
  Your own dbt Cloud tools, pointed at the emulator:
    DBT_CLOUD_HOST={host} DBT_CLOUD_ACCOUNT_ID={DEMO_ACCOUNT_ID} DBT_CLOUD_API_TOKEN={DEMO_TOKEN} REQUESTS_CA_BUNDLE={ca} dbt-cloud job list
    curl --cacert {ca} -H "Authorization: Token {DEMO_TOKEN}" {https}/api/v2/accounts/{DEMO_ACCOUNT_ID}/jobs/
"""


def main(argv: list[str] | None = None) -> int:
    """Start the stack and serve until Ctrl-C, SIGTERM or SIGHUP; returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m dbt_cloud_gate.stack", description=__doc__)
    parser.add_argument("--state-dir", default=".stack", help="where the server's database, data and logs live")
    parser.add_argument("--port", type=int, default=4200, help="the Prefect server's port (0 picks a free one)")
    parser.add_argument("--emulator-port", type=int, default=0, help="the dbt Cloud emulator's port (0: a free one)")
    parser.add_argument(
        "--emulator-https-port", type=int, default=0, help="the dbt Cloud emulator's https port (0: a free one)"
    )
    parser.add_argument("--snowflake-port", type=int, default=0, help="the fakesnow server's port (0: a free one)")
    parser.add_argument("--receiver-port", type=int, default=0, help="the webhook receiver's port (0: a free one)")
    args = parser.parse_args(argv)
    state = Path(args.state_dir).resolve()
    state.mkdir(parents=True, exist_ok=True)
    with (state / "stack.lock").open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            _say(f"A stack already runs from {state} (see {state / 'stack.json'}); stop it first.")
            return 1
        busy = ports_in_use(args)
        if busy:
            _say(
                f"Port(s) in use on 127.0.0.1: {', '.join(busy)}. Stop what listens there, or pass another port "
                "with that flag (0 picks a free one). Nothing was started."
            )
            return 1
        for stop in STOP_SIGNALS:
            signal.signal(stop, _stop_on_signal)
        become_subreaper()  # a dead worker's flow runs stay below the stack, to be stopped with it
        guardian = Guardian(state, lock.fileno()).start()  # should the stack itself be killed, it stops them
        try:
            return _run(state, args)
        except KeyboardInterrupt:
            _say("Stopped: the worker, the webhook receiver, the Prefect server, the emulator and fakesnow.")
            return 0
        except RuntimeError as exc:  # a service did not start, or a deploy step failed: its own message says why
            _say(f"The stack stopped: {exc}")
            return 1
        finally:
            stop_orphans(keep=guardian.process)  # a kill meanwhile leaves the rest to the guardian
            (state / "stack.json").unlink(missing_ok=True)
            guardian.stop()


def _emulators(
    services: contextlib.ExitStack, state: Path, args: argparse.Namespace
) -> tuple[EmulatorServer, EmulatorServer, LocalTls]:
    """One emulator served on http and on https (the certificate made on the first start, kept in STATE/tls)."""
    tls = local_tls(state / "tls")
    if tls.created:
        _say(f"Made the https certificate of the emulator and its authority ({tls.ca_file}).")
    # Run IDs from the clock, so that the audit rows of successive starts name distinct dbt runs.
    emulator = demo_emulator(first_run_id=int(time.time()) % 100_000_000 * 10)
    plain = services.enter_context(dbt_cloud_emulator(emulator, args.emulator_port))
    secure = services.enter_context(dbt_cloud_emulator(emulator, args.emulator_https_port, tls.server_context()))
    return plain, secure, tls


def _run(state: Path, args: argparse.Namespace) -> int:
    with contextlib.ExitStack() as services:
        server = PrefectServer(state / "prefect", port=args.port)
        _say(f"Starting the Prefect server on {server.url} (a first start creates its database: 20-30 s)...")
        services.enter_context(server)
        emulator, emulator_https, tls = _emulators(services, state, args)
        snow = services.enter_context(fakesnow_server(db_path=str(state / "fakesnow"), port=args.snowflake_port))
        connector = fakesnow_connector(snow)
        seed_demo_tables(connector)
        credentials = DbtCloudCredentials(account_id=DEMO_ACCOUNT_ID, api_token=DEMO_TOKEN, access_url=emulator.url)
        _say("Saving blocks and variables, creating the work pool, deploying (prefect deploy --all)...")
        save_blocks(server.api_url, credentials, CREDENTIALS_BLOCK, connector, SNOWFLAKE_BLOCK)
        set_variables(
            server.api_url,
            {
                "dbt_cloud_job_id": DEMO_JOB_ID,
                "dbt_cloud_credentials_block": CREDENTIALS_BLOCK,
                "snowflake_connector_block": SNOWFLAKE_BLOCK,
                # The targets prefect.yaml's ETL and reconcile deployments read at each run: the seeded tables.
                TARGETS_VARIABLE: [target.model_dump(mode="json", exclude_defaults=True) for target in DEMO_TARGETS],
            },
        )
        ensure_work_pool(server.api_url)
        deploy_all(server.env)
        # The subscription first: the receiver starts only once the block holds a secret.
        receiver = WebhookReceiver(server.env, state / "receiver.log", DEFAULT_SECRET_BLOCK, port=args.receiver_port)
        _say(f"Starting the webhook receiver on {receiver.url} (the emulator delivers every job's run events)...")
        subscription = ensure_emulator_webhook(server.api_url, credentials, receiver.url, DEFAULT_SECRET_BLOCK)
        services.enter_context(receiver)
        worker = services.enter_context(Worker(server.env, state / "worker.log"))
        info: dict[str, Any] = {
            "pid": os.getpid(),
            "ui_url": server.url,
            "api_url": server.api_url,
            "emulator_url": emulator.url,
            "emulator_https_url": emulator_https.url,
            "emulator_ca_file": str(tls.ca_file),
            "snowflake": snow,
            "receiver_url": receiver.url,
            "receiver_health_url": receiver.health_url,
            "webhook_subscription": subscription.subscription_id,
            "receiver_log": str(receiver.log_path),
            "deployments": _deployment_ids(server.api_url),
            "worker_log": str(worker.log_path),
            "server_log": str(server.log_path),
        }
        # For scripts and tests: where everything is; removed when the stack stops.
        (state / "stack.json").write_text(json.dumps(info, indent=2))
        _say(_instructions(state, server, info))
        return _supervise({"Prefect server": server, "worker": worker, "webhook receiver": receiver})


def _supervise(children: dict[str, PrefectServer | Worker | WebhookReceiver]) -> int:
    """Until a stop signal: restart a child that exits (the emulator and fakesnow live in this process and keep
    their state); a child that keeps exiting (RESTARTS_PER_MINUTE) ends the stack, its log's end shown.

    What a dead server or receiver leaves behind (``prefect server start`` serves from a uvicorn process of its own,
    which would keep the port) is stopped before the restart; a dead worker's flow runs go on (they talk to the
    server) and are stopped with the stack at the latest."""
    restarts: dict[str, list[float]] = {name: [] for name in children}

    def tree(child: PrefectServer | Worker | WebhookReceiver) -> set[ProcessId]:
        # Read once a child is up (a server's uvicorn process is there once it answers its health check).
        return set(descendants(child.process.pid)) if child.process is not None else set()

    trees = {name: tree(child) for name, child in children.items() if not isinstance(child, Worker)}
    while True:
        for name, child in children.items():
            process = child.process
            if process is not None and process.poll() is None:
                continue
            now = time.monotonic()
            recent = restarts[name] = [t for t in restarts[name] if now - t < 60] + [now]
            code = process.returncode if process is not None else None
            if len(recent) > RESTARTS_PER_MINUTE:
                _say(
                    f"The {name} exited {len(recent)} times within a minute; its log ends:\n{log_tail(child.log_path)}"
                )
                return 1
            _say(f"The {name} exited (code {code}); restarting it (its log: {child.log_path}).")
            if name in trees:
                stop_processes(trees[name])
            child.process = None
            try:
                child.start()
            except RuntimeError as exc:
                _say(f"The {name} did not start again: {exc}")
                return 1
            if name in trees:
                trees[name] = tree(child)
            _say(f"The {name} runs again.")
        time.sleep(0.5)


if __name__ == "__main__":
    sys.exit(main())
