"""dbt Cloud outbound webhooks, sans I/O: sign and verify a delivery's HMAC, parse its body.

A delivery is a POST whose ``Authorization`` header holds the lower-case hex HMAC-SHA256 of the raw body, keyed
by the subscription's ``hmac_secret`` (no scheme, no prefix, no timestamp: replays are stopped by deduplicating
``eventId``). The body's IDs are strings holding integers; the webhook-id key has been both ``webhooksID`` and
``webhookId``; older payloads lack fields. See ``shared/dbt-cloud/webhooks-and-events.md``.

A delivery can only say that something happened to a run: its timestamps have second precision, so a run's
``finished_at`` must still be read from the API (one GET), never taken from here.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets as _secrets
import string
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, TypedDict, Unpack
from urllib.parse import urlsplit

from pydantic import AliasChoices, BaseModel, BeforeValidator, ConfigDict, Field, SecretStr, ValidationError

from dbt_cloud_gate.dbtcloud_api.errors import DbtCloudConfigError
from dbt_cloud_gate.dbtcloud_api.models import RunStatus
from dbt_cloud_gate.dbtcloud_api.urls import check_transport, describe_character

SIGNATURE_HEADER = "Authorization"
EVENT_STARTED = "job.run.started"
EVENT_COMPLETED = "job.run.completed"
EVENT_ERRORED = "job.run.errored"
EVENT_TYPES: tuple[str, ...] = (EVENT_STARTED, EVENT_COMPLETED, EVENT_ERRORED)
EventKind = Literal["started", "completed", "errored"]
# Far above any real delivery (about 1 KB); a receiver reads no more than this.
MAX_BODY_BYTES = 64 * 1024
_MAX_ID = 2**63 - 1
_MAX_TEXT = 4096
_SHORT_INTEGER = re.compile(r"-?[0-9]{1,19}")


class WebhookPayloadError(ValueError):
    """The body is not a dbt Cloud webhook delivery. The message names the problems, never a value of the body."""


def _key(secret: str | bytes) -> bytes:
    key = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
    if not key.strip():
        raise ValueError("A webhook secret must not be empty.")
    return key


def sign(body: bytes, secret: str | bytes) -> str:
    """The ``Authorization`` value dbt Cloud sends with ``body``: lower-case hex HMAC-SHA256 keyed by ``secret``."""
    return hmac.new(_key(secret), body, hashlib.sha256).hexdigest()


def verify(body: bytes, header: str | None, secret: str | bytes) -> bool:
    """Whether ``header`` is the signature of the raw ``body`` under ``secret``, compared in constant time.

    A missing or empty header, a header that cannot be a hex digest, or an empty secret is refused (``False``).
    Surrounding whitespace is ignored and hex case does not matter.
    """
    if not header or not isinstance(header, str):
        return False
    presented = header.strip().lower()
    if len(presented) != 64 or not presented.isascii():
        return False
    try:
        expected = sign(body, secret)
    except ValueError:
        return False
    return hmac.compare_digest(presented.encode("ascii"), expected.encode("ascii"))


def match_secret(
    body: bytes, header: str | None, secrets: Mapping[str, str | bytes] | Iterable[str | bytes]
) -> str | None:
    """Which of several secrets signed ``body``: its key in ``secrets`` (or its index, as a string), else ``None``.

    Every secret is tried, whether or not an earlier one matched, so the time taken does not tell which matched.
    """
    items = list(secrets.items()) if isinstance(secrets, Mapping) else [(str(i), s) for i, s in enumerate(secrets)]
    found: str | None = None
    for name, secret in items:
        if verify(body, header, secret) and found is None:
            found = name
    return found


def _run_id_field(value: Any) -> int:
    """An ID the body carries as a string holding an integer (an int is taken too)."""
    if isinstance(value, bool):
        raise ValueError("must be a string holding a positive integer, not a boolean")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and value.strip().isdigit() and value.strip().isascii():
        number = int(value.strip())
    else:
        raise ValueError("must be a string holding a positive integer")
    if not 1 <= number <= _MAX_ID:
        raise ValueError("must be between 1 and 2**63-1")
    return number


def _optional_id(value: Any) -> int | None:
    return None if value is None or value == "" else _run_id_field(value)


def _lenient_time(value: Any) -> datetime | None:
    """A timestamp, or ``None`` when missing or unreadable: informational only, never trusted for a watermark."""
    if value is None or value == "" or not isinstance(value, str):
        return None
    # Python 3.11 reads ``Z`` and the 9 fractional digits of dbt's ``timestamp`` (keeping microseconds).
    text = value.strip()
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _optional_int(value: Any) -> int | None:
    """An informational integer (``runStatusCode``): an int or a string of digits in 64 bits, else ``None``."""
    if isinstance(value, str):
        value = int(value) if _SHORT_INTEGER.fullmatch(value.strip()) else None
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value if -_MAX_ID <= value <= _MAX_ID else None


def _optional_text(value: Any) -> str | None:
    """Informational text, cut to 4096 characters; a scalar is written as text, a list or an object is ``None``
    (``str()`` of a deeply nested one would recurse). A lone surrogate (``"\\ud800"``) becomes ``?``: it cannot
    be stored or sent as UTF-8."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return None
    text = value[:_MAX_TEXT] if isinstance(value, str) else str(value)[:_MAX_TEXT]
    return text.encode("utf-8", "replace").decode("utf-8")


