"""Access URL validation and normalization."""

from __future__ import annotations

import pytest

from dbt_cloud_gate.dbtcloud_api import DbtCloudConfigError, normalize_access_url, run_url
from dbt_cloud_gate.dbtcloud_api.webhooks import check_client_url


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("cloud.getdbt.com", "https://cloud.getdbt.com"),
        ("https://emea.dbt.com/", "https://emea.dbt.com"),
        ("https://emea.dbt.com///", "https://emea.dbt.com"),
        ("ab123.us1.dbt.com", "https://ab123.us1.dbt.com"),
        ("  HTTPS://Acme.GetDbt.com  ", "https://acme.getdbt.com"),
        ("dbt.internal.acme.example:8443", "https://dbt.internal.acme.example:8443"),
        ("http://127.0.0.1:8765", "http://127.0.0.1:8765"),
        ("http://localhost:9000/", "http://localhost:9000"),
        ("http://[::1]:9000", "http://[::1]:9000"),
        ("http://127.8.9.10", "http://127.8.9.10"),
        ("http://LOCALHOST:9000", "http://localhost:9000"),
    ],
)
def test_accepted_urls(given: str, expected: str) -> None:
    assert normalize_access_url(given) == expected


@pytest.mark.parametrize(
    ("given", "problem"),
    [
        ("http://cloud.getdbt.com", "plain http"),
        ("http://10.0.0.5:8000", "plain http"),
        ("", "empty"),
        ("https://cloud.getdbt.com/api/v2", "without a path"),
        ("ftp://cloud.getdbt.com", "must start with https"),
        ("https://user:pw@cloud.getdbt.com", "credentials"),
        ("https://", "no host"),
        ("https://cloud.getdbt.com\t.evil.example.com", "contains a tab at position 24"),
        ("https://cloud.getdbt.com\r\n.evil.example.com", "carriage return"),
        ("https://cloud.getdbt.com\n", "line feed"),
        ("https://cloud.getdbt.com\x7f.evil.example.com", "control character"),
    ],
)
def test_refused_urls(given: str, problem: str) -> None:
    with pytest.raises(DbtCloudConfigError, match=problem):
        normalize_access_url(given)


def test_run_url() -> None:
    assert run_url("cloud.getdbt.com", 1, 2, 3) == "https://cloud.getdbt.com/deploy/1/projects/3/runs/2/"
    assert run_url("emea.dbt.com/", 1, 2) == "https://emea.dbt.com/#/accounts/1/runs/2/"


# Plain http only for loopback literals; the same rule for the access URL (which carries the API token) and the
# webhook receiver URL dbt Cloud delivers to.
PLAIN_HTTP_REFUSED = [
    "http://evil.localhost",
    "http://evil.localhost:8765",
    "http://localhost.",
    "http://localhost.evil.example",
    "http://127.1",
    "http://2130706433",
    "http://0x7f.0.0.1",
    "http://[::ffff:127.0.0.1]",
    "http://127.0.0.1.nip.io",
    "http://[::2]",
    "http://128.0.0.1",
]
PLAIN_HTTP_ALLOWED = ["http://localhost", "http://127.0.0.1:8765", "http://127.255.255.254", "http://[::1]:9000"]


@pytest.mark.parametrize("url", PLAIN_HTTP_REFUSED)
def test_plain_http_is_refused_for_anything_but_a_loopback_literal(url: str) -> None:
    with pytest.raises(DbtCloudConfigError, match=r"plain http.*localhost, 127\.0\.0\.0/8 or ::1"):
        normalize_access_url(url)
    with pytest.raises(DbtCloudConfigError, match="plain http"):
        check_client_url(url + "/dbt-cloud/webhooks")
    https = "https" + url.removeprefix("http")
    assert check_client_url(https + "/hook") == https + "/hook"  # the same host over https is fine


@pytest.mark.parametrize("url", PLAIN_HTTP_ALLOWED)
def test_plain_http_is_allowed_for_loopback_literals(url: str) -> None:
    assert normalize_access_url(url) == url
    assert check_client_url(url + "/dbt-cloud/webhooks") == url + "/dbt-cloud/webhooks"


def test_the_access_url_check_behind_the_credentials_block_is_the_same() -> None:
    from dbt_cloud_gate.blocks.dbt_cloud import DbtCloudCredentials

    with pytest.raises(ValueError, match="plain http"):
        DbtCloudCredentials(account_id=1, api_token="t" * 20, access_url="http://evil.localhost:8000")
    assert DbtCloudCredentials(account_id=1, api_token="t" * 20, access_url="localhost:8000").access_url == (
        "https://localhost:8000"
    )
