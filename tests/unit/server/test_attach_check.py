"""`pool_attach_check`: an idle server whose connection PostgreSQL closed, though the worker's
loop has not read that yet, is not given to a client (odyssey polls the server's socket before
attaching it). Driven without a loop: the servers' sockets are one end of a socketpair whose
other end (PostgreSQL's) is closed, or open."""

from __future__ import annotations

import socket
import types
from typing import Any

import pytest

from pooler.config import parse_text
from pooler.server.router import ClientKey
from pooler.server.worker import Worker


class Transport:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def get_extra_info(self, name: str) -> Any:
        return self.sock if name == "socket" else None

    def is_closing(self) -> bool:
        return False


class Server:
    """What Route.next_idle looks at of a ServerConnection."""

    def __init__(self, sock: socket.socket) -> None:
        self.transport = Transport(sock)
        self.closed = False
        self.endpoint = "127.0.0.1:5432"

    def close(self) -> None:
        self.closed = True


def route_with(check: bool):
    config = parse_text(
        f"""
        log_format "%m\\n"
        listen {{ host "127.0.0.1" port 6432 }}
        storage "pg" {{ type "remote" host "127.0.0.1" port 5432 }}
        database default {{ user default {{
            authentication "none" storage "pg" pool "transaction"
            pool_attach_check {"yes" if check else "no"}
        }} }}
        """
    )
    worker = Worker(config, 0, types.SimpleNamespace(slots=None))  # type: ignore[arg-type]
    rule = worker.router.match(ClientKey("db", "user", "127.0.0.1"))
    assert rule is not None
    return worker.route_for(rule, "db", "user")


@pytest.fixture
def pairs():
    made: list[socket.socket] = []

    def pair() -> tuple[socket.socket, socket.socket]:
        ours, theirs = socket.socketpair()
        made.extend((ours, theirs))
        return ours, theirs

    yield pair
    for sock in made:
        sock.close()


def test_a_server_whose_peer_closed_is_closed_and_the_next_one_used(pairs):
    route = route_with(check=True)
    live_ours, _live_theirs = pairs()
    dead_ours, dead_theirs = pairs()
    live, dead = Server(live_ours), Server(dead_ours)
    route.idle.extend([live, dead])  # `dead` was released last: it would be used first
    dead_theirs.sendall(b"E")  # (a FATAL, then the close, as pg_terminate_backend does)
    dead_theirs.close()
    assert route.next_idle() is live
    assert dead.closed and list(route.idle) == [live]


def test_a_server_still_connected_is_used(pairs):
    route = route_with(check=True)
    ours, _theirs = pairs()
    server = Server(ours)
    route.idle.append(server)
    assert route.next_idle() is server and not server.closed


def test_without_pool_attach_check_the_socket_is_not_looked_at(pairs):
    route = route_with(check=False)
    ours, theirs = pairs()
    server = Server(ours)
    route.idle.append(server)
    theirs.close()
    assert route.next_idle() is server  # odyssey's `pool_attach_check no`


def test_a_server_checked_before_is_seen_closed_later(pairs):
    """The route keeps a poll object per server (the check runs every transaction): one
    kept from an earlier check still sees the close."""
    route = route_with(check=True)
    ours, theirs = pairs()
    server = Server(ours)
    route.idle.append(server)
    assert route.next_idle() is server  # checked once: its poll object is kept
    theirs.close()
    assert route.next_idle() is None
    assert server.closed and not route.idle


def test_a_gone_server_s_poll_object_is_dropped(pairs):
    route = route_with(check=True)
    servers = []
    for _ in range(3):
        ours, _theirs = pairs()
        servers.append(Server(ours))
        route.idle.append(servers[-1])
        assert route.next_idle() is servers[-1]
    assert len(route._pollers) == 3
    for server in servers:
        server.holds_slot = False
        route.forget(server)  # (connection_lost)
    assert route._pollers == {}
