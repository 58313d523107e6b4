"""The ensure-dbt-cloud-webhook task and its flow, against the emulator, with secrets in real Secret blocks."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from prefect.blocks.system import Secret

from dbt_cloud_gate.blocks.dbt_cloud import DbtCloudCredentials
from dbt_cloud_gate.dbtcloud_api.emulator import EmulatorServer
from dbt_cloud_gate.flows.webhooks import ensure_dbt_cloud_webhooks, main
from dbt_cloud_gate.tasks.webhooks import ensure_webhook
from tests.conftest import ACCOUNT, TOKEN

pytestmark = pytest.mark.usefixtures("prefect_harness")

RECEIVER = "http://127.0.0.1:9/dbt-cloud/webhooks"  # never reached: no run is started here


@pytest.fixture
def block_name() -> str:
    return f"webhook-secrets-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def credentials(emulator: EmulatorServer) -> Iterator[DbtCloudCredentials]:
    yield DbtCloudCredentials(account_id=ACCOUNT, api_token=TOKEN, access_url=emulator.url)


def stored(block_name: str) -> dict[str, str]:
    value = Secret.load(block_name, _sync=True).get()  # type: ignore[call-arg]
    assert isinstance(value, dict)
    return value


def test_creates_then_leaves_alone_then_updates_and_reactivates(
    emulator: EmulatorServer, credentials: DbtCloudCredentials, block_name: str
) -> None:
    hub = emulator.emulator.webhooks
    with credentials.get_client() as client:
        first = ensure_webhook(client, RECEIVER, job_ids=[12, 11], secret_block=block_name)
        assert first.action == "created" and first.active and first.job_ids == [11, 12]
        [subscription] = hub.subscriptions.values()
        # The secret dbt Cloud shows once is in the block, under the subscription's ID.
        assert stored(block_name) == {subscription.id: subscription.hmac_secret}

        again = ensure_webhook(client, RECEIVER, job_ids=[11, 12], secret_block=block_name)
        assert again.action == "unchanged" and again.subscription_id == subscription.id

        changed = ensure_webhook(client, RECEIVER, job_ids=[13], secret_block=block_name)
        assert changed.action == "updated" and subscription.job_ids == [13]

        subscription.active = False  # as dbt Cloud does after 5 failed deliveries
        subscription.deactivate_reason = "Deactivated after 5 consecutive failed deliveries."
        back = ensure_webhook(client, RECEIVER, job_ids=[13], secret_block=block_name)
        assert back.action == "reactivated" and subscription.active and back.deactivate_reason
        assert list(hub.subscriptions) == [subscription.id]


def test_a_lost_secret_means_a_new_subscription(
    emulator: EmulatorServer, credentials: DbtCloudCredentials, block_name: str
) -> None:
    hub = emulator.emulator.webhooks
    with credentials.get_client() as client:
        old = ensure_webhook(client, RECEIVER, secret_block=block_name)
        # Another subscription's secret is already in the block: it is kept.
        Secret(value={"wsu_other": "kept"}).save(block_name, overwrite=True, _sync=True)  # type: ignore[call-arg]
        new = ensure_webhook(client, RECEIVER, secret_block=block_name)
    assert new.action == "recreated" and new.subscription_id != old.subscription_id
    assert list(hub.subscriptions) == [new.subscription_id] and new.job_ids == []
    assert stored(block_name) == {
        "wsu_other": "kept",
        new.subscription_id: hub.subscriptions[new.subscription_id].hmac_secret,
    }


def test_subscriptions_pointing_elsewhere_are_not_touched(
    emulator: EmulatorServer, credentials: DbtCloudCredentials, block_name: str
) -> None:
    with credentials.get_client() as client:
        elsewhere = client.create_webhook_subscription("slack", "https://hooks.example.com/x")
        report = ensure_webhook(client, RECEIVER, secret_block=block_name)
        assert report.subscription_id != elsewhere.id
        assert {s.id for s in client.list_webhook_subscriptions()} == {elsewhere.id, report.subscription_id}


def test_the_flow_and_its_command_line(
    emulator: EmulatorServer, credentials: DbtCloudCredentials, block_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    report = ensure_dbt_cloud_webhooks(RECEIVER, [11], credentials=credentials, secret_block=block_name)
    assert report.action == "created" and report.job_ids == [11]
    credentials.save(f"creds-{block_name}", overwrite=True)
    code = main(
        [
            "ensure",
            "--receiver-url",
            RECEIVER,
            "--job-id",
            "11",
            "--job-id",
            "12",
            "--credentials",
            f"creds-{block_name}",
            "--secret-block",
            block_name,
            "--test",
        ]
    )
    assert code == 0 and '"action": "updated"' in capsys.readouterr().out
    assert emulator.emulator.webhooks.subscriptions[report.subscription_id].job_ids == [11, 12]
    assert any(r.path.endswith("/test") for r in emulator.emulator.requests)


def test_a_plain_http_receiver_elsewhere_is_refused(credentials: DbtCloudCredentials, block_name: str) -> None:
    with credentials.get_client() as client, pytest.raises(ValueError, match="https"):
        ensure_webhook(client, "http://hooks.example.com/dbt", secret_block=block_name)
