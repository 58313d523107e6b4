"""The dbt Cloud credentials block, and where credentials come from when a flow is given none."""

from __future__ import annotations

from typing import Annotated, Any

from prefect.blocks.core import Block
from pydantic import AfterValidator, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from dbt_cloud_gate.dbtcloud_api import AsyncDbtCloudClient, DbtCloudClient, DbtCloudConfigError, normalize_access_url
from dbt_cloud_gate.dbtcloud_api.client import validate_api_token
from dbt_cloud_gate.dbtcloud_api.ratelimit import shared_limiter
from dbt_cloud_gate.dbtcloud_api.types import DbtCloudId
from dbt_cloud_gate.dbtcloud_api.urls import DEFAULT_ACCESS_URL

# The rules of the credentials' fields, each a type that the block and the environment's settings both use.
# A token's error names the bad character's kind and position, never the token.
ApiToken = Annotated[SecretStr, AfterValidator(lambda value: SecretStr(validate_api_token(value.get_secret_value())))]
AccessUrl = Annotated[str, AfterValidator(normalize_access_url)]


class DbtCloudCredentials(Block):
    """Credentials for one dbt Cloud account: account ID, API token and access URL.

    Hands out ready clients of the dbt Cloud API v2. The token is a secret: it is never logged or shown.
    """

    # The slug (dbt-cloud-gate-credentials) must never change once registered; it differs from
    # prefect-dbt's "dbt-cloud-credentials" so that both collections can live in one workspace.
    _block_type_name = "dbt Cloud Gate Credentials"
    _block_type_slug = "dbt-cloud-gate-credentials"
    _description = "Account ID, API token and access URL of a dbt Cloud account, for dbt-cloud-gate's flows."
    _documentation_url = "https://docs.getdbt.com/dbt-cloud/api-v2"  # type: ignore[assignment]
    _code_example = """
```python
from dbt_cloud_gate.blocks.dbt_cloud import DbtCloudCredentials

DbtCloudCredentials(
    account_id=12345,
    api_token="dbtc_...",                # a service token with Job Runner or Job Admin permission
    access_url="https://emea.dbt.com",   # your region's or cell's access URL
).save("prod")

credentials = DbtCloudCredentials.load("prod")
with credentials.get_client() as client:
    print(client.get_job(678).name)
```
"""

    # A validation error must not echo the token it refused (pydantic shows the input by default).
    model_config = ConfigDict(hide_input_in_errors=True)

    @model_validator(mode="before")
    @classmethod
    def _from_prefect_dbt(cls, data: Any) -> Any:
        """Take prefect-dbt's ``DbtCloudCredentials`` (``account_id``, ``api_key``, ``domain``) as it is: an instance,
        or its saved fields; no dependency on prefect-dbt."""
        return from_prefect_dbt(data) if not isinstance(data, cls) else data

    account_id: DbtCloudId = Field(..., title="Account ID", description="The numeric ID of the dbt Cloud account.")
    api_token: ApiToken = Field(
        ..., title="API token", description="A dbt Cloud service token (or personal access token)."
    )
    access_url: AccessUrl = Field(
        default=DEFAULT_ACCESS_URL,
        title="Access URL",
        description="Your account's access URL: cloud.getdbt.com, emea.dbt.com, ab123.us1.dbt.com, a single-tenant host.",
    )

    def get_client(self, **options: Any) -> DbtCloudClient:
        """A blocking client for this account (close it, or use it as a context manager).

        Every client of the account in this process shares one rate limiter (``DBT_CLOUD_RATE_LIMIT_PER_MINUTE``,
        default 4,500 a minute) unless ``rate_limiter`` is given.
        """
        options.setdefault("rate_limiter", shared_limiter(self.access_url, self.account_id))
        return DbtCloudClient(self.account_id, self.api_token.get_secret_value(), self.access_url, **options)

    def get_async_client(self, **options: Any) -> AsyncDbtCloudClient:
        """An asyncio client for this account, sharing the account's rate limiter like :meth:`get_client`."""
        options.setdefault("rate_limiter", shared_limiter(self.access_url, self.account_id))
        return AsyncDbtCloudClient(self.account_id, self.api_token.get_secret_value(), self.access_url, **options)


class DbtCloudSettings(BaseSettings):
    """Credentials from the environment: ``DBT_CLOUD_ACCOUNT_ID``, ``DBT_CLOUD_API_TOKEN``, ``DBT_CLOUD_ACCESS_URL``,
    or ``DBT_CLOUD_CREDENTIALS_BLOCK``, the name of a saved :class:`DbtCloudCredentials` block."""

    model_config = SettingsConfigDict(env_prefix="DBT_CLOUD_", extra="ignore", hide_input_in_errors=True)

    account_id: DbtCloudId | None = None
    api_token: ApiToken | None = None
    access_url: AccessUrl = DEFAULT_ACCESS_URL
    credentials_block: str | None = None

    @field_validator("api_token", mode="before")
    @classmethod
    def _empty_token_is_unset(cls, value: Any) -> Any:
        text = value.get_secret_value() if isinstance(value, SecretStr) else value
        return None if isinstance(text, str) and not text.strip() else value


PREFECT_DBT_SLUG = "dbt-cloud-credentials"


