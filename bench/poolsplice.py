#!/usr/bin/env python3
"""A pooling byte splice on uvloop: the floor of any Python transaction pooler (the
``poolsplice`` bench target).

Usage: poolsplice.py LISTEN_PORT PG_PORT [--host H] [--pool N] [--user U] [--database D]
       [--backlog B]

At start it logs N server connections in to PostgreSQL on H:PG_PORT (trust: no password) as
user U on database D, and keeps the ParameterStatus and BackendKeyData of the first. Every
client is then answered without PostgreSQL: an SSLRequest or GSSENCRequest gets 'N', its
startup packet (whatever user and database it names) a canned AuthenticationOk, those
ParameterStatus, that BackendKeyData and ReadyForQuery 'I'. The first bytes a client sends
with no server linked take an idle server, or wait for one in a FIFO queue. Bytes are then
copied both ways as by bench/splice.py. A server goes back to the pool (or straight to the
first waiting client, with the bytes that client queued) when one of its chunks ends with
ReadyForQuery 'I' (the last 6 bytes, with the previous chunk's tail when a chunk is shorter:
a message cut between chunks is still seen). A client's Terminate closes the client alone; a
client that leaves while linked takes its server with it (its transaction cannot be given to
anyone) and a new server connection replaces it.

Nothing else is parsed. What that costs, on purpose: no named prepared statements (pgbench
``-M prepared`` breaks: a statement is prepared on one server and bound on another), no
pipelining (a client that sends its next Sync or Query before ReadyForQuery 'I' arrives could
lose its server under it; pgbench does not), no cancel (a CancelRequest is closed), no
authentication of clients, and a server message that happened to end in the 6 bytes of
ReadyForQuery 'I' would release it early (no text-format result can). Started by
bench/bench.py (``TARGETS=...,poolsplice``); not a test and not product code.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
from typing import cast

import uvloop

READY_IDLE = b"Z\x00\x00\x00\x05I"  # ReadyForQuery, transaction status idle
TERMINATE = b"X\x00\x00\x00\x04"
SSL_REQUEST, GSSENC_REQUEST, CANCEL_REQUEST = 80877103, 80877104, 80877102


class Half(asyncio.Protocol):
    """One side; `peer` is the linked other side (None while not linked)."""

    transport: asyncio.Transport
    peer: Half | None = None

    def pause_writing(self) -> None:  # our send buffer is full: stop reading the other side
        if self.peer is not None and not self.peer.transport.is_closing():
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and not self.peer.transport.is_closing():
            self.peer.transport.resume_reading()


class Pool:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.idle: list[Server] = []
        self.waiting: collections.deque[Client] = collections.deque()
        self.greeting = b""  # the canned answer to a startup packet, from the first login

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        _, server = await loop.create_connection(
            lambda: Server(self), self.args.host, self.args.pg_port
        )
        await server.logged_in
        if not self.greeting:
            auth_ok = b"R\x00\x00\x00\x08\x00\x00\x00\x00"
            self.greeting = auth_ok + b"".join(server.params) + server.key + READY_IDLE
        self.release(server)

    def release(self, server: Server) -> None:
        """`server` is idle: to the first client still waiting, or to the idle list."""
        while self.waiting:
            client = self.waiting.popleft()
            if not client.transport.is_closing():
                client.link(server)
                return
        self.idle.append(server)


class Client(Half):
    peer: Server | None

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.startup: bytes | None = b""  # bytes of the startup packet so far; None after it
        self.queued: list[bytes] = []  # what a waiting client sent

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's: no subclass

    def data_received(self, data: bytes) -> None:
        server = self.peer
        if server is not None:
            server.transport.write(data)
            return
        if self.startup is not None:
            data = self.start(data)
        if data.endswith(TERMINATE):  # after ReadyForQuery 'I', so no server is linked
            self.transport.close()
            return
        if not data:
            return
        self.queued.append(data)
        if len(self.queued) == 1:  # not yet waiting
            pool = self.pool
            if pool.idle:
                self.link(pool.idle.pop())
            else:
                pool.waiting.append(self)

    def start(self, data: bytes) -> bytes:
        """Answer SSLRequest/GSSENCRequest and the startup packet; return the bytes after it."""
        buf = cast(bytes, self.startup) + data
        while len(buf) >= 8 and len(buf) >= (n := int.from_bytes(buf[:4], "big")):
            code = int.from_bytes(buf[4:8], "big")
            buf = buf[n:]
            if code == CANCEL_REQUEST or n < 8:
                self.transport.close()
                return b""
            if code in (SSL_REQUEST, GSSENC_REQUEST):
                self.transport.write(b"N")
            else:
                self.transport.write(self.pool.greeting)
                self.startup = None
                return buf
        self.startup = buf
        return b""

    def link(self, server: Server) -> None:
        self.peer, server.peer = server, self
        server.transport.writelines(self.queued)
        self.queued = []

    def connection_lost(self, exc: Exception | None) -> None:
        server = self.peer
        if server is not None:  # mid-transaction: that session cannot go to anyone else
            server.peer = None
            server.transport.close()


class Server(Half):
    peer: Client | None

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.tail = b""  # the last 5 bytes from PostgreSQL
        self.login: bytes | None = b""  # bytes of the login answer; None once logged in
        self.logged_in = asyncio.get_running_loop().create_future()
        self.params: list[bytes] = []  # ParameterStatus messages
        self.key = b""  # BackendKeyData

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        a = self.pool.args
        body = b"user\0%s\0database\0%s\0\0" % (a.user.encode(), a.database.encode())
        startup = (8 + len(body)).to_bytes(4, "big") + (196608).to_bytes(4, "big") + body
        self.transport.write(startup)  # protocol 3.0

    def data_received(self, data: bytes) -> None:
        client = self.peer
        if client is not None:
            client.transport.write(data)
        elif self.login is not None:
            self.log_in(data)
            return
        tail = self.tail + data if len(data) < 6 else data
        self.tail = tail[-5:]
        if client is not None and tail.endswith(READY_IDLE):
            self.peer = client.peer = None
            self.pool.release(self)

    def log_in(self, data: bytes) -> None:
        buf = cast(bytes, self.login) + data
        while len(buf) >= 5 and len(buf) >= 1 + (n := int.from_bytes(buf[1:5], "big")):
            msg, buf = buf[: 1 + n], buf[1 + n :]
            kind = msg[:1]
            if kind == b"E" or (kind == b"R" and msg[5:9] != b"\0\0\0\0"):
                raise SystemExit(f"poolsplice: PostgreSQL refused the login (trust only): {msg!r}")
            if kind == b"S":
                self.params.append(msg)
            elif kind == b"K":
                self.key = msg
            elif kind == b"Z":
                self.login = None
                self.logged_in.set_result(None)
                return
        self.login = buf

    def connection_lost(self, exc: Exception | None) -> None:
        pool = self.pool
        if self in pool.idle:
            pool.idle.remove(self)
        if self.peer is not None:  # PostgreSQL went away mid-transaction: so does its client
            self.peer.peer = None
            self.peer.transport.close()
        if self.login is None:  # a replacement keeps the pool at its size
            asyncio.get_running_loop().create_task(pool.connect())


async def serve(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    pool = Pool(args)
    await asyncio.gather(*(pool.connect() for _ in range(args.pool)))
    server = await loop.create_server(
        lambda: Client(pool), args.host, args.port, backlog=args.backlog
    )
    print(
        f"poolsplice pid {os.getpid()}: {args.host}:{args.port} -> {args.pg_port}, "
        f"{args.pool} server connections",
        flush=True,
    )
    await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("port", type=int)
    parser.add_argument("pg_port", type=int)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--pool", type=int, default=20)
    parser.add_argument("--user", default="postgres")
    parser.add_argument("--database", default="postgres")
    parser.add_argument("--backlog", type=int, default=1024)
    uvloop.run(serve(args=parser.parse_args()))


if __name__ == "__main__":
    main()
