"""A loopback TLS relay with a throwaway CA, for clients that only speak https (prefect-dbt) to reach the emulator.

``TlsRelay(upstream_port)`` makes a CA and a leaf certificate for ``127.0.0.1``/``localhost`` at start (trustme's;
the CA's certificate is written to a temporary directory, removed on close, and no key is kept on disk), listens
on ``127.0.0.1`` only, terminates TLS and pipes the bytes to the emulator's plain-HTTP port. Point a client at
``https://127.0.0.1:<port>`` and trust ``ca_file`` (``SSL_CERT_FILE=<ca_file>`` for httpx's default context).
"""

from __future__ import annotations

import asyncio
import shutil
import ssl
import tempfile
import threading
from pathlib import Path

import trustme

LOOPBACK = "127.0.0.1"


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
        pass
    finally:
        try:
            writer.close()
        except (ConnectionError, RuntimeError):
            pass


class TlsRelay:
    """TLS on ``127.0.0.1:<port>`` in front of a plain-TCP upstream on ``127.0.0.1:<upstream_port>``."""

    def __init__(self, upstream_port: int) -> None:
        if not 0 < upstream_port < 65536:
            raise ValueError(f"upstream_port must be a TCP port number, got {upstream_port!r}")
        self.upstream_port = upstream_port
        self._dir = Path(tempfile.mkdtemp(prefix="dcg-tls-relay-"))
        # A throwaway CA (trustme's), and its leaf for 127.0.0.1 and localhost loaded into the server's context.
        ca = trustme.CA(organization_name="dbt-cloud-gate bench")
        self.ca_file = self._dir / "ca.pem"
        ca.cert_pem.write_to_path(str(self.ca_file))
        self._context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert(LOOPBACK, "localhost").configure_cert(self._context)
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    @property
    def domain(self) -> str:
        """``host:port`` as prefect-dbt's ``domain`` setting wants it."""
        return f"{LOOPBACK}:{self.port}"

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(LOOPBACK, self.upstream_port)
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(_pipe(client_reader, up_writer), _pipe(up_reader, client_writer))

    def start(self) -> TlsRelay:
        """Listen (a free port) and serve in a daemon thread; returns self."""
        ready = threading.Event()

        async def serve() -> None:
            self._server = await asyncio.start_server(self._handle, LOOPBACK, 0, ssl=self._context)
            self.port = int(self._server.sockets[0].getsockname()[1])
            ready.set()

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(serve())
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="tls-relay", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the TLS relay did not start listening within 10 s")
        return self

    def close(self) -> None:
        """Stop listening and remove the CA's certificate."""
        if self._server is not None:
            self._loop.call_soon_threadsafe(self._server.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=5)
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> TlsRelay:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