def _required_text(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("must be a non-empty string")
    text = value.strip()
    if len(text) > 200 or any(not char.isprintable() for char in text):
        raise ValueError("must be at most 200 printable characters")
    return text


Id = Annotated[int, BeforeValidator(_run_id_field)]
OptionalId = Annotated[int | None, BeforeValidator(_optional_id)]
LenientTime = Annotated[datetime | None, BeforeValidator(_lenient_time)]
OptionalInt = Annotated[int | None, BeforeValidator(_optional_int)]
OptionalText = Annotated[str | None, BeforeValidator(_optional_text)]
RequiredText = Annotated[str, BeforeValidator(_required_text)]


class RunEventData(BaseModel):
    """The ``data`` object of a delivery: the run, its job and where it ran. Missing optional fields are ``None``."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    # One line per key of dbt Cloud's data object: alike in shape only, each one its own key and rule.
    job_id: Id = Field(validation_alias="jobId")
    run_id: Id = Field(validation_alias="runId")
    environment_id: OptionalId = Field(default=None, validation_alias="environmentId")
    project_id: OptionalId = Field(default=None, validation_alias="projectId")
    job_name: OptionalText = Field(default=None, validation_alias="jobName")
    environment_name: OptionalText = Field(default=None, validation_alias="environmentName")
    project_name: OptionalText = Field(default=None, validation_alias="projectName")
    dbt_version: OptionalText = Field(default=None, validation_alias="dbtVersion")
    run_status: OptionalText = Field(default=None, validation_alias="runStatus")
    run_status_code: OptionalInt = Field(default=None, validation_alias="runStatusCode")
    run_status_message: OptionalText = Field(default=None, validation_alias="runStatusMessage")
    run_reason: OptionalText = Field(default=None, validation_alias="runReason")
    run_started_at: LenientTime = Field(default=None, validation_alias="runStartedAt")
    run_finished_at: LenientTime = Field(default=None, validation_alias="runFinishedAt")
    run_errored_at: LenientTime = Field(default=None, validation_alias="runErroredAt")


class WebhookDelivery(BaseModel):
    """One dbt Cloud webhook delivery, read leniently: IDs parsed to ints, unknown fields ignored.

    ``event_type`` is kept as sent, also when it is not one of :data:`EVENT_TYPES` (``kind`` is then ``None``).
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    account_id: Id = Field(validation_alias="accountId")
    event_id: RequiredText = Field(validation_alias="eventId")
    event_type: RequiredText = Field(validation_alias="eventType")
    timestamp: LenientTime = None
    webhook_id: OptionalText = Field(default=None, validation_alias=AliasChoices("webhookId", "webhooksID"))
    webhook_name: OptionalText = Field(default=None, validation_alias="webhookName")
    data: RunEventData

    @property
    def kind(self) -> EventKind | None:
        """``started``, ``completed`` or ``errored``; ``None`` for an event type this code does not know."""
        known: dict[str, EventKind] = {
            EVENT_STARTED: "started",
            EVENT_COMPLETED: "completed",
            EVENT_ERRORED: "errored",
        }
        return known.get(self.event_type)

    @property
    def run_id(self) -> int:
        """The run the event is about."""
        return self.data.run_id

    @property
    def job_id(self) -> int:
        """The run's job."""
        return self.data.job_id

    @property
    def status(self) -> RunStatus | None:
        """The run status the delivery reports (``runStatusCode``), if it has a known one."""
        code = self.data.run_status_code
        try:
            return None if code is None else RunStatus(code)
        except ValueError:
            return None

    @property
    def is_terminal(self) -> bool:
        """Whether the event says the run ended (completed or errored); the API still decides how."""
        return self.kind in ("completed", "errored")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _decode(body: bytes | str) -> Any:
    """The JSON document of a raw body: UTF-8 only (dbt Cloud sends nothing else; ``json.loads`` would also take
    UTF-16 and a byte order mark), no ``NaN``/``Infinity``, nesting within the interpreter's recursion limit."""
    try:
        text = body.decode("utf-8") if isinstance(body, bytes | bytearray) else body
    except UnicodeDecodeError:
        raise WebhookPayloadError("The body is not UTF-8 text, so it is not a dbt Cloud webhook delivery.") from None
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise WebhookPayloadError("The body's JSON is nested too deeply for a dbt Cloud webhook delivery.") from None
    except ValueError:  # also a byte order mark, and integers over 4,300 digits
        raise WebhookPayloadError("The body is not JSON, so it is not a dbt Cloud webhook delivery.") from None


def parse_delivery(body: bytes | str | Mapping[str, Any]) -> WebhookDelivery:
    """Read a delivery from its raw body (or an already decoded object). Raises :class:`WebhookPayloadError`
    for anything that is not a delivery, whatever its size, nesting, encoding or types."""
    document: Any = dict(body) if isinstance(body, Mapping) else _decode(body)
    if not isinstance(document, dict):
        raise WebhookPayloadError("The body is not a JSON object, so it is not a dbt Cloud webhook delivery.")
    try:
        return WebhookDelivery.model_validate(document)
    except ValidationError as exc:
        problems = []
        for error in exc.errors(include_input=False, include_url=False):
            where = ".".join(str(part) for part in error["loc"]) or "body"
            problems.append(f"{where}: {error['msg']}")
        raise WebhookPayloadError("Not a dbt Cloud webhook delivery: " + "; ".join(problems) + ".") from None


_EVENT_ID_ALPHABET = string.ascii_letters + string.digits


def new_event_id() -> str:
    """A fresh event ID in dbt Cloud's shape (``wev_`` and 27 letters and digits)."""
    return "wev_" + "".join(_secrets.choice(_EVENT_ID_ALPHABET) for _ in range(27))


def format_event_timestamp(when: datetime) -> str:
    """``timestamp`` as dbt Cloud writes it: RFC 3339 with 9 fractional digits and ``Z``."""
    utc = when.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond:06d}000Z"


