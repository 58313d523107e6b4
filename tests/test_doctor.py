"""``python -m dbt_cloud_gate doctor`` against real components: the session's Prefect test server (blocks, variables,
a work pool, a worker's heartbeat sent through the API), the dbt Cloud emulator over loopback HTTP, a fakesnow
server, and a webhook receiver on a loopback port. One test per mistake the doctor must find; nothing is ever
triggered on the emulator."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import prefect
import pytest
from prefect.blocks.system import Secret
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.events import Event
from prefect.exceptions import ObjectNotFound
from prefect.states import Pending
from prefect.variables import Variable
from prefect_snowflake import SnowflakeConnector

from dbt_cloud_gate.__main__ import main
from dbt_cloud_gate.automations import AUTOMATION_NAME, WATCH_TAG, install_crash_automation
from dbt_cloud_gate.blocks.dbt_cloud import DbtCloudCredentials
from dbt_cloud_gate.dbtcloud_api.emulator import EmulatorServer
from dbt_cloud_gate.deploy_steps import checkout_directory
from dbt_cloud_gate.doctor import CheckSpec, Doctor, DoctorOptions, Status, Verdict, render_text
from dbt_cloud_gate.doctor.core import ok, run_checks
from dbt_cloud_gate.doctor.crash_checks import HEARTBEATS_FROM
from dbt_cloud_gate.receiver import ReceiverConfig, create_app
from dbt_cloud_gate.stack.embedded import DEMO_TARGETS
from dbt_cloud_gate.stack.services import ROOT
from dbt_cloud_gate.tasks.webhooks import ensure_webhook
from tests.conftest import ACCOUNT, TOKEN, Served

pytestmark = pytest.mark.usefixtures("prefect_harness")

POOL = "dbt-cloud-gate"  # the pool prefect.yaml's deployments name
HEARTBEATS = tuple(int(part) for part in prefect.__version__.split(".")[:3] if part.isdigit()) >= HEARTBEATS_FROM
VARIABLES = ("dbt_cloud_job_id", "dbt_cloud_credentials_block", "snowflake_connector_block", "nightly_etl_targets")
ORDERS = DEMO_TARGETS[0]  # job 11 builds it
DEAD_RECEIVER = "http://127.0.0.1:9/dbt-cloud/webhooks"  # nothing listens on port 9


class Dropped:
    """A receiver's emitter that keeps nothing (no delivery is expected here)."""

    async def __call__(self, event: Event) -> None:
        return None


@dataclass
class Setup:
    """A correct setup on the test server, with the names of what was saved, and the doctor's last output."""

    emulator: EmulatorServer
    snowflake: SnowflakeConnector
    credentials: str
    connector: str
    secret_block: str
    args: list[str] = field(default_factory=list)

    def doctor(self, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str]:
        """Run the doctor in this process; its exit code and output. Asserts that nothing was triggered."""
        code = main(["doctor", "--prefect-yaml", str(ROOT / "prefect.yaml"), "--timeout", "10", *self.args, *extra])
        assert self.emulator.emulator.trigger_count == {}
        return code, capsys.readouterr().out

    def checks(self, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, dict[str, dict[str, str]]]:
        """The doctor's JSON output, by check name."""
        code, out = self.doctor(capsys, "--json", *extra)
        report = json.loads(out)
        assert report["exit_code"] == code and report["ok"] == (code == 0)
        return code, {check["name"]: check for check in report["checks"]}


async def _pool(heartbeat: bool) -> None:
    async with get_client() as client:
        try:
            await client.read_work_pool(POOL)
        except ObjectNotFound:
            await client.create_work_pool(WorkPoolCreate(name=POOL, type="process"))
        if heartbeat:
            await client.send_worker_heartbeat(POOL, "doctor-test-worker", heartbeat_interval_seconds=30)


async def _drop_pool() -> None:
    async with get_client() as client:
        try:
            await client.delete_work_pool(POOL)
        except ObjectNotFound:
            pass


def _set_variables(values: dict[str, Any]) -> None:
    for name, value in values.items():
        Variable.set(name, value, overwrite=True)