def from_prefect_dbt(data: Any) -> Any:
    """prefect-dbt's credentials (an instance, or a dict of its fields) as this block's fields; anything else as
    it is."""
    fields = data if isinstance(data, dict) else None
    if fields is None and hasattr(data, "api_key") and hasattr(data, "account_id"):
        fields = {"account_id": data.account_id, "api_key": data.api_key, "domain": getattr(data, "domain", None)}
    if fields is None or "api_key" not in fields or "api_token" in fields:
        return data
    converted = {"account_id": fields.get("account_id"), "api_token": fields["api_key"]}
    if fields.get("domain"):
        converted["access_url"] = fields["domain"]
    return converted


def resolve_credentials(credentials: DbtCloudCredentials | str | None = None) -> DbtCloudCredentials:
    """The credentials a flow uses: the block given, else the saved block named, else the environment.

    A string is the name of a saved block. With nothing given, ``DBT_CLOUD_CREDENTIALS_BLOCK`` names a block, or
    ``DBT_CLOUD_ACCOUNT_ID`` and ``DBT_CLOUD_API_TOKEN`` (and optionally ``DBT_CLOUD_ACCESS_URL``) are used.
    """
    if isinstance(credentials, DbtCloudCredentials):
        return credentials
    if isinstance(credentials, str):
        return _load_block(credentials, "the credentials parameter")
    try:
        settings = DbtCloudSettings()
    except ValidationError as exc:
        raise DbtCloudConfigError(f"The DBT_CLOUD_* environment settings are invalid: {_problems(exc)}") from None
    if settings.credentials_block:
        return _load_block(settings.credentials_block, "DBT_CLOUD_CREDENTIALS_BLOCK")
    missing = [
        name
        for name, value in (("DBT_CLOUD_ACCOUNT_ID", settings.account_id), ("DBT_CLOUD_API_TOKEN", settings.api_token))
        if not value
    ]
    if missing:
        raise DbtCloudConfigError(
            "No dbt Cloud credentials: pass a DbtCloudCredentials block (or the name of a saved one) as "
            f"`credentials`, set DBT_CLOUD_CREDENTIALS_BLOCK to a saved block's name, or set {' and '.join(missing)}"
            f"{' (DBT_CLOUD_ACCOUNT_ID is set)' if settings.account_id and len(missing) == 1 else ''}."
        )
    if settings.account_id is None or settings.api_token is None:  # pragma: no cover - `missing` said so above
        raise DbtCloudConfigError("DBT_CLOUD_ACCOUNT_ID and DBT_CLOUD_API_TOKEN must both be set.")
    try:
        return DbtCloudCredentials(
            account_id=settings.account_id, api_token=settings.api_token, access_url=settings.access_url
        )
    except ValidationError as exc:
        raise DbtCloudConfigError(f"The DBT_CLOUD_* environment settings are invalid: {_problems(exc)}") from None


def _problems(exc: ValidationError) -> str:
    """The problems of a validation error, one per setting, named as the environment variable that holds it,
    without the input values (a token among them)."""
    return "; ".join(
        f"{_variable(error['loc'])}: {error['msg']}" for error in exc.errors(include_input=False, include_url=False)
    )


def _variable(location: tuple[int | str, ...]) -> str:
    field = str(location[0]) if location else ""
    return f"DBT_CLOUD_{field.upper()}" if field in DbtCloudSettings.model_fields else field or "value"


def _load_block(name: str, where: str) -> DbtCloudCredentials:
    if name.startswith(f"{PREFECT_DBT_SLUG}/"):
        return _load_prefect_dbt_block(name.split("/", 1)[1], where)
    block_name = name.split("/", 1)[1] if name.startswith(f"{DbtCloudCredentials._block_type_slug}/") else name
    try:
        # Sync whoever calls: inside an async flow, load() would hand back a coroutine.
        loaded = DbtCloudCredentials.load(block_name, _sync=True)  # type: ignore[call-arg]
    except ValueError as exc:
        # Coming from prefect-dbt: its saved DbtCloudCredentials block of that name serves as well.
        found = _read_prefect_dbt_block(block_name)
        if found is not None:
            return found
        raise DbtCloudConfigError(
            f"No saved dbt Cloud credentials block named {block_name!r} ({where}), neither a dbt Cloud Gate "
            f"Credentials block nor prefect-dbt's dbt Cloud Credentials: create it with "
            f"DbtCloudCredentials(...).save({block_name!r}) or in the Prefect UI. ({exc})"
        ) from None
    if not isinstance(loaded, DbtCloudCredentials):  # pragma: no cover - load() returns the class it is called on
        raise DbtCloudConfigError(f"Block {block_name!r} is not a dbt Cloud Gate Credentials block.")
    return loaded


def _read_prefect_dbt_block(name: str) -> DbtCloudCredentials | None:
    """prefect-dbt's saved ``DbtCloudCredentials`` of that name, read as a block document (prefect-dbt need not be
    installed), or None when there is none."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    try:
        with get_client(sync_client=True) as client:
            document = client.read_block_document_by_name(name, block_type_slug=PREFECT_DBT_SLUG, include_secrets=True)
    except (ObjectNotFound, ValueError):
        return None
    return DbtCloudCredentials.model_validate(from_prefect_dbt(dict(document.data)))


def _load_prefect_dbt_block(name: str, where: str) -> DbtCloudCredentials:
    found = _read_prefect_dbt_block(name)
    if found is None:
        raise DbtCloudConfigError(f"No saved prefect-dbt dbt Cloud Credentials block named {name!r} ({where}).")
    return found