def format_run_timestamp(when: datetime | None) -> str | None:
    """A run timestamp as a delivery carries it: second precision and ``Z``."""
    return None if when is None else when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def delivery_payload(
    event_type: str,
    *,
    account_id: int,
    run_id: int,
    job_id: int,
    run_status_code: int,
    environment_id: int = 1,
    project_id: int = 1,
    event_id: str | None = None,
    occurred: datetime | None = None,
    webhook_id: str = "wsu_emulated",
    webhook_id_key: Literal["webhookId", "webhooksID"] = "webhookId",
    webhook_name: str = "dbt-cloud-gate",
    job_name: str = "",
    run_reason: str = "",
    run_status_message: str | None = None,
    started_at: datetime | None = None,
    ended_at: datetime | None = None,
) -> dict[str, Any]:
    """A delivery body as dbt Cloud builds it (the emulator's, and the tests'). ``ended_at`` becomes
    ``runFinishedAt`` for a completed event and ``runErroredAt`` for an errored one."""
    status = RunStatus(run_status_code)
    data: dict[str, Any] = {
        "jobId": str(job_id),
        "jobName": job_name,
        "runId": str(run_id),
        "environmentId": str(environment_id),
        "environmentName": "Production",
        "dbtVersion": "1.8.0",
        "projectName": "Analytics",
        "projectId": str(project_id),
        "runStatus": "Errored" if status == RunStatus.ERROR else status.label,
        "runStatusCode": int(status),
        "runStatusMessage": run_status_message if run_status_message is not None else "None",
        "runReason": run_reason,
        "runStartedAt": format_run_timestamp(started_at),
    }
    if event_type == EVENT_COMPLETED:
        data["runFinishedAt"] = format_run_timestamp(ended_at)
    elif event_type == EVENT_ERRORED:
        data["runErroredAt"] = format_run_timestamp(ended_at)
    return {
        "accountId": account_id,
        webhook_id_key: webhook_id,
        "eventId": event_id or new_event_id(),
        "timestamp": format_event_timestamp(occurred or datetime.now(UTC)),
        "eventType": event_type,
        "webhookName": webhook_name,
        "data": data,
    }


