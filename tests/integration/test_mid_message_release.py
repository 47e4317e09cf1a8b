"""A transaction-pool client may start its next message before the answers it is owed
have all come (a FunctionCall's ReadyForQuery, then its Sync's): the server must stay its
client's until that message is sent whole. It was given back at the last ReadyForQuery,
the rest of a large message went to another server (PostgreSQL read it as garbage and
closed: FATAL 08006 `server connection was closed unexpectedly` for the client), and the
reset of the first one, queued behind half a message, timed out (the heavy memory flood's
fault, docs/reliability.md)."""

from __future__ import annotations

import socket
import struct

import psycopg
import pytest
from harness import HOST, make_config, route, wait_until
from wire import split_messages, startup_packet

from pooler.protocol import build

MB = 1024 * 1024
LOCK = 91_417


def _unread(local_port: int, remote_port: int) -> int | None:
    """Bytes the socket (127.0.0.1:local_port -> remote_port) has received and its owner has
    not read yet (rx_queue of /proc/net/tcp); None when there is no such socket."""
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            local, remote, queues = fields[1], fields[2], fields[4]
            if int(local.split(":")[1], 16) == local_port and int(remote.split(":")[1], 16) == (
                remote_port
            ):
                return int(queues.split(":")[1], 16)
    return None


def _answers(sock: socket.socket, ready: int) -> list[tuple[int, bytes]]:
    """Backend messages until the `ready`-th ReadyForQuery or the end of the connection."""
    data = b""
    while True:
        messages, _ = split_messages(data)
        if sum(kind == ord("Z") for kind, _ in messages) >= ready:
            return messages
        chunk = sock.recv(65536)
        if not chunk:
            return messages
        data += chunk


@pytest.mark.timeout(60)
def test_a_server_stays_with_a_client_streaming_a_message_when_its_last_answer_comes(pooler, pg):
    p = pooler(
        make_config(
            route(pool="transaction", pool_size=2, pool_timeout=0, pool_reset_timeout_ms=500),
            workers=1,
        )
    )
    size = 8 * MB  # > client_max_buffer (4 MB): streamed to the server as it arrives
    with (
        psycopg.connect(pg.dsn(dbname="p0"), autocommit=True) as holder,
        socket.create_connection((HOST, p.port), timeout=20) as sock,
    ):
        holder.execute("select pg_advisory_lock(%s)", (LOCK,))
        sock.sendall(startup_packet())
        assert _answers(sock, 1)[-1][0] == ord("Z")
        # an answer owed (it waits for the lock), then the start of a large CopyData
        sock.sendall(build.query(f"select pg_advisory_xact_lock({LOCK})"))
        first = 64 * 1024
        sock.sendall(b"d" + struct.pack("!i", size + 4) + b" " * first)
        my_port = sock.getsockname()[1]
        wait_until(
            lambda: _unread(p.port, my_port) == 0 and _unread(my_port, p.port) is not None,
            message="the pooler has read the start of the CopyData",
        )
        holder.execute("select pg_advisory_unlock(%s)", (LOCK,))  # the last answer comes
        sock.sendall(b" " * (size - first) + build.sync())
        answers = _answers(sock, 2)  # the query's, then the Sync's
        errors = [body for kind, body in answers if kind == ord("E")]
        assert not errors, errors
        assert [kind for kind, _ in answers].count(ord("Z")) == 2, answers
        sock.sendall(build.query("select 42"))
        rows = [body for kind, body in _answers(sock, 1) if kind == ord("D")]
        assert rows and rows[0].endswith(b"42"), rows
    assert not p.log_contains("reset failed")
