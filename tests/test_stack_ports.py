"""The local stack's ports: a restart right after a stop is not refused for the connections the stopped servers
left in TIME_WAIT, and a port really in use is named with its flag before anything starts."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dbt_cloud_gate.stack.__main__ import main
from dbt_cloud_gate.stack.services import port_is_free


@contextlib.contextmanager
def listening() -> Iterator[int]:
    with contextlib.closing(socket.socket()) as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", 0))
        server.listen()
        yield int(server.getsockname()[1])


def plain_bind_fails(port: int) -> bool:
    """Whether a bind without SO_REUSEADDR (the old check) is refused."""
    with contextlib.closing(socket.socket()) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
        return False


def test_a_port_whose_server_stopped_is_free_though_its_connections_linger() -> None:
    with listening() as port:
        assert not port_is_free(port)  # a listener: in use
    with contextlib.closing(socket.socket()) as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = int(server.getsockname()[1])
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = server.accept()
        accepted.close()  # the server's end closes first, as a stopped server's does: it waits in TIME_WAIT
        time.sleep(0.1)
        client.close()
    assert plain_bind_fails(port)  # what made a restart within a minute fail with "port ... is in use"
    assert port_is_free(port)


def test_a_port_in_use_is_named_with_its_flag_and_nothing_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with listening() as busy:
        started = time.monotonic()
        code = main(["--state-dir", str(tmp_path / "stack"), "--port", "0", "--emulator-port", str(busy)])
    out = capsys.readouterr().out
    assert code == 1 and f"--emulator-port {busy}" in out and "Nothing was started" in out
    assert time.monotonic() - started < 5  # refused before the Prefect server's 20-30 s start
    assert not (tmp_path / "stack" / "prefect").exists() and not (tmp_path / "stack" / "stack.json").exists()
