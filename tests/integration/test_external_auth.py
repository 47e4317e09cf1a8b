"""`authentication "external"` with `external_auth_socket_path`: a real agent on a Unix socket
(written here as odyssey's test agent is: it accepts user "postgres" with token "some-token")."""

from __future__ import annotations

import socketserver
import struct
import threading
from pathlib import Path

import psycopg
import pytest
from harness import make_config, route


def read_message(rfile) -> bytes:
    (size,) = struct.unpack("<Q", rfile.read(8))
    return rfile.read(size)


def send_message(wfile, body: bytes) -> None:
    wfile.write(struct.pack("<Q", len(body)) + body)


class Agent(socketserver.StreamRequestHandler):
    asked: list[tuple[bytes, bytes]]

    def handle(self) -> None:
        user, token = read_message(self.rfile), read_message(self.rfile)
        self.server.asked.append((user, token))  # type: ignore[attr-defined]
        ok = user == b"postgres\0" and token == b"some-token\0"
        send_message(self.wfile, b"\x01" if ok else b"\x00")
        send_message(self.wfile, b"test-id" if ok else b"failed-id")


@pytest.fixture
def agent(tmp_path: Path):
    path = tmp_path / "external-auth.sock"
    server = socketserver.ThreadingUnixStreamServer(str(path), Agent)
    server.asked = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def external_config(socket_path: str) -> str:
    return make_config(
        route("p0", "postgres", authentication="external"),
        external_auth_socket_path=socket_path,
    )


def test_the_agent_accepts_a_token(pooler, agent):
    p = pooler(external_config(agent.server_address))
    assert p.sql("select current_user", dbname="p0", password="some-token") == [("postgres",)]
    assert agent.asked == [(b"postgres\0", b"some-token\0")]
    assert p.log_contains("user 'p0.postgres' was authenticated with external_id: test-id")


def test_the_agent_refuses_a_wrong_token(pooler, agent):
    p = pooler(external_config(agent.server_address))
    with pytest.raises(
        psycopg.OperationalError, match='password authentication failed for user "postgres"'
    ):
        p.sql("select 1", dbname="p0", password="wrong-token")
    assert p.log_contains(r"external authentication failed: the external agent refused it")


def test_no_agent_listening_refuses_the_login_and_says_why(pooler, tmp_path):
    missing = str(tmp_path / "nobody.sock")
    p = pooler(external_config(missing))
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        p.sql("select 1", dbname="p0", password="some-token")
    assert p.log_contains(f"external authentication failed: failed to connect to {missing}")
