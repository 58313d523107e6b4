"""Shared fixtures: the emulator on loopback HTTP, fast-retry clients, the OpenAPI validator; and the order of the run.

The suite runs on pytest-xdist (``-n auto --dist loadfile`` in pyproject.toml): four worker processes, each with its
own PREFECT_HOME and test harness, a test file on one worker. Most of the time of the slow files is spent waiting
(servers starting, runs running), so four workers on two cores overlap it. The slow files go first: started last,
the longest of them would finish alone. A run of a single file stays in this process (``-n auto`` is 0 then).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# Before Prefect is imported anywhere: a private PREFECT_HOME (results, local storage) and no telemetry.
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="dcg-prefect-home-")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
for _name in ("DBT_CLOUD_ACCOUNT_ID", "DBT_CLOUD_API_TOKEN", "DBT_CLOUD_ACCESS_URL", "DBT_CLOUD_CREDENTIALS_BLOCK"):
    os.environ.pop(_name, None)

import httpx  # noqa: E402
import pytest  # noqa: E402

from dbt_cloud_gate.dbtcloud_api import DbtCloudClient, RetryPolicy  # noqa: E402
from dbt_cloud_gate.dbtcloud_api.emulator import Emulator, EmulatorServer, JobSpec  # noqa: E402
from dbt_cloud_gate.dbtcloud_api.openapi import SpecValidator, default_spec_path, load_default_validator  # noqa: E402
from dbt_cloud_gate.receiver import DEFAULT_PATH  # noqa: E402
from dbt_cloud_gate.receiver_guard import ConnectionLimits, guarded_config  # noqa: E402
from dbt_cloud_gate.stack.embedded import AlertSink  # noqa: E402
from dbt_cloud_gate.stack.services import free_port  # noqa: E402

XDIST_WORKERS = 4


@pytest.hookimpl(optionalhook=True)  # a run with -p no:xdist has no such hook
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    """``-n auto``: XDIST_WORKERS, or none for a run of one test file (a quick check starts no worker processes);
    PYTEST_XDIST_AUTO_NUM_WORKERS, when set, decides (pytest-xdist's own rule)."""
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return None
    files = {str(arg).split("::")[0] for arg in config.args}
    return 0 if len(files) == 1 and next(iter(files)).endswith(".py") else XDIST_WORKERS


# The longest files (1.5-2 min each under load), started first, one per worker: any of them started last would
# finish alone, long after the rest.
LONGEST_FILES = (
    "tests/test_stack.py",
    "tests/test_e2e_deploy.py",
    "tests/test_stack_crash.py",
    "tests/test_browser.py",
    "tests/test_demo.py",
)


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's scheduler reads the order
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The longest files first, then the other files with slow tests, then the rest (each file's tests keep their
    order; ``--no-loadscope-reorder`` keeps this order of files)."""
    slow_files = {item.nodeid.split("::")[0] for item in items if item.get_closest_marker("slow")}

    def rank(item: pytest.Item) -> tuple[int, int]:
        path = item.nodeid.split("::")[0]
        if path in LONGEST_FILES:
            return (0, LONGEST_FILES.index(path))
        return (1 if path in slow_files else 2, 0)

    items.sort(key=rank)


TOKEN = "tok_sEcReT_0123456789abcdef"
ACCOUNT = 4242
FAST_RETRY = RetryPolicy(
    max_attempts=5,
    max_elapsed_seconds=10,
    backoff_initial_seconds=0.01,
    backoff_max_seconds=0.05,
    not_found_grace_seconds=2.0,
)
FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "dbt-cloud" / "fixtures"


def fast_jobs() -> list[JobSpec]:
    """Jobs whose runs finish in well under a second."""
    return [
        JobSpec(
            id=11, name="ok", queue_seconds=0.05, start_seconds=0.05, run_seconds=0.3, models=["stg_orders", "orders"]
        ),
        JobSpec(
            id=12,
            name="fails",
            queue_seconds=0.05,
            start_seconds=0.05,
            run_seconds=0.3,
            outcome="error",
            models=["stg_orders", "orders", "customers"],
            failing_model="orders",
        ),
        JobSpec(
            id=13, name="scheduled", schedule_enabled=True, queue_seconds=0.05, start_seconds=0.05, run_seconds=0.3
        ),
        JobSpec(id=14, name="slow", queue_seconds=0.05, start_seconds=0.05, run_seconds=30.0),
    ]


@contextmanager
def serving(jobs: list[JobSpec], validator: SpecValidator) -> Iterator[EmulatorServer]:
    """``jobs`` on an emulator on loopback HTTP that checks requests against the spec; on leaving, every request
    must have followed it (no departure recorded)."""
    with EmulatorServer(Emulator(jobs, account_id=ACCOUNT, token=TOKEN, validator=validator)) as running:
        yield running
    assert [r.spec_problems for r in running.emulator.requests if r.spec_problems] == []


def api(server: EmulatorServer) -> httpx.Client:
    """A plain HTTP client of the account's v2 API on ``server`` (paths relative to ``/api/v2/accounts/{id}/``)."""
    base = f"{server.url}/api/v2/accounts/{ACCOUNT}/"
    return httpx.Client(base_url=base, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)


def data(answer: httpx.Response) -> Any:
    """The ``data`` of a 200 answer in dbt Cloud's envelope."""
    assert answer.status_code == 200, answer.text
    return answer.json()["data"]


@pytest.fixture
def http(server: EmulatorServer) -> Iterator[httpx.Client]:
    """:func:`api` on the module's own ``server`` fixture."""
    with api(server) as client:
        yield client


@pytest.fixture(scope="session")
def spec_validator() -> SpecValidator:
    validator = load_default_validator()
    if validator is None:
        pytest.fail(
            f"The dbt Cloud OpenAPI spec was not found (looked for {default_spec_path()}): "
            "set DBT_CLOUD_OPENAPI_SPEC or keep ../shared/dbt-cloud beside the checkout."
        )
    return validator


@pytest.fixture
def emulator(spec_validator: SpecValidator) -> Iterator[EmulatorServer]:
    server = EmulatorServer(Emulator(fast_jobs(), account_id=ACCOUNT, token=TOKEN, validator=spec_validator))
    with server:
        yield server
    problems = [(r.method, r.path, r.spec_problems) for r in server.emulator.requests if r.spec_problems]
    # Every request a test sent through the client must match the real API's spec.
    assert not [p for p in problems if not getattr(server, "allow_invalid", False)], problems


@pytest.fixture
def client(emulator: EmulatorServer) -> Iterator[DbtCloudClient]:
    with DbtCloudClient(ACCOUNT, TOKEN, emulator.url, retry=FAST_RETRY, seed=1) as c:
        yield c


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """One Prefect test server for the whole session (on a copy of a migrated database: tests/prefect_db.py), flow
    heartbeats off (each would cost ~1 s)."""
    from prefect.settings import PREFECT_API_SSL_CERT_FILE, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    from tests.prefect_compat import flow_heartbeats_off
    from tests.prefect_db import seeded_harness

    # Every Prefect client loads its CA bundle into a new TLS context (20 ms of CPU each, a quarter of a test
    # process's CPU), though the harness serves plain HTTP on loopback and no certificate is ever checked: a bundle
    # of one certificate loads in 0.4 ms. In this process only (subprocesses keep their environment's bundle).
    one_certificate = Path(tempfile.mkdtemp(prefix="dcg-ca-")) / "one.pem"
    one_certificate.write_text(_first_certificate())
    with contextlib.ExitStack() as stack:
        stack.enter_context(seeded_harness())
        with _services_off_while_starting():
            stack.enter_context(prefect_test_harness(server_startup_timeout=180))
        stack.enter_context(flow_heartbeats_off())
        stack.enter_context(temporary_settings({PREFECT_API_SSL_CERT_FILE: str(one_certificate)}))
        yield


# Services of the harness's server that no test in this process uses (automations' triggers, schedules, late runs,
# pause expiry, workers' health, lease expiry): each polls the database every few seconds, together about 0.03 of a
# core per harness server, idle or not, for the whole session. The servers of the stack and e2e tests keep them.
HARNESS_SERVICES_OFF = ("TRIGGERS", "SCHEDULER", "LATE_RUNS", "PAUSE_EXPIRATIONS", "FOREMAN", "REPOSSESSOR")


@contextmanager
def _services_off_while_starting() -> Iterator[None]:
    """HARNESS_SERVICES_OFF off in the environment while the harness starts its server (a subprocess that takes
    this environment), restored as soon as it runs: the processes tests start later keep their own settings."""
    names = [f"PREFECT_SERVER_SERVICES_{service}_ENABLED" for service in HARNESS_SERVICES_OFF]
    kept = {name: os.environ.get(name) for name in names}
    os.environ.update(dict.fromkeys(names, "false"))
    try:
        yield
    finally:
        for name, value in kept.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _first_certificate() -> str:
    """The first certificate of certifi's bundle, in PEM."""
    import certifi

    bundle = Path(certifi.where()).read_text()
    end = "-----END CERTIFICATE-----"
    return bundle[bundle.index("-----BEGIN CERTIFICATE-----") : bundle.index(end) + len(end)] + "\n"


@pytest.fixture
def webhook() -> Iterator[AlertSink]:
    receiver = AlertSink()
    yield receiver
    receiver.close()


class Served:
    """A receiver app on a loopback port, in a thread, with the command line's uvicorn settings and ``limits``."""

    def __init__(self, app: Any, limits: ConnectionLimits | None = None) -> None:
        import uvicorn

        self.port = free_port()
        config = guarded_config(
            app, host="127.0.0.1", port=self.port, limits=limits or ConnectionLimits(), log_level="warning"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = f"http://127.0.0.1:{self.port}{DEFAULT_PATH}"

    def __enter__(self) -> Served:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "the receiver did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture
def snowflake(tmp_path: Path) -> Iterator[Any]:
    """A fakesnow server holding the demo's tables (``seed_demo_tables``), with 4 new source orders; its
    prefect-snowflake ``SnowflakeConnector``."""
    from dbt_cloud_gate.stack.embedded import fakesnow_connector, fakesnow_server, seed_demo_tables

    with fakesnow_server(db_path=str(tmp_path)) as settings:
        connector = fakesnow_connector(settings)
        seed_demo_tables(connector, new_rows=4)
        yield connector
