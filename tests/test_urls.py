"""Access URL validation and normalization."""

from __future__ import annotations

import pytest

from dbt_cloud_gate.dbtcloud_api import DbtCloudConfigError, normalize_access_url, run_url


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
