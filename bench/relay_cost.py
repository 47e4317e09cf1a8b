#!/usr/bin/env python3
"""The Python cost of pooler's relay code alone: no sockets, no PostgreSQL, hot caches.

Usage: bench/relay_cost.py [transactions] [live|login]   (live, login: those lines alone)

Real `Worker`, `Route`, `ClientConnection` and `ServerConnection` objects of a transaction
pool exchange recorded bytes through stand-in transports that only count what is written (a
server's holds one end of a socketpair, which `pool_attach_check` polls):

- relay: a select-only transaction (one Query chunk in, one T/D/C/Z chunk out) per client,
  4 clients, 4 idle servers: the idle server is linked and released every time;
- extended: the same with pgbench -M extended's Parse/Bind/Describe/Execute/Sync (the
  unnamed statement is cached on the servers after the first);
- tpc-b: pgbench's TPC-B-like transaction (BEGIN, 3 UPDATEs, a SELECT, an INSERT, END, each
  its own Query chunk answered by its own chunk, ReadyForQuery 'T' until END's 'I'), per
  client, 4 clients, 4 idle servers: a server is linked at BEGIN and released at END, the
  five statements between run on a linked server (bench/run's d);
- waiting: the same with 1 server for the 4 clients, so three of them wait and are handed
  the server in turn; and with 500 clients on 20 servers (bench/run's e: 480 wait, and
  every transaction touches another client's objects, colder in the caches);
- login: one `pgbench -C` cycle (startup, login with authentication "none", one select,
  Terminate) per connection;
- login over sockets: the same cycle over real loopback TCP sockets on uvloop (accept,
  transport set-up, reads and writes, close: what the stand-in transports of the login line
  do not see), the client a uvloop protocol in the same process; beside it the same client
  against a bare uvloop server that answers with canned bytes (the floor: uvloop, the kernel
  and the client's own share), so the difference is the pooler's own per-connection cost
  (the two run in turn, five rounds: the median of the rounds' differences);
- to the write: one client and one server, the median µs from a chunk's `data_received` to
  the `write` that relays it, each direction (the relay's share of a round trip's latency);
- live: the real connections over real uvloop TCP sockets on loopback, in this one process: a
  driver (pgbench's part: the next statement once the answer is in) and a stand-in PostgreSQL
  (canned answers) around pooler, then around bench/splice.py's `Half` (the bare splice, the
  floor of a Python proxy: a server connection per client), then with the driver on the
  stand-in directly. The process's CPU µs per transaction (driver, stand-in, proxy and the
  kernel's loopback work): pooler's minus the splice's is pooler's own Python, the asyncio
  callbacks and transport calls that the stand-in-transport lines cannot see included (the
  syscalls are the same but pool_attach_check's poll). TPC-B (bench/run's d, 4 clients, 4
  servers), select-only with 500 clients on 20 servers (e), and one client's select-only
  round trip (g: everything runs in this process, so its CPU per round trip is its latency
  less the wake-ups across processes); and, without that noise, per statement inside a
  transaction: the relay's callbacks and their parts with stand-in transports whose methods
  are C calls, beside the splice's two callbacks alike;
- socket options: `sockopts.apply` (keepalive, TCP_NODELAY) on a real accepted TCP transport,
  run for every server connection (a client's socket inherits them from its listening socket,
  `Worker._set_listen_options`, unless `nodelay no`; the login line's stand-in transports
  have no socket).

It prints µs per transaction (best of 5 repetitions) of the process's CPU time
(`time.process_time`: time the process was preempted on a busy machine is not counted). It measures the pooler's own code
only; bench/run measures the whole system. A development tool, not a test.
"""

from __future__ import annotations

import asyncio
import functools
import socket
import statistics
import struct
import sys
import time
import types
from typing import Any

import uvloop

from pooler import compiled
from pooler.config import parse_text
from pooler.protocol import build
from pooler.server import sockopts
from pooler.server.backend import ServerConnection, ServerState
from pooler.server.client import ClientConnection
from pooler.server.lifecycle import ClientState
from pooler.server.prepared import ClientStatements
from pooler.server.router import ClientKey
from pooler.server.worker import Worker

