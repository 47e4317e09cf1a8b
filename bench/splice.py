#!/usr/bin/env python3
"""A bare byte splice on uvloop: the floor of any Python proxy (the ``splice`` bench target).

Usage: splice.py LISTEN_PORT PG_PORT [--host H] [--workers N] [--backlog B]

Every accepted client gets its own TCP connection to PostgreSQL on H:PG_PORT, and bytes are
copied both ways by asyncio Protocols: no parsing, no pooling, no authentication. Bytes a
client sends before its server connection is up are buffered. When either side closes, the
other is closed too (after its pending writes). ``--workers N`` runs N processes (the first
one forks the others), each with its own SO_REUSEPORT listening socket on H:LISTEN_PORT.
Started by bench/bench.py (``TARGETS=...,splice``); not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from typing import cast

import uvloop


class Half(asyncio.Protocol):
    """One side of a spliced pair; `peer` is the other side once it is linked."""

    transport: asyncio.Transport
    peer: Half | None = None
    closed = False

    def data_received(self, data: bytes) -> None:
        assert self.peer is not None
        self.peer.transport.write(data)

    def pause_writing(self) -> None:  # our send buffer is full: stop reading the other side
        if self.peer is not None and not self.peer.transport.is_closing():
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and not self.peer.transport.is_closing():
            self.peer.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.peer is not None:
            self.peer.transport.close()


class Client(Half):
    def __init__(self, host: str, port: int) -> None:
        self.server_addr = (host, port)
        self.pending: list[bytes] | None = []  # None once linked to its server connection
        self.connecting: asyncio.Task[object] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)  # uvloop's: no subclass
        transport.pause_reading()  # uvloop may still deliver what it has read: see pending
        self.connecting = asyncio.get_running_loop().create_task(self.connect())

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.create_connection(lambda: Server(self), *self.server_addr)
        except OSError:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self.pending is None:
            assert self.peer is not None
            self.peer.transport.write(data)
        else:
            self.pending.append(data)


class Server(Half):
    def __init__(self, client: Client) -> None:
        self.client = client

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)
        client = self.client
        if client.closed:  # the client left while we were connecting
            transport.close()
            return
        self.peer, client.peer = client, self
        if client.pending:
            transport.writelines(client.pending)
        client.pending = None
        client.transport.resume_reading()


async def serve(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: Client(args.host, args.pg_port),
        args.host,
        args.port,
        reuse_port=True,
        backlog=args.backlog,
    )
    print(f"splice pid {os.getpid()}: {args.host}:{args.port} -> {args.pg_port}", flush=True)
    await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("port", type=int)
    parser.add_argument("pg_port", type=int)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--backlog", type=int, default=1024)
    args = parser.parse_args()
    for _ in range(args.workers - 1):  # before any event loop exists
        if os.fork() == 0:
            break
    uvloop.run(serve(args))


if __name__ == "__main__":
    main()
