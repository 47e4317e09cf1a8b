"""A client connection's states (ClientState) and the one method that moves it: every arrow
of the diagram (lifecycle.CLIENT_NEXT) is allowed, every other move raises (tests run with
POOLER_STRICT_STATES=1), and the relay's events walk the arrows scripted below: bytes in,
the client's state and the bytes written out. Real Worker, Route, ClientConnection and
ServerConnection objects; transports that only record."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from standins import Recorder, worker_and_route

from pooler.server.backend import ServerConnection
from pooler.server.client import ClientConnection
from pooler.server.lifecycle import (
    BETWEEN_TRANSACTIONS,
    CLIENT_NEXT,
    LOGGING_IN,
    RELAYING,
    ClientState,
    IllegalTransition,
    ServerState,
)
from pooler.server.login import Login
from pooler.server.prepared import ClientStatements, parse_of
from pooler.server.worker import Worker

STARTUP, LOGIN_WAITING, CANCEL, CONSOLE, IDLE, WAITING, LINKED, CLOSED = ClientState
ARROWS = {(old, new) for old, targets in CLIENT_NEXT.items() for new in targets}


@pytest.mark.parametrize(("old", "new"), list(itertools.product(ClientState, repeat=2)))
def test_every_arrow_and_only_those(old, new):
    client = ClientConnection.__new__(ClientConnection)
    client.state = old
    client.log_ctx = None  # type: ignore[assignment]
    if (old, new) in ARROWS:
        client.become(new)
        assert client.state is new
    else:
        with pytest.raises(IllegalTransition, match=f"{old.value} -> {new.value}"):
            client.become(new)
        assert client.state is old


def test_every_state_is_reachable_and_closes():
    reachable = {STARTUP}
    for _ in ClientState:
        reachable |= {new for old, new in ARROWS if old in reachable}
    assert reachable == set(ClientState)
    assert all(CLOSED in CLIENT_NEXT[state] for state in ClientState if state is not CLOSED)
    assert not CLIENT_NEXT[CLOSED]


def test_the_state_groups():
    assert {IDLE, WAITING, LINKED} == RELAYING
    assert {STARTUP, LOGIN_WAITING, CANCEL} == LOGGING_IN
    assert {IDLE, LINKED, CONSOLE} == BETWEEN_TRANSACTIONS  # not WAITING: a query waits


def setup(pool_size: int = 0) -> tuple[Worker, Any, ClientConnection]:
    worker, route = worker_and_route(
        f"""
        log_format "%m\\n"
        listen {{ host "127.0.0.1" port 6432 }}
        storage "pg" {{ type "remote" host "127.0.0.1" port 5432 }}
        database default {{
            user default {{
                authentication "none"
                storage "pg"
                pool "transaction"
                pool_size {pool_size}
                pool_discard no
            }}
        }}
        """,
        "db",
        "user",
    )
    return worker, route, new_client(worker, route)


def new_client(worker: Worker, route: Any) -> ClientConnection:
    client = ClientConnection(worker, worker.config.listens[0], False)
    client.transport = client.reading.transport = Recorder()  # type: ignore[assignment]
    client.state, client.route, client.rule = IDLE, route, route.rule
    client.mode = "transaction"
    worker.clients.add(client)
    return client


def idle_server(route: Any) -> ServerConnection:
    server = ServerConnection(route, route.storage.endpoints[0])
    server.connection_made(Recorder())  # type: ignore[arg-type]
    server.internal = False
    server.become(ServerState.TAKEN)  # (what the login's last step does)
    route.busy.add(server)
    route.release(server)
    return server


def message(kind: str, body: bytes = b"") -> bytes:
    return kind.encode() + (len(body) + 4).to_bytes(4, "big") + body


SELECT = message("Q", b"select 1\0")
ANSWER = message("C", b"SELECT 1\0") + message("Z", b"I")
IN_TRANSACTION = message("C", b"BEGIN\0") + message("Z", b"T")
TERMINATE = message("X")


async def test_idle_linked_idle_per_transaction():
    _worker, route, client = setup()
    server = idle_server(route)
    client.data_received(SELECT)  # idle -> linked: the idle server fits as it is
    assert client.state is LINKED and client.server is server
    assert server.transport.take() == SELECT  # type: ignore[union-attr]
    server.data_received(ANSWER)  # linked -> idle: the server goes back
    assert client.state is IDLE and client.server is None
    assert client.transport.take() == ANSWER  # type: ignore[attr-defined]
    assert server.state is ServerState.IDLE


async def test_a_transaction_keeps_the_server_linked():
    _worker, route, client = setup()
    server = idle_server(route)
    client.data_received(message("Q", b"begin\0"))
    server.data_received(IN_TRANSACTION)
    assert client.state is LINKED and client.server is server  # the transaction is open
    client.data_received(SELECT)
    server.data_received(ANSWER)
    assert client.state is IDLE


async def test_waiting_then_handed_the_server_released_by_another():
    _worker, route, first = setup(pool_size=1)
    server = idle_server(route)
    first.data_received(SELECT)
    assert first.state is LINKED
    second = new_client(_worker, route)
    second.data_received(SELECT)  # idle -> waiting: no idle server, the pool is full
    assert second.state is WAITING and second.waiting_since is not None
    assert second.queued == [SELECT]
    server.data_received(ANSWER)  # first: linked -> idle; second: waiting -> linked
    assert first.state is IDLE and second.state is LINKED and second.server is server
    assert server.transport.take() == SELECT + SELECT  # type: ignore[union-attr]
    assert second.waiting_since is None and not second.queued


async def test_terminate_between_transactions_closes_without_a_server():
    _worker, route, client = setup()
    server = idle_server(route)
    client.data_received(TERMINATE)  # idle -> closed
    assert client.state is CLOSED and client.closing
    assert client.transport.closed  # type: ignore[attr-defined]
    assert server.state is ServerState.IDLE  # never taken


async def test_a_closed_client_reads_nothing_and_is_never_linked():
    _worker, route, client = setup()
    idle_server(route)
    client.close()
    client.data_received(SELECT)  # dropped: no server is taken for it
    assert client.state is CLOSED and client.server is None
    with pytest.raises(IllegalTransition, match="closed -> linked"):
        client.become(LINKED)


async def test_connection_lost_while_linked_gives_the_server_back_through_a_reset():
    worker, route, client = setup()
    server = idle_server(route)
    client.data_received(SELECT)
    client.connection_lost(None)  # linked -> closed; the server owes an answer: reset
    assert client.state is CLOSED and client.server is None
    assert server.state is ServerState.RESET
    for task in list(worker._tasks):
        task.cancel()


async def test_connection_lost_while_waiting_leaves_the_queue():
    worker, route, first = setup(pool_size=1)
    server = idle_server(route)
    first.data_received(SELECT)
    second = new_client(worker, route)
    second.data_received(SELECT)
    assert second.state is WAITING and len(route.waiters) == 1
    second.connection_lost(None)  # waiting -> closed: out of the route's queue
    assert second.state is CLOSED and not route.waiters and second.waiting_since is None
    server.data_received(ANSWER)
    assert server.state is ServerState.IDLE  # nobody else waits: back to the idle list


async def test_parse_and_sync_of_a_known_statement_are_answered_here():
    """Parse + Sync of a statement the route knows needs no server: answered at once, the
    client stays idle (it never waits)."""
    worker, route, first = setup(pool_size=1)
    idle_server(route)
    first.data_received(SELECT)  # the only server is busy
    second = new_client(worker, route)
    route.known_statements.add(parse_of(b"s1\0select 1\0\0\0")[1].server_name)
    second.statements = ClientStatements(route.stats, route.known_statements)
    second.data_received(message("P", b"s1\0select 1\0\0\0") + message("S"))
    assert second.state is IDLE  # answered here: ParseComplete, ReadyForQuery
    assert second.transport.take() == message("1") + message("Z", b"I")  # type: ignore[attr-defined]


async def test_login_timer_ends_only_logins():
    worker, _route, client = setup()
    client.state = STARTUP
    Login(worker, client).timed_out()
    assert client.state is CLOSED  # FATAL: client login timed out
    worker2, _route2, relayed = setup()
    late = Login(worker2, relayed)  # (its timer fires as the login hands the client over)
    late.timed_out()
    late.lost()
    assert relayed.state is IDLE