@pytest.fixture
def setup(emulator: EmulatorServer, snowflake: SnowflakeConnector, monkeypatch: pytest.MonkeyPatch) -> Iterator[Setup]:
    """Blocks, the variables prefect.yaml names, the work pool with a worker's heartbeat, DBT_CLOUD_GATE_HOME."""
    tag = uuid.uuid4().hex[:8]
    made = Setup(emulator, snowflake, f"doctor-dbt-{tag}", f"doctor-snow-{tag}", f"doctor-hooks-{tag}")
    DbtCloudCredentials(account_id=ACCOUNT, api_token=TOKEN, access_url=emulator.url).save(made.credentials)
    snowflake.save(made.connector)
    _set_variables(
        {
            "dbt_cloud_job_id": 11,
            "dbt_cloud_credentials_block": made.credentials,
            "snowflake_connector_block": made.connector,
            "nightly_etl_targets": [ORDERS.model_dump(mode="json", exclude_defaults=True)],
        }
    )
    asyncio.run(_pool(heartbeat=True))
    install_crash_automation()  # as `prefect deploy --all` does (its build step)
    monkeypatch.setenv("DBT_CLOUD_GATE_HOME", str(ROOT))
    made.args = ["--secret-block", made.secret_block]
    try:
        yield made
    finally:
        for name in VARIABLES:
            Variable.unset(name)
        asyncio.run(_drop_pool())


@pytest.fixture
def receiver() -> Iterator[Served]:
    """A webhook receiver answering /healthz on a loopback port."""
    with Served(create_app(ReceiverConfig(secrets={"placeholder": "x" * 32}), Dropped())) as served:
        yield served


def subscribe(setup: Setup, url: str) -> str:
    """A subscription of every job's run events pointed at ``url``, its secret in the setup's Secret block."""
    credentials = DbtCloudCredentials(account_id=ACCOUNT, api_token=TOKEN, access_url=setup.emulator.url)
    with credentials.get_client() as client:
        return ensure_webhook(client, url, secret_block=setup.secret_block).subscription_id


def text_lines(out: str) -> dict[str, str]:
    """The checklist's lines by check name: ``{name: status label}``."""
    found = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] in ("ok", "WARN", "FAIL", "skip"):
            found[parts[1]] = parts[0]
    return found


def test_a_correct_setup_passes(setup: Setup, receiver: Served, capsys: pytest.CaptureFixture[str]) -> None:
    subscribe(setup, receiver.url)
    code, checks = setup.checks(capsys)
    assert code == 0, checks
    status = {name: check["status"] for name, check in checks.items()}
    assert status == {
        "prefect-api": "ok",
        "prefect-yaml": "ok",
        "variables": "ok",
        "credentials-block": "ok",
        "snowflake-block": "ok",
        "alert-blocks": "skip",  # prefect.yaml's deployments name none
        "yaml-blocks": "skip",  # nor does any template of it
        "work-pool": "ok",
        "worker": "ok",
        "worker-environment": "ok",
        "crash-automation": "ok" if HEARTBEATS else "warn",  # no flow-run heartbeats before Prefect 3.6
        "dbt-cloud-job": "ok",
        "job-schedule": "ok",
        # The job has no successful run yet: whether it builds the model is checked only by the load.
        "load-targets": "warn",
        "webhook-subscription": "ok",
        "webhook-receiver": "ok",
    }
    assert "no successful run yet" in checks["load-targets"]["detail"]
    assert "doctor never triggers a run" in checks["dbt-cloud-job"]["detail"]
    assert "doctor-test-worker" in checks["worker"]["detail"]
    assert receiver.url.split("/dbt-cloud")[0] + "/healthz" in checks["webhook-receiver"]["detail"]
    # The text output: the same checks, one line each, the same statuses.
    code, out = setup.doctor(capsys)
    labels = {"ok": "ok", "warn": "WARN", "fail": "FAIL", "skip": "skip"}
    assert code == 0 and text_lines(out) == {name: labels[s] for name, s in status.items()}
    assert "nothing failed: 1 warning(s), 13 ok, 2 skipped." in out if HEARTBEATS else "2 warning(s), 12 ok" in out


def test_no_secret_is_printed(setup: Setup, receiver: Served, capsys: pytest.CaptureFixture[str]) -> None:
    subscription = subscribe(setup, receiver.url)
    hmac_secret = setup.emulator.emulator.webhooks.subscriptions[subscription].hmac_secret
    # And a block whose token dbt Cloud refuses: the refusal is reported, the token is not.
    wrong = "dbtc_wR0ng_t0ken_9876543210"
    DbtCloudCredentials(account_id=ACCOUNT, api_token=wrong, access_url=setup.emulator.url).save("doctor-wrong-token")
    for extra in ((), ("--credentials", "doctor-wrong-token")):
        for output in ("--json", None):
            _, out = setup.doctor(capsys, *extra, *([output] if output else []))
            for secret in (TOKEN, wrong, hmac_secret):
                assert secret not in out, (secret, out)