CONFIG = """
workers 1
log_format "%m\\n"
log_session no
listen { host "127.0.0.1" port 6432 }
storage "pg" { type "remote" host "127.0.0.1" port 5432 }
database default {
    user default {
        authentication "none"
        storage "pg"
        pool "transaction"
        pool_size 20
        pool_discard no
    }
}
"""

SERVER_PARAMS = {
    "application_name": "pgbench",
    "client_encoding": "UTF8",
    "DateStyle": "ISO, MDY",
    "integer_datetimes": "on",
    "IntervalStyle": "postgres",
    "is_superuser": "on",
    "server_encoding": "UTF8",
    "server_version": "15.8",
    "session_authorization": "postgres",
    "standard_conforming_strings": "on",
    "TimeZone": "UTC",
}

QUERY = build.query("SELECT abalance FROM pgbench_accounts WHERE aid = 12345;")
EXTENDED_QUERY = (  # pgbench -M extended
    build.parse("", "SELECT abalance FROM pgbench_accounts WHERE aid = $1;")
    + build.bind("", "", [0], [b"12345"], [])
    + build.describe("P")
    + build.execute()
    + build.sync()
)
_ROW_DESCRIPTION = struct.pack("!h", 1) + b"abalance\0" + struct.pack("!ihihih", 0, 0, 23, 4, -1, 0)
ANSWER = (
    b"T"
    + struct.pack("!i", len(_ROW_DESCRIPTION) + 4)
    + _ROW_DESCRIPTION
    + b"D\x00\x00\x00\x0b\x00\x01\x00\x00\x00\x010"
    + build.command_complete("SELECT 1")
    + build.ready_for_query("I")
)
BIND_COMPLETE = b"2\x00\x00\x00\x04"
_IN_XACT = build.ready_for_query("T")
TPCB = [  # pgbench's TPC-B-like transaction: (Query, the server's answer), one chunk each
    (build.query("BEGIN;"), build.command_complete("BEGIN") + _IN_XACT),
    (
        build.query("UPDATE pgbench_accounts SET abalance = abalance + -1234 WHERE aid = 12345;"),
        build.command_complete("UPDATE 1") + _IN_XACT,
    ),
    (QUERY, ANSWER[: -len(_IN_XACT)] + _IN_XACT),
    (
        build.query("UPDATE pgbench_tellers SET tbalance = tbalance + -1234 WHERE tid = 5;"),
        build.command_complete("UPDATE 1") + _IN_XACT,
    ),
    (
        build.query("UPDATE pgbench_branches SET bbalance = bbalance + -1234 WHERE bid = 1;"),
        build.command_complete("UPDATE 1") + _IN_XACT,
    ),
    (
        build.query(
            "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime)"
            " VALUES (5, 1, 12345, -1234, CURRENT_TIMESTAMP);"
        ),
        build.command_complete("INSERT 0 1") + _IN_XACT,
    ),
    (build.query("END;"), build.command_complete("COMMIT") + build.ready_for_query("I")),
]
EXTENDED_ANSWER = BIND_COMPLETE + ANSWER  # ParseComplete first when the server got a Parse


class CountingTransport:
    """Stands in for a uvloop transport: counts bytes written, closes through the loop."""

    def __init__(self) -> None:
        self.written = 0
        self.parse_sent = False
        self.closing = False
        self.protocol: Any = None

    def write(self, data: bytes) -> None:
        self.written += len(data)
        self.parse_sent = data[:1] == b"P"  # (a server's answer starts with ParseComplete)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "socket":
            return self.sock
        return ("127.0.0.1", 5555) if name == "peername" else default

    sock: socket.socket | None = None  # a server's: one end of a socketpair (pool_attach_check)


