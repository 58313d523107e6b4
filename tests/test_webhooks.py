"""dbt_cloud_gate.dbtcloud_api.webhooks: signatures over raw bytes and the lenient delivery parser (no Prefect, no sockets)."""

from __future__ import annotations

import hashlib
import hmac
import json
import subprocess
import sys
from datetime import UTC, datetime
from typing import Any

import pytest

from dbt_cloud_gate.dbtcloud_api.models import RunStatus
from dbt_cloud_gate.dbtcloud_api.webhooks import (
    EVENT_COMPLETED,
    EVENT_ERRORED,
    WebhookPayloadError,
    delivery_payload,
    encode_body,
    format_event_timestamp,
    match_secret,
    parse_delivery,
    sign,
    verify,
)

SECRET = "whsec-0123456789abcdef"

# The completed example of dbt's docs page (https://docs.getdbt.com/docs/deploy/webhooks), verbatim.
DOCS_COMPLETED = {
    "accountId": 1,
    "webhookId": "wsu_12345abcde",
    "eventId": "wev_2L6ZDoilyiWzKkSA59Gmc2d7FDD",
    "timestamp": "2023-01-31T19:29:35.789265936Z",
    "eventType": "job.run.completed",
    "webhookName": "test",
    "data": {
        "jobId": "123",
        "jobName": "Daily Job (dbt build)",
        "runId": "12345",
        "environmentId": "1234",
        "environmentName": "Production",
        "dbtVersion": "1.0.0",
        "projectName": "Snowflake Github Demo",
        "projectId": "167194",
        "runStatus": "Success",
        "runStatusCode": 10,
        "runStatusMessage": "None",
        "runReason": "Kicked off from the UI by test@test.com",
        "runStartedAt": "2023-01-31T19:28:07Z",
        "runFinishedAt": "2023-01-31T19:29:32Z",
    },
}


def test_signature_is_the_documented_hmac_of_the_raw_bytes() -> None:
    body = json.dumps(DOCS_COMPLETED).encode()
    # dbt's own check, from its docs: hmac.new(secret.encode('utf-8'), request_body, hashlib.sha256).hexdigest()
    expected = hmac.new(SECRET.encode("utf-8"), body, hashlib.sha256).hexdigest()
    assert sign(body, SECRET) == expected and expected == expected.lower()
    assert verify(body, expected, SECRET)
    assert verify(body, f"  {expected.upper()}\n", SECRET)  # whitespace and hex case do not matter


@pytest.mark.parametrize(
    "header",
    [None, "", "   ", "0" * 64, "sha256=" + "0" * 57, "Bearer abc", "é" * 64, "z" * 64],
)
def test_verify_refuses_missing_empty_and_wrong_signatures(header: str | None) -> None:
    body = encode_body(DOCS_COMPLETED)
    assert not verify(body, header, SECRET)


def test_verify_is_over_the_exact_bytes_and_the_exact_secret() -> None:
    body = encode_body(DOCS_COMPLETED)
    signature = sign(body, SECRET)
    reserialized = json.dumps(json.loads(body), indent=1).encode()  # same JSON, other bytes
    assert not verify(reserialized, signature, SECRET)
    assert not verify(body + b" ", signature, SECRET)
    assert not verify(body, signature, SECRET + "x")
    assert not verify(body, signature, "")  # an empty secret verifies nothing
    with pytest.raises(ValueError, match="empty"):
        sign(body, "  ")


def test_match_secret_names_the_secret_that_signed() -> None:
    body = encode_body(DOCS_COMPLETED)
    secrets = {"account-1": "first-secret", "wsu_2": SECRET, "account-3": "third"}
    assert match_secret(body, sign(body, SECRET), secrets) == "wsu_2"
    assert match_secret(body, sign(body, "nobody's"), secrets) is None
    assert match_secret(body, None, secrets) is None
    assert match_secret(body, sign(body, "third"), ["a-secret", "third"]) == "1"


