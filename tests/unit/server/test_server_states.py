"""A server connection's states (ServerState) and the one method that moves it: every arrow
of the diagram is allowed, every other move raises (tests run with POOLER_STRICT_STATES=1),
and the give-back paths walk the arrows scripted below. Real Worker and Route objects,
transports that only record."""

from __future__ import annotations

import itertools
import types
from typing import Any

import pytest

from pooler.config import parse_text
from pooler.server import backend
from pooler.server.backend import _NEXT, IllegalTransition, ServerConnection, ServerState
from pooler.server.client import ClientConnection
from pooler.server.router import ClientKey
from pooler.server.worker import Worker

LOGIN, IDLE, TAKEN, ACTIVE, RESET, CLOSED = (
    ServerState.LOGIN,
    ServerState.IDLE,
    ServerState.TAKEN,
    ServerState.ACTIVE,
    ServerState.RESET,
    ServerState.CLOSED,
)


class Transport:
    def __init__(self) -> None:
        self.closed = False

    def write(self, data: bytes) -> None:
        pass

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


def test_strict_in_tests():
    assert backend.STRICT_STATES


ARROWS = {(old, new) for old, targets in _NEXT.items() for new in targets}


@pytest.mark.parametrize(("old", "new"), list(itertools.product(ServerState, repeat=2)))
def test_every_arrow_and_only_those(old, new):
    server = ServerConnection.__new__(ServerConnection)
    server.state = old
    server.id = "s"
    server.endpoint = types.SimpleNamespace(host="h")  # type: ignore[assignment]
    if (old, new) in ARROWS:
        server.become(new)
        assert server.state is new
    else:
        with pytest.raises(IllegalTransition, match=f"{old.value} -> {new.value}"):
            server.become(new)
        assert server.state is old


def test_every_state_is_reachable_and_closes():
    reachable = {LOGIN}
    for _ in ServerState:
        reachable |= {new for old, new in ARROWS if old in reachable}
    assert reachable == set(ServerState)
    assert all(CLOSED in _NEXT[state] for state in ServerState if state is not CLOSED)


def setup() -> tuple[Worker, Any, ClientConnection, ServerConnection]:
    config = parse_text(
        """
        log_format "%m\\n"
        listen { host "127.0.0.1" port 6432 }
        storage "pg" { type "remote" host "127.0.0.1" port 5432 }
        database default {
            user default {
                authentication "none"
                storage "pg"
                pool "transaction"
                pool_discard no
            }
        }
        """
    )
    worker = Worker(config, 0, types.SimpleNamespace(slots=None))  # type: ignore[arg-type]
    rule = worker.router.match(ClientKey("db", "user", "127.0.0.1"))
    assert rule is not None
    route = worker.route_for(rule, "db", "user")
    client = ClientConnection(worker, config.listens[0], False)
    client.transport = client.reading.transport = Transport()  # type: ignore[assignment]
    client.state, client.route, client.rule, client.mode = "ready", route, rule, "transaction"
    server = ServerConnection(route, config.storages[0].endpoints[0])
    server.connection_made(Transport())  # type: ignore[arg-type]
    return worker, route, client, server


def logged_in(server: ServerConnection) -> None:
    """What the login's last step does."""
    server.internal = False
    server.become(TAKEN)


Q1 = b"Q\x00\x00\x00\x0dselect 1\x00"
ANSWER = b"C\x00\x00\x00\x0dSELECT 1\x00Z\x00\x00\x00\x05I"


async def test_a_transaction_takes_the_idle_server_and_gives_it_back():
    _worker, route, client, server = setup()
    logged_in(server)
    route.busy.add(server)
    route.release(server)  # TAKEN -> IDLE
    assert server.state is IDLE and list(route.idle) == [server]
    client.data_received(Q1)  # IDLE -> ACTIVE (the fast path)
    assert server.state is ACTIVE and client.server is server
    server.data_received(ANSWER)  # ACTIVE -> TAKEN -> IDLE
    assert server.state is IDLE and client.server is None


async def test_a_client_leaving_mid_answer_sends_its_server_through_a_reset():
    worker, route, client, server = setup()
    logged_in(server)
    route.busy.add(server)
    route.release(server)
    client.data_received(Q1)
    client.connection_lost(None)  # ACTIVE -> RESET, the reset task is spawned
    assert server.state is RESET and server.client is None
    for task in list(worker._tasks):
        task.cancel()
    route.discard(server)  # RESET -> CLOSED
    assert server.state is CLOSED and server.closed


async def test_a_closed_server_is_never_linked_again():
    _worker, _route, client, server = setup()
    logged_in(server)
    server.close()
    with pytest.raises(IllegalTransition, match="closed -> active"):
        server.link(client, 0.0)
