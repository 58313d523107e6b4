"""The emulator on loopback HTTP.

Server stack: the standard library's ``ThreadingHTTPServer`` (HTTP/1.1, keep-alive, a thread per connection).
It adds no dependency, starts in milliseconds inside a test, and gives byte-level control of the socket,
which the fault injection needs: dropping a connection without an answer, or after the request was
processed (a lost trigger response), is a plain ``close()`` here and impossible through an ASGI server.
Given an ``ssl.SSLContext`` it serves https, for clients that speak nothing else (dbt-cloud-cli); the TLS handshake
runs in the connection's thread, so one slow client does not hold the others.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from dbt_cloud_gate.dbtcloud_api.emulator.routes import Emulator

logger = logging.getLogger("dbt_cloud_gate.dbtcloud_api.emulator")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "dbt-cloud-emulator"
    emulator: Emulator
    origin: str  # this server's address: one emulator can serve http and https at once

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in two writes: without TCP_NODELAY, Nagle's algorithm holds the body until the
        # client's delayed ACK (~40 ms), capping a keep-alive connection at ~25 requests a second.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if isinstance(self.connection, ssl.SSLSocket):
            self.connection.do_handshake()

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        reply = self.emulator.handle(self.command, self.path, dict(self.headers.items()), body, origin=self.origin)
        if reply.delay:
            time.sleep(reply.delay)
        if reply.drop:
            # Close without a byte of answer: the client sees a dropped connection.
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        self.wfile.write(reply.body)

    do_GET = do_POST = do_DELETE = do_PUT = do_PATCH = _serve

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        logger.debug("%s - %s", self.address_string(), format % args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024


class EmulatorServer:
    """Runs an :class:`Emulator` on ``127.0.0.1`` in a background thread. ``port=0`` picks a free port.

    ``ssl_context`` (a server context holding the certificate): serve https instead of http. Several servers may
    serve one emulator (the local stack serves it on http and https): each answers with its own address.
    """

    def __init__(
        self, emulator: Emulator, host: str = "127.0.0.1", port: int = 0, *, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self.emulator = emulator
        self._server = _Server((host, port), _Handler)
        if ssl_context is not None:
            self._server.socket = ssl_context.wrap_socket(
                self._server.socket, server_side=True, do_handshake_on_connect=False
            )
        self.host = str(self._server.server_address[0])
        self.port = int(self._server.server_address[1])
        scheme = "http" if ssl_context is None else "https"
        self.url = f"{scheme}://{self.host}:{self.port}"
        self._server.RequestHandlerClass = type("Handler", (_Handler,), {"emulator": emulator, "origin": self.url})
        emulator.base_url = self.url
        emulator.scheme = scheme
        self._thread: threading.Thread | None = None

    def start(self) -> EmulatorServer:
        """Serve in a daemon thread; returns self."""
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="dbt-cloud-emulator", daemon=True
        )
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve in this thread until interrupted."""
        self._server.serve_forever()

    def stop(self) -> None:
        """Stop serving and close the socket (and stop sending webhook deliveries)."""
        self.emulator.webhooks.close()
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> EmulatorServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
