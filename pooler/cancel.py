"""Sending a CancelRequest to a PostgreSQL server: the one way both a worker (a client's
cancel) and the supervisor (the servers of a worker that died) do it."""

from __future__ import annotations

import asyncio

from pooler.config import Endpoint
from pooler.logs import log
from pooler.protocol import build

# Process ids in the BackendKeyData pooler gives its clients: from POOLER_PIDS up, one of
# pooler's own whose top byte is the owning worker's index + 1; below it (a session-pool
# client), its server's own process id: no worker is named, every worker is asked. The
# secret is always 31 random bits.
POOLER_PIDS = 1 << 24


def key_owner(pid: int) -> int:
    """The index of the worker that gave a client this process id in its BackendKeyData;
    negative: a server's own pid (a session-pool client), which any worker may have given."""
    pid &= 0xFFFFFFFF
    if pid >= POOLER_PIDS:
        return (pid >> 24) - 1
    return -1


async def send_cancel(endpoint: Endpoint, pid: int, secret: int, timeout: float | None) -> None:
    """Connect to the server, send the CancelRequest, wait until PostgreSQL closes the
    connection (it has signalled the backend then); failures are logged, never raised."""
    try:
        async with asyncio.timeout(timeout):
            if endpoint.unix_socket_path:
                reader, writer = await asyncio.open_unix_connection(endpoint.unix_socket_path)
            else:
                reader, writer = await asyncio.open_connection(endpoint.host, endpoint.port)
            writer.write(build.cancel_request(pid, secret))
            await writer.drain()
            await reader.read()  # the server closes when done
            writer.close()
    except (OSError, TimeoutError) as exc:
        log.error("cancel", f"cancel request to server pid {pid} failed: {exc!r}")
