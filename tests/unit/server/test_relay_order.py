"""The relay writes a server's answer to its client before its own bookkeeping (issue 19:
latency per round trip), except when it must first cut a ParseComplete of its own out.

Real worker, route, client and server objects; stand-in transports record what is written.
"""

from __future__ import annotations

import struct
import time
from typing import Any

import pytest
from standins import worker_and_route

from pooler.protocol import build
from pooler.server.backend import ServerConnection, ServerState
from pooler.server.client import ClientConnection
from pooler.server.lifecycle import ClientState
from pooler.server.prepared import ClientStatements
from pooler.server.stats import RouteStats

CONFIG = """
log_format "%m\\n"
log_session no
listen { host "127.0.0.1" port 6432 }
storage "pg" { type "remote" host "127.0.0.1" port 5432 }
database default {
    user default {
        authentication "none"
        storage "pg"
        pool "transaction"
        pool_size 2
    }
}
"""

QUERY = build.query("SELECT 1")
_ROW = struct.pack("!h", 1) + b"x\0" + struct.pack("!ihihih", 0, 0, 23, 4, -1, 0)
ANSWER = (
    b"T" + struct.pack("!i", len(_ROW) + 4) + _ROW
    + b"D\x00\x00\x00\x0b\x00\x01\x00\x00\x00\x011"
    + build.command_complete("SELECT 1")
    + build.ready_for_query("I")
)  # fmt: skip


class Transport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default  # (no socket: pool_attach_check has nothing to poll)

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def idle_pair() -> tuple[ServerConnection, ClientConnection]:
    """A ready client of a transaction pool and one idle server, not linked yet."""
    worker, route = worker_and_route(CONFIG, "app", "postgres")
    server = ServerConnection(route, route.storage.endpoints[0])
    server.transport = Transport()  # type: ignore[assignment]
    server.internal = False
    server.state = ServerState.IDLE
    server.scanner.wanted = server.relay_wanted
    route.idle.append(server)
    client = ClientConnection(worker, worker.config.listens[0], False)
    client.transport = Transport()  # type: ignore[assignment]
    client.state, client.route, client.rule = ClientState.IDLE, route, route.rule
    client.mode = "transaction"
    client.statements = ClientStatements(route.stats, route.known_statements)
    return server, client


def linked_pair() -> tuple[ServerConnection, ClientConnection]:
    server, client = idle_pair()
    client.data_received(QUERY)  # links the idle server and relays the query
    assert client.server is server and server.transport.writes == [QUERY]  # type: ignore[attr-defined]
    return server, client


@pytest.mark.timeout(10)
async def test_the_query_is_written_before_the_wait_is_counted() -> None:
    server, client = idle_pair()
    stats = server.route.stats
    transport = server.transport
    seen: list[int] = []
    write = transport.write

    def counting_write(data: bytes) -> None:
        seen.append(stats.assignments)  # type: ignore[attr-defined]
        write(data)

    transport.write = counting_write  # type: ignore[method-assign,union-attr]
    client.data_received(QUERY)
    assert transport.writes == [QUERY]  # type: ignore[union-attr]
    assert seen == [0]  # the server had the query before the (zero) wait was counted
    assert stats.assignments == 1 and stats.wait_hist == {0: 1}  # type: ignore[attr-defined]


@pytest.mark.timeout(10)
async def test_the_answer_is_written_before_the_bookkeeping(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server, client = linked_pair()
    seen: list[int] = []
    record_xact = RouteStats.record_xact

    def counted(stats: RouteStats, us: int) -> None:
        seen.append(len(client.transport.writes))  # type: ignore[attr-defined]
        record_xact(stats, us)

    # (the ReadyForQuery's bookkeeping: the query counted, then the transaction, here)
    monkeypatch.setattr(RouteStats, "record_xact", counted)
    server.data_received(ANSWER)
    assert client.transport.writes == [ANSWER]  # type: ignore[attr-defined]
    assert seen == [1]  # the client had its answer when the transaction was counted
    assert server.stats.query_count == 1
    assert client.server is None  # and the server was given back


@pytest.mark.timeout(10)
async def test_a_parse_complete_of_ours_is_cut_out_before_the_write() -> None:
    server, client = linked_pair()
    server.statements.sent_parse(False, "S_1")  # a Parse the pooler injected
    server.data_received(build.PARSE_COMPLETE + ANSWER)
    assert client.transport.writes == [ANSWER]  # type: ignore[attr-defined]
    assert client.server is None


def test_each_transaction_on_a_kept_server_is_timed_from_its_own_first_query(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A server kept across transactions (a session pool's) times each one from its own
    first query, not from when the client got the server (SHOW STATS' xact_time)."""
    now = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])  # (the relay's clock, stepped)
    server, client = idle_pair()
    client.mode = "session"
    for at in (1000.0, 1010.0):  # two transactions of 0.25 s, ten seconds apart
        now[0] = at
        client.data_received(QUERY)
        now[0] = at + 0.25
        server.data_received(ANSWER)
        assert client.server is server
    stats = server.route.stats
    assert stats.xact_count == 2 and stats.xact_time_us == 500_000
    assert stats.query_count == 2 and stats.query_time_us == 500_000
