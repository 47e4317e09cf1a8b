"""A small TCP fault proxy for tests (in the spirit of asyncpg's test suite's TCPFuzzingProxy).

It sits between a client (the pooler) and a server (PostgreSQL), forwards bytes both ways and,
on command, misbehaves::

    with FaultProxy(HOST, pg.port) as proxy:      # runs its own event loop in a thread
        storage(port=proxy.port)                  # the pooler's storage points at the proxy
        proxy.reset()                             # RST every open connection now
        proxy.stall()                             # stop forwarding (existing connections)
        proxy.resume()                            # forward again
        proxy.mode = "refuse"                     # new connections: accept, close at once
        proxy.mode = "blackhole"                  # new connections: accept, never forward
        proxy.mode = "close_login"                # close when the server's first reply comes
        proxy.mode = "pass"                       # back to normal

``record=True`` keeps every connection's client→server bytes in :attr:`recorded` (a list of
bytearrays, one per connection): a recording proxy for capturing real client sessions.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from typing import Any, Self

MODES = ("pass", "refuse", "blackhole", "close_login")


class _Link:
    """One proxied connection: the client side, the server side and two pumps."""

    def __init__(self, proxy: FaultProxy, reader: asyncio.StreamReader, writer: Any) -> None:
        self.proxy = proxy
        self.client_reader = reader
        self.client_writer = writer
        self.server_writer: Any = None
        self.flowing = asyncio.Event()
        self.flowing.set()
        self.record = bytearray()

    def writers(self) -> list[Any]:
        return [w for w in (self.client_writer, self.server_writer) if w is not None]

    def abort(self, rst: bool = True) -> None:
        for w in self.writers():
            sock = w.get_extra_info("socket")
            if rst and sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            w.transport.abort() if rst else w.close()

    async def pump(self, reader: asyncio.StreamReader, writer: Any, upstream: bool) -> None:
        first = True
        try:
            while True:
                await self.flowing.wait()
                data = await reader.read(65536)
                if not data:
                    break
                await self.flowing.wait()
                if not upstream and first and self.mode_at_start == "close_login":
                    self.abort(rst=False)
                    return
                first = False
                if upstream and self.proxy.record_enabled:
                    self.record += data
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            with contextlib.suppress(OSError, RuntimeError):
                if writer.can_write_eof():
                    writer.write_eof()
                else:
                    writer.close()


class FaultProxy:
    def __init__(self, target_host: str, target_port: int, *, record: bool = False) -> None:
        self.target = (target_host, target_port)
        self.record_enabled = record
        self.recorded: list[bytearray] = []
        self.mode = "pass"
        self.port = 0
        self.accepted = 0
        self._links: set[_Link] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()

    # --- lifecycle (the proxy runs in its own thread) ----------------------------------

    def start(self) -> Self:
        self._thread = threading.Thread(target=self._run, name="faultproxy", daemon=True)
        self._thread.start()
        if not self._started.wait(10):
            raise RuntimeError("fault proxy did not start")
        return self

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        self._server = loop.run_until_complete(
            asyncio.start_server(self._accept, "127.0.0.1", 0, reuse_address=True)
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._started.set()
        loop.run_forever()
        for link in list(self._links):
            link.abort()
        tasks = asyncio.all_tasks(loop)
        for task in tasks:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        loop.close()

    def close(self) -> None:
        if self._loop is None:
            return
        loop = self._loop

        def shutdown() -> None:
            assert self._server is not None
            self._server.close()
            loop.stop()

        loop.call_soon_threadsafe(shutdown)
        if self._thread is not None:
            self._thread.join(10)
        self._loop = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, fn: Any) -> Any:
        """Run fn() in the proxy's loop and wait for its result."""
        assert self._loop is not None

        async def run() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(10)

    # --- faults -----------------------------------------------------------------------

    @property
    def connections(self) -> int:
        return self._call(lambda: len(self._links))

    def reset(self) -> int:
        """RST every open connection (both sides); returns how many were cut."""

        def cut() -> int:
            links = list(self._links)
            for link in links:
                link.abort()
            return len(links)

        return self._call(cut)

    def stall(self) -> None:
        """Stop forwarding on every open connection (bytes stay where they are)."""
        self._call(lambda: [link.flowing.clear() for link in self._links])

    def resume(self) -> None:
        self._call(lambda: [link.flowing.set() for link in self._links])

    # --- connections ------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: Any) -> None:
        with contextlib.suppress(asyncio.CancelledError):  # cancelled at close()
            await self._serve(reader, writer)

    async def _serve(self, reader: asyncio.StreamReader, writer: Any) -> None:
        self.accepted += 1
        mode = self.mode
        link = _Link(self, reader, writer)
        link.mode_at_start = mode  # type: ignore[attr-defined]
        if mode == "refuse":
            link.abort(rst=False)
            return
        self._links.add(link)
        try:
            if mode == "blackhole":
                link.flowing.clear()
                await reader.read()  # until the client gives up
                return
            try:
                server_reader, server_writer = await asyncio.open_connection(*self.target)
            except OSError:
                link.abort(rst=False)
                return
            link.server_writer = server_writer
            if self.record_enabled:
                self.recorded.append(link.record)
            await asyncio.gather(
                link.pump(reader, server_writer, upstream=True),
                link.pump(server_reader, writer, upstream=False),
            )
        finally:
            self._links.discard(link)
            with contextlib.suppress(Exception):
                link.abort(rst=False)
