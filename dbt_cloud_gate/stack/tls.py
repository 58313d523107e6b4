"""The local stack's TLS: a certificate authority of its own and a certificate for the loopback addresses, made on
the first start and kept in the stack's state folder, so that clients that speak only https (dbt-cloud-cli, and
anything pointed at an ``https://`` access URL) reach the emulator as they reach dbt Cloud.

Clients trust the authority's certificate (``ca.pem``: ``REQUESTS_CA_BUNDLE``, ``SSL_CERT_FILE``,
``curl --cacert``); the server presents ``emulator.pem`` (its key and certificate, readable by the owner only).
The authority's own private key is not kept: nothing can later issue another certificate that a client trusting
``ca.pem`` would accept. The certificates are valid until 3000, so a second start reuses them and a client keeps
its settings; delete the folder (or the state folder) to make new ones.

Made with ``trustme`` (the ``[local]`` extra): a CA and a leaf certificate with the extensions strict verifiers
check, in three calls, on the ``cryptography`` package the dependencies already bring.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from pathlib import Path

__all__ = ["HOSTS", "LocalTls", "local_tls"]

# The names the certificate covers: the stack binds 127.0.0.1; localhost and ::1 are how people also write it.
HOSTS = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class LocalTls:
    """The certificate files of the stack's https server, and whether this start made them."""

    ca_file: Path
    cert_file: Path
    created: bool

    def server_context(self) -> ssl.SSLContext:
        """A server-side context presenting the certificate."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert_file)
        return context

    def client_context(self) -> ssl.SSLContext:
        """A client-side context that trusts the authority (what a client gets from ``ca.pem``)."""
        return ssl.create_default_context(cafile=str(self.ca_file))


def _write(path: Path, content: bytes, mode: int) -> None:
    """Write ``content`` to ``path`` (created with ``mode``) through a temporary file, replaced at once."""
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.unlink(missing_ok=True)
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(descriptor, "wb") as sink:
        sink.write(content)
    temporary.replace(path)


def _make(folder: Path) -> LocalTls:
    try:
        import trustme
    except ImportError as exc:
        raise RuntimeError("the stack's https certificate needs trustme: pip install 'dbt-cloud-gate[local]'") from exc
    authority = trustme.CA(organization_name="dbt-cloud-gate local stack")
    leaf = authority.issue_cert(*HOSTS, common_name="dbt Cloud emulator (local stack)")
    folder.mkdir(parents=True, exist_ok=True)
    files = LocalTls(folder / "ca.pem", folder / "emulator.pem", created=True)
    _write(files.cert_file, leaf.private_key_and_cert_chain_pem.bytes(), 0o600)
    _write(files.ca_file, authority.cert_pem.bytes(), 0o644)
    return files


def local_tls(folder: Path) -> LocalTls:
    """The certificate files in ``folder``: those of an earlier start when both load, else new ones."""
    kept = LocalTls(folder / "ca.pem", folder / "emulator.pem", created=False)
    try:
        kept.server_context()
        kept.client_context()
    except (OSError, ssl.SSLError):  # missing, unreadable or damaged: make both anew
        return _make(folder)
    return kept
