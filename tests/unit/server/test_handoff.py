"""A waiting client handed a slot or a server in the same loop iteration as it leaves.

The exact interleaving (the release and the client's goodbye in one epoll batch) cannot be
forced through sockets, so the worker's real objects are driven here directly; the one
connection attempt goes to a real closed port on loopback.
"""

from __future__ import annotations

import asyncio
import gc
import socket
import time
import types

import pytest
from standins import Recorder

from pooler.config import parse_text
from pooler.config.model import Config, Rule
from pooler.protocol import build
from pooler.server.backend import ServerConnection, ServerState
from pooler.server.client import ClientConnection
from pooler.server.lifecycle import ClientState
from pooler.server.pool import Route
from pooler.server.router import ClientKey
from pooler.server.worker import Worker


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Slots:
    """The worker's side of the supervisor's slot ledger, counting what it is told."""

    def __init__(self) -> None:
        self.requested = 0
        self.released = 0

    def request(self, key: object, limit: int) -> None:
        self.requested += 1

    def release(self, key: object) -> None:
        self.released += 1

    def cancel(self, key: object) -> None:
        self.requested -= 1


def transaction_pool_of_one(slots: Slots, extra: str = "") -> tuple[Config, Worker, Rule, Route]:
    """A worker (its supervisor's slot ledger: `slots`) with one transaction route of
    pool_size 1 (and the rule lines in `extra`) whose storage is a closed port on loopback."""
    config = parse_text(
        f"""
        log_format "%m\\n"
        log_session no
        listen {{ host "127.0.0.1" port 6432 }}
        storage "pg" {{ type "remote" host "127.0.0.1" port {closed_port()} }}
        database default {{
            user default {{
                authentication "none"
                storage "pg"
                pool "transaction"
                pool_size 1
                {extra}
            }}
        }}
        """
    )
    worker = Worker(config, 0, types.SimpleNamespace(slots=slots))  # type: ignore[arg-type]
    rule = worker.router.match(ClientKey("db", "user", "127.0.0.1"))
    assert rule is not None
    return config, worker, rule, worker.route_for(rule, "db", "user")


@pytest.mark.timeout(20)
async def test_a_slot_granted_to_a_client_that_just_left_is_given_back():
    slots = Slots()
    config, worker, rule, route = transaction_pool_of_one(slots)
    client = ClientConnection(worker, config.listens[0], False)
    client.transport = Recorder()  # type: ignore[assignment]
    client.state, client.route, client.rule = ClientState.IDLE, route, rule
    client.mode = "transaction"

    client.data_received(build.query("select 1"))  # no server: it waits for one
    assert slots.requested == 1 and len(route.waiters) == 1
    route.on_grant()  # the supervisor grants the slot ...
    client.connection_lost(None)  # ... and the client's goodbye is in the same batch

    async def settled() -> None:
        while slots.released < 1 or worker._tasks:
            await asyncio.sleep(0.01)

    await asyncio.wait_for(settled(), 10)
    assert slots.released == slots.requested == 1  # the slot went back; nothing holds it
    assert route.size == 0


class RecordingTransport(Recorder):
    """Keeps what is written, and when it was closed (monotonic)."""

    def __init__(self) -> None:
        super().__init__()
        self.closed_at: float | None = None

    def close(self) -> None:
        if self.closed_at is None:
            self.closed_at = time.monotonic()
        super().close()


