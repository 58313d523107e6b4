"""The local stack's https piece without the stack: the certificate made once and kept, and one emulator served on
http and https at once, each answering with its own address. Real sockets on loopback; the whole stack (with
dbt-cloud-cli pointed at it) is tests/test_stack.py's."""

from __future__ import annotations

import asyncio
import ssl
import stat
from pathlib import Path

import certifi
import httpx
import pytest

from dbt_cloud_gate.dbtcloud_api import AsyncDbtCloudClient, DbtCloudClient, DbtCloudError
from dbt_cloud_gate.dbtcloud_api._tls import verification_context
from dbt_cloud_gate.dbtcloud_api.emulator import Emulator
from dbt_cloud_gate.stack.services import dbt_cloud_emulator
from dbt_cloud_gate.stack.tls import local_tls
from tests.conftest import ACCOUNT, FAST_RETRY, TOKEN, data, fast_jobs

pytest.importorskip("trustme", reason="the [local] extra's trustme makes the stack's certificate")


def test_the_certificate_is_made_once_and_kept(tmp_path: Path) -> None:
    made = local_tls(tmp_path / "tls")
    authority = made.ca_file.read_bytes()
    assert made.created and authority.startswith(b"-----BEGIN CERTIFICATE-----")
    assert b"PRIVATE KEY" not in authority  # the authority's key is kept nowhere
    assert stat.S_IMODE(made.cert_file.stat().st_mode) == 0o600  # the server's private key
    kept = local_tls(tmp_path / "tls")
    assert not kept.created and kept.ca_file.read_bytes() == authority
    made.cert_file.write_text("damaged")
    remade = local_tls(tmp_path / "tls")
    assert remade.created and remade.ca_file.read_bytes() != authority


def test_one_emulator_on_http_and_https_each_with_its_own_address(tmp_path: Path) -> None:
    tls = local_tls(tmp_path / "tls")
    emulator = Emulator(fast_jobs(), account_id=ACCOUNT, token=TOKEN)
    path = f"/api/v2/accounts/{ACCOUNT}/jobs/11/run/"
    headers = {"Authorization": f"Token {TOKEN}"}
    with dbt_cloud_emulator(emulator) as plain, dbt_cloud_emulator(emulator, 0, tls.server_context()) as secure:
        assert plain.url.startswith("http://127.0.0.1:") and secure.url.startswith("https://127.0.0.1:")
        with httpx.Client(verify=tls.client_context(), headers=headers, timeout=10) as client:
            over_tls = data(client.post(secure.url + path, json={"cause": "https"}))
            over_http = data(client.post(plain.url + path, json={"cause": "http"}))
            # The same account behind both: the run started over http is read over https.
            assert data(client.get(f"{secure.url}/api/v2/accounts/{ACCOUNT}/runs/{over_http['id']}/"))["id"]
        assert over_tls["href"].startswith(f"{secure.url}/deploy/{ACCOUNT}/")
        assert over_http["href"].startswith(f"{plain.url}/deploy/{ACCOUNT}/")
        # A client that does not trust the stack's authority refuses the certificate.
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(secure.url + path, timeout=10, verify=ssl.create_default_context())
        # The certificate names the loopback addresses: localhost verifies too.
        local = secure.url.replace("127.0.0.1", "localhost")
        jobs = httpx.get(f"{local}/api/v2/accounts/{ACCOUNT}/jobs/", headers=headers, verify=str(tls.ca_file))
        assert [job["id"] for job in data(jobs)] == [11, 12, 13, 14]


def test_dbt_cloud_clients_share_one_verification_context_that_follows_ssl_cert_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tls = local_tls(tmp_path / "tls")
    emulator = Emulator(fast_jobs(), account_id=ACCOUNT, token=TOKEN)
    with dbt_cloud_emulator(emulator, 0, tls.server_context()) as secure:
        monkeypatch.delenv("SSL_CERT_DIR", raising=False)
        monkeypatch.setenv("SSL_CERT_FILE", str(tls.ca_file))  # as a user trusts a private authority
        first, second = verification_context(), verification_context()
        assert first is second  # built once per process, not per client
        with DbtCloudClient(ACCOUNT, TOKEN, secure.url, retry=FAST_RETRY) as client:
            assert client.get_job(11).id == 11

        async def read_async() -> int:
            async with AsyncDbtCloudClient(ACCOUNT, TOKEN, secure.url, retry=FAST_RETRY) as client:
                return (await client.get_job(12)).id

        assert asyncio.run(read_async()) == 12
        # Another bundle, another context: one that does not hold the authority refuses the emulator's certificate.
        monkeypatch.setenv("SSL_CERT_FILE", certifi.where())
        assert verification_context() is not first
        with (
            DbtCloudClient(ACCOUNT, TOKEN, secure.url, retry=FAST_RETRY) as client,
            pytest.raises(DbtCloudError) as refused,
        ):
            client.get_job(11)
        assert "CERTIFICATE_VERIFY_FAILED" in repr(refused.value) + repr(refused.value.__cause__)
