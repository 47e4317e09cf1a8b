"""Flow control per link (pooler/server/flow.py): reading paused per cause, and a link
that ends takes its pauses with it. Driven on the worker's real objects with transports
that only record what they are told."""

from __future__ import annotations

import types
from typing import Any

from pooler.config import parse_text
from pooler.server.backend import ServerConnection, ServerState
from pooler.server.client import ClientConnection
from pooler.server.flow import BURST_READ, PEER_FULL, QUEUE_FULL, ReadGate
from pooler.server.lifecycle import ClientState
from pooler.server.router import ClientKey
from pooler.server.worker import Worker


class Transport:
    def __init__(self) -> None:
        self.reading = True
        self.calls: list[str] = []
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def close(self) -> None:
        pass

    def pause_reading(self) -> None:
        assert self.reading, "paused twice"
        self.reading = False
        self.calls.append("pause")

    def resume_reading(self) -> None:
        assert not self.reading, "resumed while reading"
        self.reading = True
        self.calls.append("resume")


def test_reading_resumes_only_when_every_cause_is_gone():
    gate = ReadGate()
    gate.transport = transport = Transport()  # type: ignore[assignment]
    gate.pause(PEER_FULL)
    gate.pause(PEER_FULL)  # idempotent
    gate.pause(QUEUE_FULL)
    gate.resume(PEER_FULL)
    assert not transport.reading
    gate.resume(PEER_FULL)
    gate.resume(QUEUE_FULL)
    gate.resume(QUEUE_FULL)
    assert transport.reading and transport.calls == ["pause", "resume"]


def setup() -> tuple[Any, ClientConnection, ServerConnection]:
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
                pool_size 1
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
    client.state, client.route, client.rule = ClientState.IDLE, route, rule
    client.mode = "transaction"
    server = ServerConnection(route, config.storages[0].endpoints[0])
    server.connection_made(Transport())  # type: ignore[arg-type]
    server.internal = False
    server.state = ServerState.TAKEN
    route.busy.add(server)
    return route, client, server


def test_a_server_released_while_its_client_lags_is_reading_again():
    route, client, server = setup()
    server.link(client, 0.0)
    client.server = server
    client.pause_writing()  # the client reads slowly: the server stops reading
    assert not server.transport.reading  # type: ignore[union-attr]
    client.server = None
    route.release(server)  # its answer was complete: back to the pool
    assert server.transport.reading  # type: ignore[union-attr]
    assert list(route.idle) == [server]
    client.resume_writing()  # no longer its server: nothing to resume twice


def test_a_server_detached_for_a_reset_is_reading_again():
    _route, client, server = setup()
    server.link(client, 0.0)
    client.server = server
    client.pause_writing()
    server.detach()  # the client left: the reset must read what the server still owes
    assert server.transport.reading  # type: ignore[union-attr]


def test_a_server_linked_to_a_lagging_client_starts_paused():
    _route, client, server = setup()
    client.pause_writing()  # between transactions, the client has not read its answers
    server.link(client, 0.0)
    assert not server.transport.reading  # type: ignore[union-attr]
    client.server = server
    client.resume_writing()
    assert server.transport.reading  # type: ignore[union-attr]


def test_a_client_paused_by_its_server_reads_again_when_the_link_ends():
    route, client, server = setup()
    server.link(client, 0.0)
    client.server = server
    server.pause_writing()  # the server does not take the client's bytes fast enough
    assert not client.transport.reading  # type: ignore[attr-defined]
    client.server = None
    route.release(server)
    assert client.transport.reading  # type: ignore[attr-defined]


def test_a_large_read_gives_the_loop_turn_to_the_others():
    """libuv reads a ready socket up to 32 times in a row: after a large read the server's
    reading pauses for the rest of the loop's turn (issue 14, fault 6)."""
    import asyncio

    from pooler.protocol import build

    _route, client, server = setup()
    server.link(client, 0.0)
    client.server = server
    row = build.message(ord("D"), b"\x00\x01\x00\x00\x00\x06123456")
    transport: Any = server.transport

    async def relay() -> None:
        server.data_received(row * 10)  # small: nothing to yield
        assert transport.reading
        server.data_received(row * (BURST_READ // len(row) + 1))
        assert not transport.reading  # no more reads in this turn
        await asyncio.sleep(0)
        assert transport.reading  # the next turn reads again

    asyncio.run(relay())
    assert transport.calls == ["pause", "resume"]


def test_a_cancel_stops_relaying_its_query_until_it_is_on_its_way():
    """A CancelRequest for a linked client pauses its server's output until the cancel
    reached PostgreSQL: no more relay work for that query before the cancel (fault 6)."""
    import asyncio

    route, client, server = setup()
    server.link(client, 0.0)
    client.server = server
    worker = route.worker
    pid, secret = worker.register_cancel_key(client)
    client.key = (pid, secret)
    seen: list[bool] = []

    async def cancel_backend(target: ServerConnection) -> None:  # (what talks to PostgreSQL)
        seen.append(target.transport.reading)  # type: ignore[union-attr]

    worker.cancels.cancel_backend = cancel_backend  # type: ignore[method-assign]
    asyncio.run(worker.cancel(pid, secret))
    assert seen == [False]  # paused while the cancel went
    assert server.transport.reading  # type: ignore[union-attr]