@pytest.mark.timeout(20)
async def test_each_task_free_waiter_gets_pool_timeout_at_its_own_deadline():
    """The route's one pool_timeout timer: clients that began waiting at different times
    each get the error once their own wait is over (not before), in the order they came,
    and the timer is armed again for the ones still waiting."""
    config, worker, rule, route = transaction_pool_of_one(Slots(), "pool_timeout 300")
    clients = []
    for _ in range(3):
        client = ClientConnection(worker, config.listens[0], False)
        client.transport = RecordingTransport()  # type: ignore[assignment]
        client.state, client.route, client.rule = ClientState.IDLE, route, rule
        client.mode = "transaction"
        client.data_received(build.query("select 1"))  # no server, no slot: it waits
        assert client._handoff is not None  # (task-free, in the route's line)
        clients.append(client)
        asked = client.asked_at
        while time.monotonic() < asked + 0.1:  # the next one asks 0.1 s later
            await asyncio.sleep(0.01)

    async def all_told() -> None:
        while any(c.transport.closed_at is None for c in clients):  # type: ignore[union-attr]
            await asyncio.sleep(0.01)

    await asyncio.wait_for(all_told(), 10)
    closed = [c.transport.closed_at for c in clients]  # type: ignore[union-attr]
    for client, closed_at in zip(clients, closed, strict=True):
        assert b"53300" in client.transport.written  # type: ignore[union-attr]
        assert closed_at is not None and closed_at - client.asked_at >= 0.3 - 0.001
    assert closed == sorted(closed)
    assert not route.has_waiters()


def one_server_two_clients() -> tuple[Route, ServerConnection, ClientConnection, ClientConnection]:
    """A transaction route of pool_size 1 with its one server logged in and idle, and two
    logged-in clients of it; every transport a stand-in that records what is written."""
    config, worker, rule, route = transaction_pool_of_one(Slots(), "pool_discard no")
    server = ServerConnection(route, route.storage.endpoints[0])
    server.transport = Recorder()  # type: ignore[assignment]
    server.internal = False  # logged in, idle
    server.state = ServerState.IDLE
    server.scanner.wanted = server.relay_wanted
    route.idle.append(server)
    first, second = (ClientConnection(worker, config.listens[0], False) for _ in range(2))
    for client in (first, second):
        client.transport = Recorder()  # type: ignore[assignment]
        client.state, client.route, client.rule = ClientState.IDLE, route, rule
        client.mode = "transaction"
    return route, server, first, second


@pytest.mark.timeout(20)
async def test_a_client_waits_again_with_its_one_handoff_in_line_once():
    """A client keeps one HandOff for all its waits (not one per wait): each wait queues it
    again once the last one is over, so the line holds it once and every release hands the
    client one server."""
    route, server, first, second = one_server_two_clients()
    query, answer = build.query("select 1"), build.command_complete("SELECT 1") + b"Z\0\0\0\5I"
    handoffs = []
    for _ in range(3):
        first.data_received(query)  # the idle server, at once
        second.data_received(query)  # none idle: it waits
        assert first.server is server and list(route.waiters) == [second._handoff]
        handoffs.append(second._handoff)
        server.data_received(answer)  # the first's transaction ends: the second's turn
        assert second.server is server and first.server is None and not route.waiters
        assert second._handoff is None and server.transport.take() == query + query  # type: ignore[attr-defined]
        server.data_received(answer)
        assert second.server is None and list(route.idle) == [server]
    assert all(handoff is handoffs[0] for handoff in handoffs)
    assert route.stats.assignments == 6


@pytest.mark.timeout(20)
async def test_a_client_that_waited_is_freed_when_it_leaves_without_a_garbage_collection():
    """A client keeps its HandOff (and so bound methods of itself) between waits; when it
    leaves, that cycle is broken, so a client that once waited goes back to the allocator
    at once like one that never did — not at the next full garbage collection, which may
    be long in coming for a client that lived long enough to reach the oldest generation."""
    _, server, first, second = one_server_two_clients()
    answer = build.command_complete("SELECT 1") + b"Z\0\0\0\5I"
    first.data_received(build.query("select 1"))  # the idle server
    second.data_received(build.query("select 1"))  # none idle: it waits
    server.data_received(answer)
    server.data_received(answer)  # both done, the server idle again
    names = {id(first): "never waited", id(second): "waited"}
    gc.collect()
    gc.disable()
    try:
        for client in (first, second):
            client.connection_lost(None)
        del first, second, client
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        left_to_the_collector = [
            names[id(o)] for o in gc.garbage if type(o) is ClientConnection and id(o) in names
        ]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert left_to_the_collector == []
