"""Malformed delivery bodies, every one signed validly: each gets a 4xx and no event, never a 500 (nesting,
sizes, encodings, JSON that is not an object, wrong types, huge numbers, NaN). The parser first, then the
receiver through httpx.ASGITransport."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from prefect.events import Event

from dbt_cloud_gate.dbtcloud_api.webhooks import (
    MAX_BODY_BYTES,
    WebhookPayloadError,
    delivery_payload,
    encode_body,
    parse_delivery,
    sign,
)
from dbt_cloud_gate.receiver import DEFAULT_PATH, ReceiverConfig, create_app

pytestmark = pytest.mark.anyio

SECRET = "s3cret-of-account-7-0123456789"
GOOD = delivery_payload("job.run.completed", account_id=7, run_id=501, job_id=11, run_status_code=10)


def with_fields(**fields: Any) -> dict[str, Any]:
    """A copy of a good delivery with top-level fields (or ``data_<name>`` fields of ``data``) replaced."""
    payload = json.loads(json.dumps(GOOD))
    for name, value in fields.items():
        target, key = (payload["data"], name.removeprefix("data_")) if name.startswith("data_") else (payload, name)
        target[key] = value
    return payload


def raw(payload: dict[str, Any], field: str, text: bytes) -> bytes:
    """A good body whose ``field`` (top level) is the raw JSON ``text``: for what json.dumps cannot write."""
    return encode_body(with_fields(**{field: "__RAW__"})).replace(b'"__RAW__"', text)


def nested(depth: int, open_: bytes = b"[", close: bytes = b"]") -> bytes:
    return open_ * depth + close * depth


GOOD_BODY = encode_body(GOOD)
BAD_BODIES: dict[str, bytes] = {
    # nesting: the case first (64,000 bytes, validly signed, was a 500 RecursionError)
    "a 64,000-byte nested array": nested(32_000),
    "nested objects": b'{"a":' * 10_000 + b"1" + b"}" * 10_000,
    "a delivery with a deeply nested extra field": raw(GOOD, "extra", nested(30_000)),
    "a delivery whose data is deeply nested": raw(GOOD, "data", nested(9_000, b'{"a":', b"}")),
    # not a JSON object
    "empty": b"",
    "whitespace": b" \r\n\t ",
    "null": b"null",
    "true": b"true",
    "a number": b"12",
    "a string": b'"job.run.completed"',
    "an array": b"[]",
    "an array of the delivery": b"[" + GOOD_BODY + b"]",
    "form encoded": b"accountId=7&eventId=wev_1",
    "truncated": GOOD_BODY[:-1],
    "trailing garbage": GOOD_BODY + b"x",
    "two documents": GOOD_BODY + GOOD_BODY,
    # encodings
    "invalid UTF-8 in a value": GOOD_BODY.replace(b'"Analytics"', b'"Analytics \xff"'),
    "Latin-1 text": GOOD_BODY.replace(b'"Analytics"', '"Analytícs"'.encode("latin-1")),
    "an overlong UTF-8 sequence": GOOD_BODY.replace(b'"Analytics"', b'"\xc0\xaf"'),
    "an encoded surrogate": GOOD_BODY.replace(b'"Analytics"', b'"\xed\xa0\x80"'),
    "a UTF-8 byte order mark": b"\xef\xbb\xbf" + GOOD_BODY,
    "UTF-16 with its byte order mark": json.dumps(GOOD).encode("utf-16"),
    "UTF-16-LE": json.dumps(GOOD).encode("utf-16-le"),
    "UTF-32": json.dumps(GOOD).encode("utf-32"),
    "a NUL byte": GOOD_BODY[:1] + b"\x00" + GOOD_BODY[1:],
    # numbers
    "NaN": raw(GOOD, "accountId", b"NaN"),
    "Infinity": raw(GOOD, "accountId", b"Infinity"),
    "-Infinity in data": GOOD_BODY.replace(b'"runStatusCode":10', b'"runStatusCode":-Infinity'),
    "a float overflowing to infinity": raw(GOOD, "accountId", b"1e999"),
    "an integer of 5,000 digits": raw(GOOD, "accountId", b"7" * 5000),
    "an account ID over 2**63": encode_body(with_fields(accountId=2**64)),
    "a run ID over 2**63 as text": encode_body(with_fields(data_runId=str(2**63))),
    "a negative job ID": encode_body(with_fields(data_jobId="-1")),
    "a zero account ID": encode_body(with_fields(accountId=0)),
    "a fractional run ID": encode_body(with_fields(data_runId="1.5")),
    "a hex run ID": encode_body(with_fields(data_runId="0x10")),
    "non-ASCII digits": encode_body(with_fields(data_runId="١٢")),
    # wrong types and missing fields
    "a boolean account ID": encode_body(with_fields(accountId=True)),
    "an account ID that is a list": encode_body(with_fields(accountId=[7])),
    "an account ID that is an object": encode_body(with_fields(accountId={"id": 7})),
    "an empty account ID": encode_body(with_fields(accountId="")),
    "a numeric event ID": encode_body(with_fields(eventId=12)),
    "an empty event ID": encode_body(with_fields(eventId="  ")),
    "an event ID of 201 characters": encode_body(with_fields(eventId="w" * 201)),
    "an event ID with a line feed": encode_body(with_fields(eventId="wev_1\nforged log line")),
    "an event ID with a lone surrogate": raw(GOOD, "eventId", b'"wev_\\ud800"'),
    "a null event type": encode_body(with_fields(eventType=None)),
    "an event type that is an object": encode_body(with_fields(eventType={"a": 1})),
    "data that is a list": encode_body(with_fields(data=[1, 2])),
    "data that is a string": encode_body(with_fields(data="run 501")),
    "data that is null": encode_body(with_fields(data=None)),
    "empty data": encode_body(with_fields(data={})),
    "a run ID that is an object": encode_body(with_fields(data_runId={"id": 501})),
    "no account ID": encode_body({k: v for k, v in GOOD.items() if k != "accountId"}),
    "an empty object": b"{}",
}


@pytest.mark.parametrize("name", BAD_BODIES)
def test_the_parser_refuses_each_bad_body_with_its_own_error(name: str) -> None:
    body = BAD_BODIES[name]
    assert len(body) <= MAX_BODY_BYTES, "the corpus stays under the size cap: these reach the parser"
    with pytest.raises(WebhookPayloadError) as refused:
        parse_delivery(body)
    message = str(refused.value)
    assert "delivery" in message and "forged log line" not in message and "Analytics" not in message


def test_each_kind_of_problem_is_named() -> None:
    def problem(name: str) -> str:
        with pytest.raises(WebhookPayloadError) as refused:
            parse_delivery(BAD_BODIES[name])
        return str(refused.value)

    assert "nested too deeply" in problem("a 64,000-byte nested array")
    assert "not UTF-8" in problem("invalid UTF-8 in a value") and "not UTF-8" in problem(
        "UTF-16 with its byte order mark"
    )
    assert "not JSON" in problem("a UTF-8 byte order mark") and "not JSON" in problem("NaN")
    assert "not a JSON object" in problem("an array")
    assert "accountId" in problem("a boolean account ID") and "data.runId" in problem("a run ID that is an object")


# Odd but harmless: informational fields are read leniently (a list where text was expected is dropped), so a
# real delivery with a surprising optional field still becomes its event.
TOLERATED: dict[str, tuple[bytes, dict[str, Any]]] = {
    "a job name nested 900 deep": (raw(GOOD, "webhookName", nested(900)), {"webhook_name": None}),
    "a run reason that is an object": (encode_body(with_fields(data_runReason={"a": [1]})), {"run_reason": None}),
    "a lone surrogate in the run reason": (
        encode_body(with_fields(data_runReason="x")).replace(b'"runReason":"x"', b'"runReason":"x\\ud800"'),
        {"run_reason": "x?"},
    ),
    "a status code of 4,000 digits": (
        GOOD_BODY.replace(b'"runStatusCode":10', b'"runStatusCode":' + b"9" * 4000),
        {"run_status_code": None},
    ),
    "a status code as text": (encode_body(with_fields(data_runStatusCode="20")), {"run_status_code": 20}),
    "a boolean status code": (encode_body(with_fields(data_runStatusCode=True)), {"run_status_code": None}),
    "a timestamp of 10,000 characters": (encode_body(with_fields(timestamp="2" * 10_000)), {"timestamp": None}),
    "unknown fields": (encode_body(with_fields(surprise={"deep": [[1]]})), {}),
}


@pytest.mark.parametrize("name", TOLERATED)
def test_odd_informational_fields_are_dropped_not_refused(name: str) -> None:
    body, expected = TOLERATED[name]
    delivery = parse_delivery(body)
    assert delivery.run_id == 501 and delivery.account_id == 7
    for field, value in expected.items():
        actual = getattr(delivery.data, field) if hasattr(delivery.data, field) else getattr(delivery, field)
        assert actual == value, field


# -- through the receiver: all signed validly ---------------------------------------------------------------


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def events() -> list[Event]:
    return []


@pytest.fixture
async def http(events: list[Event]) -> AsyncIterator[httpx.AsyncClient]:
    async def emit(event: Event) -> None:
        events.append(event)

    # A burst above the corpus: each bad body is a failure, and past the burst its answer would be 429.
    app = create_app(ReceiverConfig(secrets={"account:7": SECRET}, burst=1000), emit)
    # raise_app_exceptions=False: a crash is seen as the 500 uvicorn would send, not as an exception here.
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://receiver") as client:
        yield client


async def test_every_bad_body_signed_validly_gets_a_4xx_and_no_event(
    http: httpx.AsyncClient, events: list[Event]
) -> None:
    answers: dict[str, int] = {}
    for name, body in BAD_BODIES.items():
        answer = await http.post(DEFAULT_PATH, content=body, headers={"Authorization": sign(body, SECRET)})
        answers[name] = answer.status_code
        assert answer.headers["content-type"] == "application/json", name
    assert {name: code for name, code in answers.items() if code != 400} == {}
    assert events == []
    too_big = b"[" * (MAX_BODY_BYTES + 1)
    answer = await http.post(DEFAULT_PATH, content=too_big, headers={"Authorization": sign(too_big, SECRET)})
    assert answer.status_code == 413


async def test_tolerated_bodies_become_events(http: httpx.AsyncClient, events: list[Event]) -> None:
    for name, (body, _) in TOLERATED.items():
        # Each its own event ID (the corpus shares one): a redelivery would be acknowledged as a duplicate.
        fresh = body.replace(GOOD["eventId"].encode(), f"wev_{len(events)}{name}".replace(" ", "_").encode())
        answer = await http.post(DEFAULT_PATH, content=fresh, headers={"Authorization": sign(fresh, SECRET)})
        assert (answer.status_code, answer.json()["status"]) == (200, "accepted"), name
    assert len(events) == len(TOLERATED)
    assert all(json.dumps(event.model_dump(mode="json")).isascii() for event in events)
