"""Cancel requests in a worker: the BackendKeyData it gives its clients (a process id that
encodes the worker, or for a session-pool client its server's own), a client's
CancelRequest (handed through the supervisor to the worker that owns the key, or to every
other worker for a server's own pid), and the CancelRequests it sends PostgreSQL, at most
its share of cancel_max_inflight at once."""

from __future__ import annotations

import asyncio
import os
import struct
from typing import Protocol

from pooler.cancel import POOLER_PIDS, key_owner, send_cancel
from pooler.config import Config
from pooler.logs import log
from pooler.server.backend import ServerConnection
from pooler.server.client import ClientConnection
from pooler.server.flow import CANCELLING
from pooler.server.link import Supervisor

_SECRETS = struct.Struct("!1024I")  # 4 KB of randomness: 1,024 secrets


class CancelOwner(Protocol):
    """What the cancels use of their worker (`worker.Worker`)."""

    index: int
    config: Config
    link: Supervisor


class Cancels:
    """The cancel keys of one worker's clients and its CancelRequests in flight."""

    def __init__(self, worker: CancelOwner) -> None:
        self.worker = worker
        config = worker.config
        inflight = config.cancel_max_inflight
        if inflight <= 0:
            inflight = 2 * max(1, config.workers)
        self.limit = max(1, inflight // max(1, config.workers))  # sized at start
        self.gate = asyncio.Semaphore(self.limit)
        self.keys: dict[int, ClientConnection] = {}
        self._counter = 0
        self._secrets: list[int] = []  # the next ones, from os.urandom (`_secret`)

    def register(self, client: ClientConnection, server_pid: int = 0) -> tuple[int, int]:
        """A BackendKeyData for the client. With `server_pid` (a session-pool client: one
        server for its life) the server's own process id, as pg_backend_pid(),
        pg_stat_activity and NOTIFY name it; otherwise a process id that encodes this
        worker. The secret is 31 random bits either way."""
        if 0 < server_pid < POOLER_PIDS and server_pid not in self.keys:
            # (the same pid on another host, already a key here: rare; a pooler pid then)
            self.keys[server_pid] = client
            return server_pid, self._secret()
        while True:
            self._counter = (self._counter + 1) & 0xFFFFFF
            pid = ((self.worker.index + 1) << 24) | self._counter
            if pid not in self.keys:
                break
        self.keys[pid] = client
        return pid, self._secret()

    def _secret(self) -> int:
        """31 random bits from the system's source, as secrets.randbits(31), read 4 KB at a
        time (one system call per secret was a tenth of a login's own work) and cut into
        1,024 secrets at once (a slice and an int.from_bytes per secret cost 0.1 µs)."""
        if not self._secrets:
            self._secrets = [n & 0x7FFFFFFF for n in _SECRETS.unpack(os.urandom(_SECRETS.size))]
        return self._secrets.pop()

    async def cancel(self, pid: int, secret: int, *, forwarded: bool = False) -> None:
        """A CancelRequest: cancel the query of the client's server, wherever it lives.
        `forwarded`: the supervisor handed it here; it goes no further."""
        owner = key_owner(pid)
        if owner >= 0 and owner != self.worker.index:
            self.worker.link.forward_cancel(pid, secret)  # the supervisor hands it to the owner
            return
        client = self.keys.get(pid)
        if client is None or not client.check_cancel_key(secret):
            if owner < 0 and not forwarded:  # a server's own pid: another worker's, maybe
                self.worker.link.forward_cancel(pid, secret)
            return
        server = client.server
        if server is not None:
            # no more of its output is relayed before the cancel is on its way: PostgreSQL,
            # blocked writing, cannot finish the query meanwhile
            server.reading.pause(CANCELLING)
            try:
                await self.cancel_backend(server)
            finally:
                server.reading.resume(CANCELLING)

    async def cancel_backend(self, server: ServerConnection) -> None:
        """Send PostgreSQL a CancelRequest for the server's query. At most
        cancel_max_inflight of them at once (−1: 2 × workers, odyssey; each worker its
        share); more wait for a place up to cancel_queue_timeout_ms (−1: as long as it takes),
        then the cancel is dropped."""
        gate = self.gate
        queue_ms = self.worker.config.cancel_queue_timeout_ms
        try:
            async with asyncio.timeout(queue_ms / 1000 if queue_ms >= 0 else None):
                await gate.acquire()
        except TimeoutError:
            log.error(
                "cancel",
                f"cancel request dropped: {self.limit} in flight, waited "
                f"cancel_queue_timeout_ms ({queue_ms})",
                server.log_context(),
            )
            return
        try:
            await self._send(server)
        finally:
            gate.release()

    async def _send(self, server: ServerConnection) -> None:
        pid, secret = server.backend_key
        await send_cancel(
            server.endpoint, pid, secret, self.worker.config.cancel_timeout_ms / 1000 or None
        )

    def forget(self, client: ClientConnection) -> None:
        """The client is gone: its key no longer cancels anything."""
        pid = client.key[0]
        if self.keys.get(pid) is client:
            del self.keys[pid]