def encode_body(payload: Mapping[str, Any]) -> bytes:
    """The bytes a delivery is sent as (and signed over)."""
    return json.dumps(payload, separators=(",", ":")).encode("utf-8")


# -- subscriptions (API v3) ---------------------------------------------------------------------------------

_SUBSCRIPTION_ID = re.compile(r"^[A-Za-z0-9_-]{1,100}$")


def _job_id_list(value: Any) -> list[int]:
    # The spec says integers; dbt Cloud answers with strings.
    if value is None:
        return []
    if not isinstance(value, list):
        raise ValueError("job_ids must be a list")
    return [_run_id_field(item) for item in value]


class WebhookSubscription(BaseModel):
    """A webhook subscription as the v3 API returns it. ``hmac_secret`` is only in the answer to a create.

    An empty ``job_ids`` means every job of the account.
    """

    model_config = ConfigDict(extra="allow", hide_input_in_errors=True)

    id: str
    name: str = ""
    description: str | None = None
    client_url: str = ""
    event_types: list[str] = Field(default_factory=list)
    job_ids: Annotated[list[int], BeforeValidator(_job_id_list)] = Field(default_factory=list)
    active: bool = False
    http_status_code: str | None = None
    dispatched_at: str | None = None
    deactivate_reason: str | None = None
    account_id: int | None = None
    hmac_secret: SecretStr | None = None


def check_subscription_id(value: object) -> str:
    """``value`` if it can be a subscription ID (``wsu_...``): it goes into a URL path."""
    if not isinstance(value, str) or not _SUBSCRIPTION_ID.fullmatch(value.strip()):
        raise DbtCloudConfigError(
            f"A webhook subscription ID is 1 to 100 letters, digits, '_' or '-' (like wsu_12345abcde), got {value!r}."
        )
    return value.strip()


def check_client_url(value: object) -> str:
    """The receiver URL dbt Cloud will POST to: ``https://`` (``http://`` only for a loopback host), no whitespace."""
    if not isinstance(value, str) or not value.strip():
        raise DbtCloudConfigError("The webhook receiver URL must be a non-empty string.")
    text = value.strip()
    for char in text:
        if char.isspace() or not char.isprintable():
            raise DbtCloudConfigError(f"The webhook receiver URL contains {describe_character(char)}.")
    parts = urlsplit(text)
    if not parts.hostname:
        raise DbtCloudConfigError(f"The webhook receiver URL must be https://host/path, got {text!r}.")
    check_transport(
        parts.scheme,
        parts.hostname,
        what=f"The webhook receiver URL {text!r}",
        risk="dbt Cloud does not deliver to (put the receiver behind a TLS proxy)",
    )
    if parts.username or parts.password:
        raise DbtCloudConfigError("The webhook receiver URL must not carry credentials.")
    return text


class SubscriptionSettings(TypedDict, total=False):
    """A subscription's settings besides its name and URL: ``event_types`` (default: all three), ``job_ids``
    (default: none, meaning every job), ``active`` (default true), ``description``."""

    event_types: Iterable[str]
    job_ids: Iterable[int]
    active: bool
    description: str


def subscription_body(*, name: str, client_url: str, **settings: Unpack[SubscriptionSettings]) -> dict[str, Any]:
    """The request body of a subscription create or update (``SubscriptionRequest`` of the v3 spec), checked."""
    event_types = settings.get("event_types", EVENT_TYPES)
    job_ids = settings.get("job_ids", ())
    active = settings.get("active", True)
    description = settings.get("description", "")
    clean_name = str(name or "").strip()
    if not clean_name or len(clean_name) > 255 or not clean_name.isprintable():
        raise DbtCloudConfigError("A webhook subscription's name must be 1 to 255 printable characters.")
    kinds = list(dict.fromkeys(event_types))
    if not kinds or any(kind not in EVENT_TYPES for kind in kinds):
        raise DbtCloudConfigError(f"event_types must be a non-empty list among {list(EVENT_TYPES)}, got {kinds!r}.")
    jobs = list(job_ids)
    for job in jobs:
        if isinstance(job, bool) or not isinstance(job, int) or not 1 <= job <= _MAX_ID:
            raise DbtCloudConfigError(f"job_ids must be dbt Cloud job IDs (positive integers), got {job!r}.")
    body: dict[str, Any] = {
        "name": clean_name,
        "client_url": check_client_url(client_url),
        "event_types": kinds,
        "job_ids": sorted(set(jobs)),
        "active": bool(active),
    }
    if description and description.strip():
        body["description"] = description.strip()
    return body