def test_docs_example_parses_with_ids_as_ints() -> None:
    delivery = parse_delivery(encode_body(DOCS_COMPLETED))
    assert (delivery.account_id, delivery.run_id, delivery.job_id) == (1, 12345, 123)
    assert delivery.data.environment_id == 1234 and delivery.data.project_id == 167194
    assert delivery.event_id == "wev_2L6ZDoilyiWzKkSA59Gmc2d7FDD"
    assert delivery.kind == "completed" and delivery.is_terminal and delivery.status == RunStatus.SUCCESS
    assert delivery.webhook_id == "wsu_12345abcde"
    # 9 fractional digits: kept to the microsecond.
    assert delivery.timestamp == datetime(2023, 1, 31, 19, 29, 35, 789265, tzinfo=UTC)
    assert delivery.data.run_finished_at == datetime(2023, 1, 31, 19, 29, 32, tzinfo=UTC)
    assert delivery.data.run_reason == "Kicked off from the UI by test@test.com"


def test_older_and_other_shapes_parse() -> None:
    older = json.loads(json.dumps(DOCS_COMPLETED))
    older["webhooksID"] = older.pop("webhookId")
    for name in ("projectId", "runStatusCode", "environmentId", "runFinishedAt", "dbtVersion"):
        del older["data"][name]
    older["timestamp"] = "not a time"
    delivery = parse_delivery(encode_body(older))
    assert delivery.webhook_id == "wsu_12345abcde"
    assert delivery.data.project_id is None and delivery.status is None and delivery.timestamp is None
    assert delivery.run_id == 12345
    errored = delivery_payload(
        EVENT_ERRORED,
        account_id=7,
        run_id=99,
        job_id=5,
        run_status_code=20,
        ended_at=datetime(2024, 5, 1, 10, 0, 1, 500000, tzinfo=UTC),
    )
    parsed = parse_delivery(errored)
    assert parsed.kind == "errored" and parsed.status == RunStatus.ERROR
    assert (
        parsed.data.run_errored_at == datetime(2024, 5, 1, 10, 0, 1, tzinfo=UTC) and parsed.data.run_finished_at is None
    )
    assert errored["data"]["runStatus"] == "Errored"
    unknown = {**DOCS_COMPLETED, "eventType": "job.run.cancelled"}
    assert parse_delivery(unknown).kind is None and not parse_delivery(unknown).is_terminal


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"", "not JSON"),
        (b"\xff\xfe", "not UTF-8"),
        (b'{"accountId": NaN}', "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'"text"', "not a JSON object"),
        (encode_body({"hello": "world"}), "accountId"),
        (encode_body({**DOCS_COMPLETED, "eventId": "  "}), "eventId"),
        (encode_body({**DOCS_COMPLETED, "eventId": "wev_\nx"}), "eventId"),
        (encode_body({**DOCS_COMPLETED, "accountId": True}), "accountId"),
        (encode_body({**DOCS_COMPLETED, "data": {**DOCS_COMPLETED["data"], "runId": "12.5"}}), "data.runId"),
        (encode_body({**DOCS_COMPLETED, "data": {**DOCS_COMPLETED["data"], "runId": "0"}}), "data.runId"),
        (encode_body({**DOCS_COMPLETED, "data": {**DOCS_COMPLETED["data"], "jobId": None}}), "data.jobId"),
        (encode_body({**DOCS_COMPLETED, "data": "x"}), "data"),
    ],
)
def test_a_body_that_is_not_a_delivery_is_refused_clearly(body: bytes, problem: str) -> None:
    with pytest.raises(WebhookPayloadError, match=problem) as caught:
        parse_delivery(body)
    assert "Snowflake Github Demo" not in str(caught.value)  # no value of the body in the message


def test_payload_builder_matches_dbt_formats() -> None:
    when = datetime(2023, 1, 31, 19, 29, 35, 789265, tzinfo=UTC)
    payload: dict[str, Any] = delivery_payload(
        EVENT_COMPLETED,
        account_id=1,
        run_id=12345,
        job_id=123,
        run_status_code=10,
        occurred=when,
        started_at=when,
        ended_at=when,
        webhook_id_key="webhooksID",
    )
    assert payload["timestamp"] == "2023-01-31T19:29:35.789265000Z" == format_event_timestamp(when)
    assert payload["data"]["runFinishedAt"] == "2023-01-31T19:29:35Z" and "runErroredAt" not in payload["data"]
    assert payload["data"]["runId"] == "12345" and payload["data"]["runStatusCode"] == 10
    assert "webhooksID" in payload and "webhookId" not in payload
    assert payload["eventId"].startswith("wev_") and len(payload["eventId"]) == 31


def test_module_imports_without_prefect() -> None:
    code = "import sys; sys.modules['prefect'] = None; import dbt_cloud_gate.dbtcloud_api.webhooks as w; print(w.sign(b'x', 'k'))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
