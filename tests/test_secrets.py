"""The API token and the access URL are checked where they enter (block, environment, client), and the token never
reaches an error message in any form."""

from __future__ import annotations

import logging
from urllib.parse import quote

import httpx
import pytest
from pydantic import ValidationError

from dbt_cloud_gate.blocks.dbt_cloud import DbtCloudCredentials, resolve_credentials
from dbt_cloud_gate.dbtcloud_api import (
    DbtCloudClient,
    DbtCloudConfigError,
    DbtCloudTransportError,
    RetryPolicy,
    normalize_access_url,
    validate_api_token,
)
from dbt_cloud_gate.dbtcloud_api.emulator import EmulatorServer
from dbt_cloud_gate.dbtcloud_api.errors import scrub, secret_forms
from tests.conftest import ACCOUNT

SECRET = "dbtc_Zq8Kx3Lm9Wv2"
BAD_TOKENS = {
    "newline": (f"{SECRET}\nX-Injected: 1", "line feed"),
    "crlf": (f"{SECRET}\r\nX-Injected: 1", "carriage return"),
    "tab": (f"{SECRET}\tmore", "tab"),
    "space": (f"{SECRET} more", "space"),
    "nul": (f"{SECRET}\x00more", "NUL"),
    "control": (f"{SECRET}\x1bmore", "control character"),
    "non-ascii": (f"{SECRET}é", "non-ASCII"),
    "nbsp": (f"{SECRET}\u00a0more", "non-ASCII"),
    "zero-width": (f"{SECRET}\u200bmore", "non-ASCII"),
}


def leaks(text: str) -> bool:
    return SECRET in text or SECRET[5:] in text


@pytest.mark.parametrize(("token", "problem"), BAD_TOKENS.values(), ids=BAD_TOKENS.keys())
def test_client_refuses_a_token_that_cannot_be_a_header_without_showing_it(
    emulator: EmulatorServer, token: str, problem: str
) -> None:
    with pytest.raises(DbtCloudConfigError, match=problem) as info:
        DbtCloudClient(ACCOUNT, token, emulator.url)
    assert "printable ASCII" in str(info.value)
    assert not leaks(str(info.value)) and not leaks(repr(info.value))
    assert emulator.emulator.requests == []


@pytest.mark.parametrize(("token", "problem"), BAD_TOKENS.values(), ids=BAD_TOKENS.keys())
def test_block_refuses_a_bad_token_without_showing_it(token: str, problem: str) -> None:
    with pytest.raises(ValidationError, match=problem) as info:
        DbtCloudCredentials(account_id=1, api_token=token)
    # str() and repr() (what logs and states show) never hold the input; errors() does unless told not to.
    assert not leaks(str(info.value)) and not leaks(repr(info.value))
    assert not leaks(str(info.value.errors(include_input=False)))


def test_environment_token_is_checked_without_showing_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DBT_CLOUD_ACCOUNT_ID", "5")
    monkeypatch.setenv("DBT_CLOUD_API_TOKEN", f"{SECRET}\nmore")
    with pytest.raises(DbtCloudConfigError, match=r"DBT_CLOUD_.*line feed") as info:
        resolve_credentials()
    assert not leaks(str(info.value))
    monkeypatch.setenv("DBT_CLOUD_API_TOKEN", SECRET)
    monkeypatch.setenv("DBT_CLOUD_ACCESS_URL", "https://cloud.getdbt.com\t.evil.example.com")
    with pytest.raises(DbtCloudConfigError, match="tab"):
        resolve_credentials()
    monkeypatch.setenv("DBT_CLOUD_ACCESS_URL", "emea.dbt.com")
    creds = resolve_credentials()
    assert creds.access_url == "https://emea.dbt.com" and creds.api_token.get_secret_value() == SECRET


def test_surrounding_whitespace_is_trimmed_and_good_tokens_pass() -> None:
    assert validate_api_token(f"  {SECRET}\n") == SECRET
    assert DbtCloudCredentials(account_id=1, api_token=f"{SECRET}\n").api_token.get_secret_value() == SECRET
    for ok in ("dbtu_abc-DEF_123.456~+/=", "x" * 200):
        assert validate_api_token(ok) == ok
    with pytest.raises(DbtCloudConfigError, match="empty"):
        validate_api_token(" \n ")


@pytest.mark.parametrize("account_id", [0, -1, 2**63, True])
def test_block_refuses_account_ids_that_cannot_exist(account_id: int) -> None:
    with pytest.raises(ValidationError, match="account_id"):
        DbtCloudCredentials(account_id=account_id, api_token=SECRET)


@pytest.mark.parametrize(
    "url",
    [
        "https://cloud.getdbt.com\t.evil.example.com",
        "https://cloud.getdbt.com\r\n.evil.example.com",
        "https://cloud.getdbt.com\n",
        "\thttps://cloud.getdbt.com",
        "https://cloud .getdbt.com",
        "https://cloud.getdbt.com\x00.evil.example.com",
        "https://cloud.getdbt.com\u200b.evil.example.com",
        "https://cloud.getdbt.com\u00a0",
    ],
)
def test_access_url_with_whitespace_or_control_characters_is_refused_everywhere(url: str) -> None:
    with pytest.raises(DbtCloudConfigError, match="whitespace or control characters"):
        normalize_access_url(url)
    with pytest.raises(ValidationError, match="whitespace or control characters"):
        DbtCloudCredentials(account_id=1, api_token=SECRET, access_url=url)
    with pytest.raises(DbtCloudConfigError, match="whitespace or control characters"):
        DbtCloudClient(1, SECRET, url)


def test_scrub_removes_every_form_of_the_token() -> None:
    token = "dbtc_a+b/c=d%e'f\"g\\h"
    text = (
        f"raw {token} repr {token!r} bytes {token.encode()!r} url {quote(token, safe='')} "
        f"plus {token.replace(' ', '+')} json {token!r}"
    )
    scrubbed = scrub(text, token)
    for form in secret_forms(token):
        assert form not in scrubbed
    assert "a+b/c" not in scrubbed and "a%2Bb" not in scrubbed and "***" in scrubbed


def test_what_cannot_heal_is_not_retried_and_shows_no_token(
    emulator: EmulatorServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    policy = RetryPolicy(max_attempts=6, backoff_initial_seconds=0.3)
    # An HTTP client whose headers cannot be sent (what a token with a line break once did).
    attempts: list[httpx.Request] = []
    http = httpx.Client(base_url=emulator.url, headers={"X-Trace": "a\nb"}, event_hooks={"request": [attempts.append]})
    with DbtCloudClient(ACCOUNT, SECRET, emulator.url, retry=policy, http_client=http) as client:
        with pytest.raises(DbtCloudTransportError, match="not transient") as info:
            client.get_job(11)
    http.close()
    assert len(attempts) == 1 and emulator.emulator.requests == []
    assert "retrying" not in caplog.text and not leaks(str(info.value)) and not leaks(caplog.text)