class TimedTransport(CountingTransport):
    """... that notes when it was last written to (the "to the write" lines only: the clock
    read is not the relay's cost)."""

    written_at = 0.0  # perf_counter() at the last write

    def write(self, data: bytes) -> None:
        self.written_at = time.perf_counter()
        CountingTransport.write(self, data)


def make_worker() -> tuple[Worker, Any]:
    config = parse_text(CONFIG)
    slots = types.SimpleNamespace(
        request=lambda *a: None, release=lambda *a: None, cancel=lambda *a: None
    )
    worker = Worker(config, 0, types.SimpleNamespace(slots=slots))  # type: ignore[arg-type]
    rule = worker.router.match(ClientKey("bench", "postgres", "127.0.0.1"))
    assert rule is not None
    route = worker.route_for(rule, "bench", "postgres")
    route.server_params = dict(SERVER_PARAMS)
    return worker, route


_PEERS: list[socket.socket] = []  # the other ends of the servers' sockets, kept open


def add_server(
    route: Any, transports: type[CountingTransport] = CountingTransport
) -> ServerConnection:
    server = ServerConnection(route, route.storage.endpoints[0])
    transport = transports()
    # pool_attach_check polls an idle server's socket before a client gets it: a real one
    transport.sock, peer = socket.socketpair()
    _PEERS.append(peer)
    transport.protocol = server
    server.transport = transport  # type: ignore[assignment]
    server.params = dict(SERVER_PARAMS)
    server.internal = False  # logged in: relaying
    server.state = ServerState.IDLE
    server.scanner.wanted = server.relay_wanted
    route.idle.append(server)
    return server


def ready_client(
    worker: Worker, route: Any, transports: type[CountingTransport] = CountingTransport
) -> ClientConnection:
    client = ClientConnection(worker, worker.config.listens[0], False)
    transport = transports()
    transport.protocol = client
    client.transport = transport  # type: ignore[assignment]
    client.state, client.route, client.rule = ClientState.IDLE, route, route.rule
    client.mode = "transaction"
    client.statements = ClientStatements(route.stats, route.known_statements)
    client.params = {"application_name": "pgbench", "client_encoding": "UTF8"}
    return client


def pooled(servers: int, clients_n: int) -> tuple[list[ServerConnection], list[ClientConnection]]:
    """A worker's route with `servers` idle servers and `clients_n` logged-in clients."""
    worker, route = make_worker()
    return [add_server(route) for _ in range(servers)], [
        ready_client(worker, route) for _ in range(clients_n)
    ]


