"""A server connection's states (ServerState) and the one method that moves it: every arrow
of the diagram is allowed, every other move raises (tests run with POOLER_STRICT_STATES=1),
and the give-back paths walk the arrows scripted below. Real Worker and Route objects,
transports that only record."""

from __future__ import annotations

import itertools
import types
from typing import Any

import pytest
from standins import Recorder

from pooler.config import parse_text
from pooler.server import lifecycle
from pooler.server.backend import ServerConnection
from pooler.server.client import ClientConnection
from pooler.server.lifecycle import (
    SERVER_NEXT as _NEXT,
    ClientState,
    IllegalTransition,
    ServerState,
)
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


def test_strict_in_tests():
    assert lifecycle.STRICT_STATES


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
    client.transport = client.reading.transport = Recorder()  # type: ignore[assignment]
    client.state, client.route, client.rule = ClientState.IDLE, route, rule
    client.mode = "transaction"
    server = ServerConnection(route, config.storages[0].endpoints[0])
    server.connection_made(Recorder())  # type: ignore[arg-type]
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


# --- scripted relay: events in, states and bytes out ------------------------------------


def message(kind: str, body: bytes = b"") -> bytes:
    return kind.encode() + (len(body) + 4).to_bytes(4, "big") + body


def query(sql: str) -> bytes:
    return message("Q", sql.encode() + b"\0")


def ready(status: str) -> bytes:
    return message("Z", status.encode())


def done(tag: str) -> bytes:
    return message("C", tag.encode() + b"\0")


SELECT = query("select 1")
PARSE = message("P", b"\0select 1\0\0\0")
BIND = message("B", b"\0\0\0\0\0\0\0\0")
EXECUTE = message("E", b"\0\0\0\0\0")
SYNC = message("S")
FLUSH = message("H")

# (event, data, server state after, client linked after, to the server, to the client)
SCRIPTS = {
    "a query and its answer": [
        ("client", SELECT, ACTIVE, True, SELECT, b""),
        ("server", done("SELECT 1") + ready("I"), IDLE, False, b"", ...),
    ],
    "a transaction block keeps its server": [
        ("client", query("begin"), ACTIVE, True, query("begin"), b""),
        ("server", done("BEGIN") + ready("T"), ACTIVE, True, b"", ...),
        ("client", SELECT, ACTIVE, True, SELECT, b""),
        ("server", done("SELECT 1") + ready("T"), ACTIVE, True, b"", ...),
        ("client", query("commit"), ACTIVE, True, query("commit"), b""),
        ("server", done("COMMIT") + ready("I"), IDLE, False, b"", ...),
    ],
    "an extended batch keeps its server until its Sync is answered": [
        ("client", PARSE + BIND + EXECUTE, ACTIVE, True, ..., b""),
        ("client", SYNC, ACTIVE, True, SYNC, b""),
        (
            "server",
            message("1") + message("2") + done("SELECT 1") + ready("I"),
            IDLE,
            False,
            b"",
            ...,
        ),
    ],
    "a lone Flush owes nothing: the server goes straight back": [
        ("client", FLUSH, IDLE, False, FLUSH, b""),
    ],
    "a message still arriving keeps its server (fault 7)": [
        ("client", SELECT[:7], ACTIVE, True, b"", b""),
        ("client", SELECT[7:], ACTIVE, True, SELECT, b""),
        ("server", done("SELECT 1") + ready("I"), IDLE, False, b"", ...),
    ],
    "a client that leaves owing answers sends its server to a reset": [
        ("client", SELECT, ACTIVE, True, SELECT, b""),
        ("client_lost", b"", RESET, False, b"", b""),
    ],
}


@pytest.mark.parametrize("name", list(SCRIPTS))
async def test_scripted_relay(name):
    worker, route, client, server = setup()
    client.transport = client.reading.transport = Recorder()  # type: ignore[assignment]
    server.transport = server.reading.transport = Recorder()  # type: ignore[assignment]
    logged_in(server)
    route.busy.add(server)
    route.release(server)
    try:
        for step, (event, data, state, linked, to_server, to_client) in enumerate(SCRIPTS[name]):
            if event == "client":
                client.data_received(data)
            elif event == "server":
                server.data_received(data)
            else:
                client.connection_lost(None)
            where = f"{name}, step {step}"
            assert server.state is state, where
            assert (client.server is server) is linked, where
            sent, received = server.transport.take(), client.transport.take()  # type: ignore[union-attr]
            if to_server is not ...:
                assert sent == to_server, where
            if to_client is ...:
                assert received == data, where  # relayed as it came
            else:
                assert received == to_client, where
    finally:
        for task in list(worker._tasks):
            task.cancel()


async def test_statement_pool_refuses_begin_locally_and_a_left_open_transaction_in_place():
    worker, route, client, server = setup()
    client.mode = "statement"
    client.transport = client.reading.transport = Recorder()  # type: ignore[assignment]
    server.transport = server.reading.transport = Recorder()  # type: ignore[assignment]
    logged_in(server)
    route.busy.add(server)
    route.release(server)
    try:
        client.data_received(query("begin"))  # answered here: nothing reaches the server
        assert server.state is IDLE and client.server is None
        assert server.transport.take() == b""  # type: ignore[union-attr]
        answer = client.transport.take()  # type: ignore[attr-defined]
        assert answer[:1] == b"E" and b"0A000" in answer and answer.endswith(ready("I"))
        client.data_received(query("update t set x = 1; begin"))
        server.data_received(done("UPDATE 1") + done("BEGIN") + ready("T"))
        answer = client.transport.take()  # type: ignore[attr-defined]
        assert answer.startswith(done("UPDATE 1") + done("BEGIN") + b"E")
        assert answer.endswith(ready("I")) and ready("T") not in answer
        assert server.state is RESET  # rolled back before it is lent again
    finally:
        for task in list(worker._tasks):
            task.cancel()