def test_a_variable_prefect_yaml_names_is_missing(setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    Variable.unset("dbt_cloud_job_id")
    code, checks = setup.checks(capsys)
    assert code == 1
    variables = checks["variables"]
    assert variables["status"] == "fail"
    assert "dbt_cloud_job_id not set (read by `prefect deploy --all`" in variables["detail"]
    assert "'' is not of type 'integer'" in variables["detail"]
    assert "`prefect variable set dbt_cloud_job_id 12345" in variables["fix"]
    assert checks["dbt-cloud-job"]["status"] == "skip"
    assert "the Prefect variable dbt_cloud_job_id" in checks["dbt-cloud-job"]["detail"]


def test_a_job_id_variable_holding_text(setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    Variable.set("dbt_cloud_job_id", "", overwrite=True)
    code, checks = setup.checks(capsys)
    assert code == 1 and checks["variables"]["status"] == "fail"
    assert "dbt_cloud_job_id holds '', not a positive whole number" in checks["variables"]["detail"]


def test_a_missing_block(setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    Variable.set("dbt_cloud_credentials_block", "doctor-no-such-block", overwrite=True)
    code, checks = setup.checks(capsys)
    assert code == 1
    block = checks["credentials-block"]
    assert block["status"] == "fail"
    assert block["detail"] == (
        "there is no dbt Cloud credentials block named 'doctor-no-such-block' (variable dbt_cloud_credentials_block)."
    )
    assert (
        "DbtCloudCredentials(account_id=..., api_token=..., access_url=...).save('doctor-no-such-block')"
        in (block["fix"])
    )
    for later in ("dbt-cloud-job", "job-schedule", "webhook-subscription"):
        assert checks[later]["status"] == "skip"
    assert checks["dbt-cloud-job"]["detail"] == "not checked: credentials-block failed."


def test_a_block_of_the_wrong_type(setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    Secret(value="not a connector").save("doctor-a-secret", overwrite=True)
    code, checks = setup.checks(capsys, "--snowflake", "doctor-a-secret")
    assert code == 1
    block = checks["snowflake-block"]
    assert block["status"] == "fail"
    assert "block 'doctor-a-secret' (--snowflake) is not a SnowflakeConnector block" in block["detail"]
    assert "secret/doctor-a-secret" in block["detail"]
    assert "SnowflakeConnector(credentials=SnowflakeCredentials(...)" in block["fix"]
    assert checks["load-targets"]["status"] == "skip"


def test_a_wrong_token(setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    DbtCloudCredentials(account_id=ACCOUNT, api_token="dbtc_not_the_token", access_url=setup.emulator.url).save(
        setup.credentials, overwrite=True
    )
    code, checks = setup.checks(capsys)
    assert code == 1
    job = checks["dbt-cloud-job"]
    assert job["status"] == "fail" and "refused the API token" in job["detail"] and "(401" in job["detail"]
    assert f"as api_token of block {setup.credentials!r}" in job["fix"]


def test_a_wrong_account(setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    DbtCloudCredentials(account_id=ACCOUNT + 1, api_token=TOKEN, access_url=setup.emulator.url).save(
        setup.credentials, overwrite=True
    )
    code, checks = setup.checks(capsys)
    assert code == 1
    job = checks["dbt-cloud-job"]
    assert job["status"] == "fail" and f"may not read account {ACCOUNT + 1} (403)" in job["detail"]
    assert "check account_id (and access_url)" in job["fix"]


def test_a_wrong_job(setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    Variable.set("dbt_cloud_job_id", 99, overwrite=True)
    code, checks = setup.checks(capsys)
    assert code == 1
    job = checks["dbt-cloud-job"]
    assert job["status"] == "fail"
    assert f"dbt Cloud job 99 (variable dbt_cloud_job_id) does not exist in account {ACCOUNT} (404)" in job["detail"]
    assert "prefect variable set dbt_cloud_job_id ID --overwrite" in job["fix"]
    assert checks["job-schedule"]["status"] == "skip"
    # In the text, the fix stands on the line under the failure.
    code, out = setup.doctor(capsys)
    lines = out.splitlines()
    [at] = [i for i, line in enumerate(lines) if line.startswith("FAIL  dbt-cloud-job")]
    assert code == 1 and lines[at + 1].strip() == f"fix: {job['fix']}"
    counts = "10 ok" if HEARTBEATS else "1 warning(s), 9 ok"
    assert out.rstrip().endswith(f"something failed: 1 failed, {counts}, 5 skipped.")
    assert "not checked: whether dbt Cloud job builds each source_model" in checks["load-targets"]["detail"]


def test_a_job_with_its_own_schedule_on(setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    code, checks = setup.checks(capsys, "--job-id", "13")  # the emulator's job 13 has its schedule on
    assert code == 1
    schedule = checks["job-schedule"]
    assert schedule["status"] == "fail"
    assert "dbt Cloud job 13 ('scheduled') has its own dbt Cloud schedule on" in schedule["detail"]
    assert "turn off 'Run on schedule'" in schedule["fix"] and "native_schedule" in schedule["fix"]


def test_a_load_target_with_a_wrong_column(setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    wrong = ORDERS.model_copy(update={"key_columns": ["ORDERID"]})
    Variable.set("nightly_etl_targets", [wrong.model_dump(mode="json", exclude_defaults=True)], overwrite=True)
    code, checks = setup.checks(capsys)
    assert code == 1
    targets = checks["load-targets"]
    assert targets["status"] == "fail"
    assert 'targets[0].key_columns[0]: column "ORDERID" is not in source table' in targets["detail"]
    assert "correct the name (did you mean 'ORDER_ID'?)" in targets["fix"]


def test_a_missing_targets_variable_is_named_once(setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    Variable.unset("nightly_etl_targets")
    code, checks = setup.checks(capsys)
    assert code == 1
    assert "nightly_etl_targets not set (read by each flow run" in checks["variables"]["detail"]
    assert checks["load-targets"]["status"] == "skip"


def test_no_worker_polls_the_pool(setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    asyncio.run(_drop_pool())
    asyncio.run(_pool(heartbeat=False))
    code, checks = setup.checks(capsys)
    assert code == 1
    worker = checks["worker"]
    assert worker["status"] == "fail"
    assert f"no worker has polled {POOL} (no worker ever polled it)" in worker["detail"]
    assert f"DBT_CLOUD_GATE_HOME=/path/to/dbt-cloud-gate prefect worker start --pool {POOL}" in worker["fix"]


def test_no_work_pool(setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    asyncio.run(_drop_pool())
    code, checks = setup.checks(capsys)
    assert code == 1
    assert checks["work-pool"]["status"] == "fail"
    assert f"prefect work-pool create {POOL} --type process" in checks["work-pool"]["fix"]
    assert checks["worker"]["detail"] == "not checked: work-pool failed."


def test_no_checkout_variable_where_the_doctor_runs(
    setup: Setup, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DBT_CLOUD_GATE_HOME")
    code, checks = setup.checks(capsys)
    assert code == 0  # a warning: the worker's own environment cannot be seen from here
    home = checks["worker-environment"]
    assert home["status"] == "warn" and "cannot be read through Prefect's API" in home["detail"]
    assert "DBT_CLOUD_GATE_HOME=/path/to/dbt-cloud-gate prefect worker start --pool dbt-cloud-gate" in home["fix"]


async def _crashed_at_the_pull_step() -> tuple[Any, Any]:
    """What a worker without DBT_CLOUD_GATE_HOME leaves: a flow run of the pool, Crashed by prefect.yaml's own pull
    step (run here as the flow-run process runs it, without the variable)."""
    async with get_client() as client:
        flow_id = await client.create_flow_from_name("doctor-probe")
        deployment_id = await client.create_deployment(flow_id=flow_id, name="probe", work_pool_name=POOL)
        run = await client.create_flow_run_from_deployment(deployment_id)
        await client.set_flow_run_state(run.id, Pending())
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PREFECT__FLOW_RUN_ID", str(run.id))
        patch.delenv("DBT_CLOUD_GATE_HOME", raising=False)
        with pytest.raises(RuntimeError, match="DBT_CLOUD_GATE_HOME is not set in the worker environment"):
            await asyncio.to_thread(checkout_directory)
    return deployment_id, run.id


async def _forget(deployment_id: Any, run_id: Any) -> None:
    async with get_client() as client:
        await client.delete_flow_run(run_id)
        await client.delete_deployment(deployment_id)


def test_a_worker_without_the_checkout_variable(setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    deployment_id, run_id = asyncio.run(_crashed_at_the_pull_step())
    try:
        code, checks = setup.checks(capsys)
    finally:
        asyncio.run(_forget(deployment_id, run_id))
    assert code == 1
    home = checks["worker-environment"]
    assert home["status"] == "fail"
    assert "failed at the pull step, for want of a checkout in DBT_CLOUD_GATE_HOME" in home["detail"]
    assert "(crashed: DBT_CLOUD_GATE_HOME is not set in the worker environment)" in home["detail"]
    assert "restart the worker with `DBT_CLOUD_GATE_HOME=" in home["fix"] and "run one deployment" in home["fix"]


def test_an_inactive_subscription(setup: Setup, receiver: Served, capsys: pytest.CaptureFixture[str]) -> None:
    subscription = setup.emulator.emulator.webhooks.subscriptions[subscribe(setup, receiver.url)]
    subscription.active = False  # as dbt Cloud does after 5 failed deliveries
    subscription.deactivate_reason = "Deactivated after 5 consecutive failed deliveries."
    code, checks = setup.checks(capsys)
    assert code == 1
    hooks = checks["webhook-subscription"]
    assert hooks["status"] == "fail"
    assert f"{subscription.id} is inactive (Deactivated after 5 consecutive failed deliveries.)" in hooks["detail"]
    ensure = (
        f"ensure --receiver-url {receiver.url} --credentials {setup.credentials} --secret-block {setup.secret_block}`"
    )
    assert ensure in hooks["fix"]


def test_a_subscription_pointing_elsewhere(setup: Setup, receiver: Served, capsys: pytest.CaptureFixture[str]) -> None:
    subscription = subscribe(setup, DEAD_RECEIVER)
    code, checks = setup.checks(capsys, "--receiver-url", receiver.url)
    assert code == 1
    hooks = checks["webhook-subscription"]
    assert hooks["status"] == "fail"
    assert f"{subscription} points at {DEAD_RECEIVER}, not at the receiver {receiver.url}" in hooks["detail"]
    assert checks["webhook-receiver"]["status"] == "ok"  # the receiver named answers


def test_a_receiver_that_does_not_answer(setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    subscribe(setup, DEAD_RECEIVER)
    code, checks = setup.checks(capsys)
    assert code == 1
    assert checks["webhook-subscription"]["status"] == "ok"
    receiver = checks["webhook-receiver"]
    assert receiver["status"] == "fail"
    assert "http://127.0.0.1:9/healthz does not answer (ConnectError)" in receiver["detail"]
    assert "python -m dbt_cloud_gate.receiver serve --secret-block BLOCK" in receiver["fix"]


def test_no_webhooks_set_up_is_skipped(setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    code, checks = setup.checks(capsys)
    assert code == 0
    assert checks["webhook-subscription"]["status"] == "skip"
    assert "webhooks are not set up" in checks["webhook-subscription"]["detail"]
    assert checks["webhook-receiver"]["status"] == "skip"


def test_bad_arguments_are_named(capsys: pytest.CaptureFixture[str], tmp_path: Any) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["doctor", "--job-id", "0"])
    assert exited.value.code == 2
    assert "--job-id: 0 is not a job ID: a dbt Cloud job ID is a positive number" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["doctor", "--targets", "Not A Variable"])
    assert "is not a Prefect variable name" in capsys.readouterr().err
    code = main(["doctor", "--prefect-yaml", str(tmp_path / "prefect.yaml"), "--json"])
    checks = {c["name"]: c for c in json.loads(capsys.readouterr().out)["checks"]}
    assert code == 1 and checks["prefect-yaml"]["status"] == "fail"
    assert (
        "does not exist: run the doctor from the repository root, or pass --prefect-yaml PATH"
        in (checks["prefect-yaml"]["detail"])
    )


def test_a_check_that_raises_fails_alone_and_its_dependents_say_why() -> None:
    def broken(doctor: Doctor) -> Verdict:
        doctor.facts.add_secret("s3cr3t-value")
        raise RuntimeError("boom with s3cr3t-value inside")

    checks = run_checks(
        DoctorOptions(),
        [
            CheckSpec("broken", broken),
            CheckSpec("after", lambda doctor: ok("ran"), ("broken",)),
            CheckSpec("independent", lambda doctor: ok("ran too")),
        ],
    )
    assert [(c.name, c.status) for c in checks] == [
        ("broken", Status.FAIL),
        ("after", Status.SKIP),
        ("independent", Status.OK),
    ]
    assert checks[0].detail == "the check itself failed: RuntimeError: boom with *** inside"
    assert checks[1].detail == "not checked: broken failed."
    assert "something failed: 1 failed, 1 ok, 1 skipped." in render_text(checks)


def test_a_block_a_template_of_prefect_yaml_names_is_missing(
    setup: Setup, capsys: pytest.CaptureFixture[str], tmp_path: Any
) -> None:
    # The git-clone variant of docs/deploying.md: its access token in a Secret block.
    clone = (
        "pull:\n  - prefect.deployments.steps.git_clone:\n      repository: https://example.com/dbt-cloud-gate.git\n"
        '      access_token: "{{ prefect.blocks.secret.doctor-git-token }}"\n'
    )
    text = (ROOT / "prefect.yaml").read_text()
    (tmp_path / "prefect.yaml").write_text(text.replace("pull:\n", clone, 1))
    code, checks = setup.checks(capsys, "--prefect-yaml", str(tmp_path / "prefect.yaml"))
    assert code == 1
    blocks = checks["yaml-blocks"]
    assert blocks["status"] == "fail" and "do not exist: secret/doctor-git-token" in blocks["detail"]
    assert "Secret(value=...).save('NAME')" in blocks["fix"]
    Secret(value="a-git-token-value").save("doctor-git-token", overwrite=True)
    code, checks = setup.checks(capsys, "--prefect-yaml", str(tmp_path / "prefect.yaml"))
    assert code == 0 and checks["yaml-blocks"]["detail"] == "1 block(s) exist: secret/doctor-git-token."


async def _remove_automation() -> None:
    async with get_client() as client:
        for found in await client.read_automations_by_name(AUTOMATION_NAME):
            await client.delete_automation(found.id)


def test_no_crash_automation_or_an_unwatched_deployment(
    setup: Setup, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    asyncio.run(_remove_automation())
    code, checks = setup.checks(capsys)
    assert code == 1
    crash = checks["crash-automation"]
    assert crash["status"] == "fail" and "is missing: a flow run whose process dies stays Running" in crash["detail"]
    assert "prefect deploy --all" in crash["fix"]
    # Installed again, but a deployment of (a copy of) prefect.yaml without the watch tag.
    install_crash_automation()
    edited = tmp_path / "prefect.yaml"
    edited.write_text((ROOT / "prefect.yaml").read_text().replace(", heartbeat-watched]", "]", 1))
    code, checks = setup.checks(capsys, "--prefect-yaml", str(edited))
    assert code == 1
    crash = checks["crash-automation"]
    assert crash["status"] == "fail" and "dbt-cloud-job (prefect.yaml) lack the tag" in crash["detail"]
    assert WATCH_TAG in crash["fix"] and "PREFECT_FLOWS_HEARTBEAT_FREQUENCY" in crash["fix"]


def test_an_alert_block_that_does_not_load(setup: Setup, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    edited = tmp_path / "prefect.yaml"
    text = (ROOT / "prefect.yaml").read_text()
    assert "alert_blocks: []" in text
    edited.write_text(text.replace("alert_blocks: []", "alert_blocks: [slack-webhook/doctor-nope]", 1))
    code, checks = setup.checks(capsys, "--prefect-yaml", str(edited))
    assert code == 1
    alerts = checks["alert-blocks"]
    assert alerts["status"] == "fail" and "'slack-webhook/doctor-nope'" in alerts["detail"]
    assert alerts["detail"].startswith("Alert blocks that cannot be loaded") and "SlackWebhook" in alerts["fix"]
    assert "Nothing was triggered" not in alerts["detail"]  # the flows' wording, not the doctor's


async def _deploy_unwatched() -> Any:
    async with get_client() as client:
        flow_id = await client.create_flow_from_name("dbt-cloud-etl")
        return await client.create_deployment(flow_id=flow_id, name="nightly-etl", work_pool_name=POOL, tags=["etl"])


def test_a_deployment_on_the_server_without_heartbeats(setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    # prefect.yaml is right, but what was deployed from an older copy of it is not: the server's deployment counts.
    deployment_id = asyncio.run(_deploy_unwatched())
    try:
        code, checks = setup.checks(capsys)
    finally:
        asyncio.run(_forget_deployment(deployment_id))
    assert code == 1
    crash = checks["crash-automation"]
    assert crash["status"] == "fail" and "nightly-etl (the server) lack the tag" in crash["detail"]


async def _forget_deployment(deployment_id: Any) -> None:
    async with get_client() as client:
        await client.delete_deployment(deployment_id)
