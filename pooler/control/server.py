"""The control-socket server (runs in the supervisor; protocol in pooler/control/schema.py).

The socket is created with mode 0600 (bound under umask 0177, so there is no window where it
is wider). Each connection's peer uid is read with SO_PEERCRED; a uid other than ours is
answered with one `forbidden` error and closed. A malformed line gets an error reply and the
connection stays open.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from pooler.control import schema
from pooler.control.client import _Reachable

Handler = Callable[[schema.Request, "Connection"], Awaitable[tuple[str, Any]]]


def peer_uid(sock: socket.socket | None) -> int | None:
    if sock is None or not hasattr(socket, "SO_PEERCRED"):
        return None
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    uid: int
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid


class Connection:
    """One control client; `topics` are its subscriptions."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.topics: set[str] = set()

    def send(self, data: bytes) -> None:
        if not self.writer.is_closing():
            self.writer.write(data)


class ControlServer:
    def __init__(self, path: str | os.PathLike[str], handler: Handler) -> None:
        self.path = Path(path)
        self.handler = handler
        self.connections: set[Connection] = set()
        self._server: asyncio.AbstractServer | None = None
        self.allowed_uid = os.getuid()
        self._inode = 0

    async def start(self) -> None:
        # bound and listening under a temporary name, then renamed into place: when the path
        # appears, connecting to it works
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        reachable = _Reachable(tmp)
        old = os.umask(0o177)
        try:
            sock.bind(reachable.path)
        except OSError:
            sock.close()
            raise
        finally:
            os.umask(old)
            reachable.close()
        os.chmod(tmp, 0o600)
        self._inode = os.stat(tmp).st_ino  # to tell our socket file from a successor's
        sock.listen(64)
        self._server = await asyncio.start_unix_server(
            self._serve, sock=sock, limit=schema.MAX_LINE
        )
        os.replace(tmp, self.path)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for conn in list(self.connections):
            conn.writer.close()
        with contextlib.suppress(FileNotFoundError):
            if os.stat(self.path).st_ino == self._inode:  # (after an online restart: not ours)
                self.path.unlink()

    def publish(self, topic: str, data: Any) -> None:
        """Send an event to every subscriber of `topic` (slow readers are dropped)."""
        if not any(topic in c.topics for c in self.connections):
            return
        line = schema.event(topic, data)
        for conn in list(self.connections):
            if topic not in conn.topics:
                continue
            transport = conn.writer.transport
            if transport.get_write_buffer_size() > 16 * schema.MAX_LINE:
                conn.writer.close()  # not reading its stream: cut it off
                continue
            conn.send(line)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        uid = peer_uid(writer.get_extra_info("socket"))
        if uid is not None and uid != self.allowed_uid:
            writer.write(schema.error(None, "forbidden", f"uid {uid} may not use this socket"))
            with contextlib.suppress(ConnectionError, OSError):
                await writer.drain()
            writer.close()
            return
        conn = Connection(writer)
        self.connections.add(conn)
        try:
            while True:
                try:
                    line = await reader.readline()
                except ValueError:  # a line longer than MAX_LINE
                    conn.send(schema.error(None, "too_long", "request line too long"))
                    break
                if not line:
                    break
                if not line.strip():
                    continue
                await self._one(conn, line)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self.connections.discard(conn)
            writer.close()

    async def _one(self, conn: Connection, line: bytes) -> None:
        try:
            request = schema.decode_request(line)
        except schema.ProtocolError as exc:
            conn.send(schema.error(exc.request_id, exc.code, str(exc)))
            return
        try:
            type_, data = await self.handler(request, conn)
        except schema.ProtocolError as exc:
            conn.send(schema.error(request.id, exc.code, str(exc)))
            return
        except Exception as exc:
            conn.send(schema.error(request.id, "internal", repr(exc)))
            return
        conn.send(schema.response(request.id, type_, data))