def relay(
    transactions: int,
    servers: int,
    query: bytes = QUERY,
    answer: bytes = ANSWER,
    clients_n: int = 4,
) -> float:
    pool, clients = pooled(servers, clients_n)
    best = float("inf")
    for _ in range(5):
        started = time.process_time()
        for _ in range(transactions // len(clients)):
            for client in clients:
                client.data_received(query)
            while any(server.client is not None for server in pool):
                for server in pool:
                    if server.client is not None:
                        parsed = server.transport.parse_sent  # type: ignore[attr-defined]
                        server.data_received(build.PARSE_COMPLETE + answer if parsed else answer)
        best = min(best, (time.process_time() - started) / transactions * 1e6)
    return best


def tpcb(transactions: int, servers: int = 4, clients_n: int = 4) -> float:
    """µs per TPC-B-like transaction (`TPCB`: seven round trips, each client's statements
    answered in turn), best of 5."""
    pool, clients = pooled(servers, clients_n)
    best = float("inf")
    for _ in range(5):
        started = time.process_time()
        for _ in range(transactions // len(clients)):
            for query, answer in TPCB:
                for client in clients:
                    client.data_received(query)
                for client in clients:
                    server = client.server
                    assert server is not None
                    server.data_received(answer)
        assert all(server.client is None for server in pool)
        best = min(best, (time.process_time() - started) / transactions * 1e6)
    return best


def statement_pieces(statements: int) -> dict[str, float]:
    """µs per statement inside a transaction (a linked client and server, ReadyForQuery
    'T': TPC-B's five middle statements), best of 9, for the whole relay and its parts, with
    stand-in transports whose methods are C calls (their cost is close to nothing), and for
    bench/splice.py's two `Half` callbacks alike: pooler's own Python per statement without
    the noise of sockets and of the kernel (the live lines' is ±3 µs per transaction)."""
    from splice import Half  # (bench/, the script's own folder)

    query = TPCB[1][0]
    answer = TPCB[1][1]
    worker, route = make_worker()
    server = add_server(route)
    client = ready_client(worker, route)
    client.data_received(TPCB[0][0])
    server.data_received(TPCB[0][1])  # BEGIN: linked
    assert client.server is server
    sink: list[bytes] = []
    fast = types.SimpleNamespace(write=sink.append, is_closing=bool)
    server.transport = client.transport = fast  # type: ignore[assignment]
    halves = Half(), Half()
    for half, peer in zip(halves, reversed(halves), strict=True):
        half.transport, half.peer = fast, peer  # type: ignore[assignment]
    requests, feed, uncut, answers = (
        client.requests,
        server.scanner.feed,
        server.uncut,
        server.answers,
    )
    n = len(answer)
    clock = time.monotonic  # (the server-side lines set the query's start, as its Query does)

    def whole() -> None:
        for _ in range(statements):
            client.data_received(query)
            server.data_received(answer)

    def client_side() -> None:
        for _ in range(statements):
            client.data_received(query)
            server.pending = 0

    def client_core() -> None:
        for _ in range(statements):
            requests(server, query)
            server.pending = 0

    def server_side() -> None:
        for _ in range(statements):
            server.pending = 1
            server.query_started = clock()
            server.data_received(answer)

    def server_core() -> None:
        for _ in range(statements):
            server.pending = 1
            server.query_started = clock()
            events = feed(answer)
            uncut("transaction", events, n)
            answers(answer, events, client, True)

    def scanner() -> None:
        for _ in range(statements):
            server.pending = 1
            server.query_started = clock()
            feed(answer)

    def splice() -> None:
        first, second = halves[0].data_received, halves[1].data_received
        for _ in range(statements):
            first(query)
            second(answer)

    def empty() -> None:
        for _ in range(statements):
            server.pending = 1

    def empty_clocked() -> None:
        for _ in range(statements):
            server.pending = 1
            server.query_started = clock()

    def best(run: Any) -> float:
        fastest = float("inf")
        for _ in range(9):
            started = time.process_time()
            run()
            fastest = min(fastest, time.process_time() - started)
            sink.clear()
        return fastest / statements * 1e6

    loop = best(empty)
    clocked = best(empty_clocked)
    return {
        "pooler": best(whole) - loop,
        "client side": best(client_side) - loop,
        "of which ClientRelay.requests": best(client_core) - loop,
        "server side": best(server_side) - clocked,
        "of which the scanner": best(scanner) - clocked,
        "of which the scanner, uncut, answers": best(server_core) - clocked,
        "splice": best(splice) - loop,
    }


def print_pieces(transactions: int) -> None:
    pieces = statement_pieces(transactions)
    print(
        "per statement in a transaction (C-call transports): "
        + ", ".join(f"{name} {us:4.2f}" for name, us in pieces.items())
        + " µs"
    )


def to_write(
    transactions: int, query: bytes = QUERY, answer: bytes = ANSWER
) -> tuple[float, float]:
    """Median µs from a chunk's data_received to the write that relays it, client → server
    and server → client: the relay's own share of a round trip's latency (the rest of the
    callback runs after the peer has its bytes)."""
    worker, route = make_worker()
    server = add_server(route, TimedTransport)
    client = ready_client(worker, route, TimedTransport)
    up, down = [], []
    clock = time.perf_counter
    for _ in range(transactions):
        started = clock()
        client.data_received(query)
        up.append(server.transport.written_at - started)  # type: ignore[attr-defined]
        parsed = server.transport.parse_sent  # type: ignore[attr-defined]
        started = clock()
        server.data_received(build.PARSE_COMPLETE + answer if parsed else answer)
        down.append(client.transport.written_at - started)  # type: ignore[attr-defined]
    return statistics.median(up) * 1e6, statistics.median(down) * 1e6


def startup_packet(**params: str) -> bytes:
    body = struct.pack("!i", 196608)
    body += b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in params.items()) + b"\0"
    return struct.pack("!i", len(body) + 4) + body


async def login(connections: int) -> float:
    worker, route = make_worker()
    add_server(route)
    startup = startup_packet(user="postgres", database="bench", application_name="pgbench")
    best = float("inf")
    for _ in range(5):
        started = time.process_time()
        for _ in range(connections):
            client = ClientConnection(worker, worker.config.listens[0], False)
            transport = CountingTransport()
            transport.protocol = client
            client.connection_made(transport)  # type: ignore[arg-type]
            client.data_received(startup)
            while not client.logged_in:
                await asyncio.sleep(0)
            client.data_received(QUERY)
            assert client.server is not None
            client.server.data_received(ANSWER)
            client.data_received(build.terminate())
            while not transport.closing:
                await asyncio.sleep(0)
            await asyncio.sleep(0)  # connection_lost
        best = min(best, (time.process_time() - started) / connections * 1e6)
    assert not worker.clients
    return best


class AnsweringTransport(CountingTransport):
    """A server's stand-in that answers each Query with ANSWER on the next loop turn."""

    def write(self, data: bytes) -> None:
        CountingTransport.write(self, data)
        asyncio.get_running_loop().call_soon(self.protocol.data_received, ANSWER)


class CannedServer(asyncio.Protocol):
    """The floor of the sockets line: a login burst and an answer from canned bytes."""

    burst = b""  # set by login_sockets: the same bytes the pooler sends

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport
        self.started = False

    def data_received(self, data: bytes) -> None:
        if not self.started:
            self.started = True
            self.transport.write(self.burst)
        elif data[:1] == b"Q":
            self.transport.write(ANSWER)
        elif data[:1] == b"X":
            self.transport.close()


class CycleClient(asyncio.Protocol):
    """One pgbench -C cycle: startup packet, a select after ReadyForQuery, Terminate."""

    def __init__(self, startup: bytes, done: asyncio.Future[bytes]) -> None:
        self.startup = startup
        self.done = done
        self.got = b""
        self.asked = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport
        self.transport.write(self.startup)

    def data_received(self, data: bytes) -> None:
        self.got += data
        if not self.got.endswith(_READY_IDLE):
            return
        if not self.asked:
            self.asked = True
            self.burst, self.got = self.got, b""
            self.transport.write(QUERY)
        else:
            self.transport.write(build.terminate())

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(getattr(self, "burst", b""))


_READY_IDLE = build.ready_for_query("I")


async def _cycles(port: int, startup: bytes, connections: int) -> tuple[float, bytes]:
    """µs of process CPU per cycle, `connections` cycles in a row; the login burst seen."""
    loop = asyncio.get_running_loop()
    burst = b""
    started = time.process_time()
    for _ in range(connections):
        done: asyncio.Future[bytes] = loop.create_future()
        client = functools.partial(CycleClient, startup, done)
        await loop.create_connection(client, "127.0.0.1", port)
        burst = await done
    return (time.process_time() - started) / connections * 1e6, burst


async def login_sockets(connections: int) -> tuple[float, float, float]:
    """µs of process CPU per pgbench -C cycle over loopback sockets: through the pooler's
    worker (its listening socket set up as `Worker.start` does, a stand-in server), and
    through `CannedServer` (the floor), each the best of 5 rounds; and the pooler's own, the
    median of the 5 rounds' differences (each round runs both, one after the other: the
    load of the box that minute weighs on both)."""
    loop = asyncio.get_running_loop()
    worker, route = make_worker()
    add_server(route, AnsweringTransport)
    listen = worker.config.listens[0]
    sock = socket.create_server(("127.0.0.1", 0))
    worker._listening = [sock]
    worker._set_listen_options()
    pooler = await loop.create_server(
        lambda: ClientConnection(worker, listen, False), sock=sock, backlog=128
    )
    floor = await loop.create_server(CannedServer, "127.0.0.1", 0)
    startup = startup_packet(user="postgres", database="bench", application_name="pgbench")
    ports = sock.getsockname()[1], floor.sockets[0].getsockname()[1]
    rounds = []
    try:
        _, CannedServer.burst = await _cycles(ports[0], startup, 1)  # the bytes to answer
        for _ in range(5):
            per_login, _ = await _cycles(ports[0], startup, connections)
            per_floor, _ = await _cycles(ports[1], startup, connections)
            rounds.append((per_login, per_floor))
    finally:
        pooler.close()
        floor.close()
    assert not worker.clients
    return (
        min(pooler for pooler, _ in rounds),
        min(canned for _, canned in rounds),
        statistics.median(pooler - canned for pooler, canned in rounds),
    )


async def socket_options(calls: int) -> float:
    """µs per `sockopts.apply` with the default options on a real accepted TCP transport."""
    loop = asyncio.get_running_loop()
    accepted: asyncio.Future[asyncio.BaseTransport] = loop.create_future()

    class Accept(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            accepted.set_result(transport)

    server = await loop.create_server(Accept, "127.0.0.1", 0)
    peer = socket.create_connection(server.sockets[0].getsockname()[:2])
    try:
        transport = await accepted
        options = sockopts.TcpOptions()
        best = float("inf")
        for _ in range(5):
            started = time.process_time()
            for _ in range(calls):
                sockopts.apply(transport, options)
            best = min(best, (time.process_time() - started) / calls * 1e6)
        transport.close()
        return best
    finally:
        peer.close()
        server.close()


# --- live: real sockets, one process -----------------------------------------------------


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    """Two ends of a TCP connection over loopback (TCP_NODELAY, as every target's)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        near = socket.create_connection(listener.getsockname()[:2])
        far, _ = listener.accept()
    for end in (near, far):
        end.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        end.setblocking(False)
    return near, far


class StandInPostgres(asyncio.Protocol):
    """A server's far end: each whole simple Query gets its canned answer (`answers`), all
    the answers to a chunk in one write; anything else (a Terminate) gets none."""

    def __init__(self, answers: dict[bytes, bytes]) -> None:
        self.answers = answers
        self.buf = b""
        self.transport: asyncio.Transport = None  # type: ignore[assignment]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        answers = self.answers
        pos, n, out = 0, len(buf), b""
        while n - pos >= 5:
            end = pos + 1 + int.from_bytes(buf[pos + 1 : pos + 5])
            if end > n:
                break
            out += answers.get(buf[pos:end], b"")
            pos = end
        self.buf = buf[pos:]
        if out:
            self.transport.write(out)


class Driver(asyncio.Protocol):
    """pgbench's part: the statements of `script` (Query, its answer) one at a time, each
    sent once the whole answer to the previous one is in; counts transactions (`script`
    once through) in `counter` and sets `done` when it reaches `goal`."""

    def __init__(self, script: list[tuple[bytes, bytes]], counter: list[int], goal: int) -> None:
        self.queries = [query for query, _ in script]
        self.lengths = [len(answer) for _, answer in script]
        self.step = 0
        self.got = 0
        self.counter = counter
        self.goal = goal
        self.done: asyncio.Future[None] | None = None
        self.transport: asyncio.Transport = None  # type: ignore[assignment]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def start(self, done: asyncio.Future[None]) -> None:
        self.done = done
        self.step = self.got = 0
        self.transport.write(self.queries[0])

    def data_received(self, data: bytes) -> None:
        self.got += len(data)
        if self.got < self.lengths[self.step]:
            return
        self.got = 0
        self.step += 1
        if self.step == len(self.queries):
            self.step = 0
            self.counter[0] += 1
            if self.counter[0] >= self.goal:
                done = self.done
                if done is not None and not done.done():
                    done.set_result(None)
                return  # (this client stops; the others end their transaction)
        self.transport.write(self.queries[self.step])


async def _accepted(sock: socket.socket, protocol: asyncio.Protocol) -> asyncio.Transport:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.connect_accepted_socket(lambda: protocol, sock=sock)
    return transport  # type: ignore[return-value]


async def _adopted(sock: socket.socket, protocol: asyncio.Protocol) -> asyncio.Transport:
    """A transport for `protocol` without its connection_made (a ClientConnection's starts
    a login; the splice's `Half` has none)."""
    transport = await _accepted(sock, asyncio.Protocol())
    transport.set_protocol(protocol)
    return transport


async def _live_pooler(
    script: list[tuple[bytes, bytes]], clients_n: int, servers: int, goal: int
) -> tuple[list[Driver], list[socket.socket]]:
    worker, route = make_worker()
    answers = dict(script)
    socks: list[socket.socket] = []
    for _ in range(servers):
        near, far = tcp_pair()
        socks += (near, far)
        await _accepted(far, StandInPostgres(answers))
        server = ServerConnection(route, route.storage.endpoints[0])
        await _accepted(near, server)  # (connection_made: the server's socket options)
        server.params = dict(SERVER_PARAMS)
        server.internal = False  # logged in: relaying
        server.state = ServerState.IDLE
        server.scanner.wanted = server.relay_wanted
        route.idle.append(server)
    drivers = []
    counter = [0]
    for _ in range(clients_n):
        near, far = tcp_pair()
        socks += (near, far)
        client = ClientConnection(worker, worker.config.listens[0], False)
        client.transport = client.reading.transport = await _adopted(far, client)
        client.state, client.route, client.rule = ClientState.IDLE, route, route.rule
        client.mode = "transaction"
        client.statements = ClientStatements(route.stats, route.known_statements)
        client.params = {"application_name": "pgbench", "client_encoding": "UTF8"}
        driver = Driver(script, counter, goal)
        await _accepted(near, driver)
        drivers.append(driver)
    return drivers, socks


async def _live_splice(
    script: list[tuple[bytes, bytes]], clients_n: int, goal: int, spliced: bool = True
) -> tuple[list[Driver], list[socket.socket]]:
    """The same drivers and stand-ins with bench/splice.py's `Half` pairs between them (a
    server connection per client, as the splice target has), or none (`spliced` False)."""
    from splice import Half  # (bench/, the script's own folder)

    answers = dict(script)
    socks: list[socket.socket] = []
    drivers = []
    counter = [0]
    for _ in range(clients_n):
        near, far = tcp_pair()
        socks += (near, far)
        driver = Driver(script, counter, goal)
        await _accepted(near, driver)
        if not spliced:
            await _accepted(far, StandInPostgres(answers))
        else:
            to_server, to_postgres = tcp_pair()
            socks += (to_server, to_postgres)
            await _accepted(to_postgres, StandInPostgres(answers))
            client_half, server_half = Half(), Half()
            client_half.transport = await _adopted(far, client_half)
            server_half.transport = await _adopted(to_server, server_half)
            client_half.peer, server_half.peer = server_half, client_half
        drivers.append(driver)
    return drivers, socks


async def _live_run(drivers: list[Driver], transactions: int, rounds: int = 5) -> float:
    """Best of `rounds`, all drivers at once: the process's CPU µs per transaction (its
    split into user and system time is sampled at clock ticks: too coarse to use here)."""
    loop = asyncio.get_running_loop()
    best = float("inf")
    for round_ in range(rounds + 1):  # (the first warms up)
        drivers[0].counter[0] = 0
        for driver in drivers:
            driver.goal = transactions
        done: asyncio.Future[None] = loop.create_future()
        started = time.process_time()
        for driver in drivers:
            driver.start(done)
        await done
        # the others end their transaction in flight before the next round
        while any(driver.step or driver.got for driver in drivers):
            await asyncio.sleep(0)
        used = time.process_time() - started
        if round_ > 0:
            best = min(best, used / drivers[0].counter[0] * 1e6)
    return best


async def live(
    transactions: int, script: list[tuple[bytes, bytes]], clients_n: int, servers: int
) -> list[float]:
    """CPU µs per transaction of the whole process (best of 5): through pooler, through the
    splice, direct."""
    figures = []
    for target in ("pooler", "splice", "direct"):
        if target == "pooler":
            drivers, socks = await _live_pooler(script, clients_n, servers, transactions)
        else:
            drivers, socks = await _live_splice(script, clients_n, transactions, target == "splice")
        figures.append(await _live_run(drivers, transactions))
        for sock in socks:
            sock.close()
        await asyncio.sleep(0.01)  # (the closes are seen before the next target starts)
    return figures


def print_live(name: str, figures: list[float], statements: int) -> None:
    pooler, splice, direct = figures
    own = pooler - splice  # (the same syscalls but pool_attach_check's poll: Python)
    print(
        f"live {name}: pooler {pooler:5.1f}, splice {splice:5.1f}, direct {direct:5.1f} µs per"
        f" transaction; pooler - splice {own:5.2f}, {own / statements:4.2f} per statement"
    )


async def live_lines(transactions: int) -> None:
    print_live("tpc-b (d, 4 clients, 4 servers)", await live(transactions // 7, TPCB, 4, 4), 7)
    select = [(QUERY, ANSWER)]
    print_live("select, 500 clients, 20 servers (e)", await live(transactions, select, 500, 20), 1)
    print_live("select, 1 client (g)", await live(transactions // 2, select, 1, 1), 1)


def print_login(transactions: int) -> None:
    per_login = uvloop.run(login(transactions // 10))
    print(f"login:   {per_login:5.1f} µs per connect + login + select + Terminate")
    per_socket, floor, own = uvloop.run(login_sockets(transactions // 20))
    print(
        f"login over sockets: {per_socket:5.1f} µs per cycle, {floor:5.1f} with a canned"
        f" uvloop server: {own:5.1f} µs the pooler's own (median of 5 paired rounds)"
    )


def main() -> None:
    transactions = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    if sys.argv[2:] == ["live"]:  # the live lines alone
        print(f"hot path: {compiled.build()} (POOLER_PURE=1: the Python sources)")
        print_pieces(transactions)
        uvloop.run(live_lines(transactions // 5))
        return
    print(f"hot path: {compiled.build()} (POOLER_PURE=1: the Python sources)")
    if sys.argv[2:] == ["login"]:  # the login lines alone
        print_login(transactions)
        return
    print(f"relay:   {relay(transactions, servers=4):5.2f} µs per select-only transaction")
    extended = relay(transactions, 4, EXTENDED_QUERY, EXTENDED_ANSWER)
    print(f"extended: {extended:5.2f} µs per transaction, Parse/Bind/Describe/Execute/Sync")
    per_xact = tpcb(transactions // 4)
    print(
        f"tpc-b:   {per_xact:5.2f} µs per transaction, {per_xact / len(TPCB):5.2f} per statement"
        " (BEGIN, 3 UPDATE, SELECT, INSERT, END)"
    )
    print(f"waiting: {relay(transactions, servers=1):5.2f} µs per transaction, 4 clients, 1 server")
    crowd = relay(transactions, 20, clients_n=500)
    print(f"waiting: {crowd:5.2f} µs per transaction, 500 clients, 20 servers (bench/run's e)")
    up, down = to_write(transactions)
    print(f"to the write: {up:5.2f} µs client → server, {down:5.2f} µs server → client (select)")
    up, down = to_write(transactions, EXTENDED_QUERY, EXTENDED_ANSWER)
    print(f"to the write: {up:5.2f} µs client → server, {down:5.2f} µs server → client (extended)")
    print_login(transactions)
    per_apply = uvloop.run(socket_options(transactions // 10))
    print(f"socket options: {per_apply:5.2f} µs per connection (keepalive, real TCP socket)")
    print_pieces(transactions)
    uvloop.run(live_lines(transactions // 5))


if __name__ == "__main__":
    main()
