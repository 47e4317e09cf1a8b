"""`authentication "external"`: an agent on a Unix socket decides, as odyssey's external auth.

The client is asked for a clear-text password (its *token*). The pooler connects to
`external_auth_socket_path` (default `/tmp/external-auth.sock`, odyssey's) and sends two
messages, the user name and the token, each NUL-terminated; the agent answers two: a status
(first byte non-zero: accepted) and the *external id* it knows the user by (logged). Every
message is framed by its length as 8 bytes, little-endian; a message over 1 MiB is refused.
Timeouts are odyssey's: 1 s to connect and to send, 4 s for the status, 1 s for the id.
"""

from __future__ import annotations

import asyncio
import struct

DEFAULT_SOCKET = "/tmp/external-auth.sock"
MAX_MESSAGE = 1 << 20
CONNECT_TIMEOUT = SEND_TIMEOUT = BODY_TIMEOUT = 1.0
STATUS_TIMEOUT = 4.0


class ExternalRefused(Exception):
    """The agent said no, or could not be asked (the message says which)."""


def frame(body: bytes) -> bytes:
    return struct.pack("<Q", len(body)) + body


async def _read_message(reader: asyncio.StreamReader, timeout: float) -> bytes:
    async with asyncio.timeout(timeout):
        (size,) = struct.unpack("<Q", await reader.readexactly(8))
    if size > MAX_MESSAGE:
        raise ExternalRefused(f"agent message of {size} bytes is too large")
    async with asyncio.timeout(BODY_TIMEOUT):
        return await reader.readexactly(size)


async def authenticate(socket_path: str | None, user: str, token: str) -> str:
    """Ask the agent; the external id of an accepted user, else ExternalRefused."""
    path = socket_path or DEFAULT_SOCKET
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT):
            reader, writer = await asyncio.open_unix_connection(path)
    except (OSError, TimeoutError) as exc:
        raise ExternalRefused(f"failed to connect to {path}: {exc or 'timeout'}") from None
    try:
        writer.write(frame(user.encode() + b"\0") + frame(token.encode() + b"\0"))
        async with asyncio.timeout(SEND_TIMEOUT):
            await writer.drain()
        status = await _read_message(reader, STATUS_TIMEOUT)
        external_id = await _read_message(reader, BODY_TIMEOUT)
    except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
        raise ExternalRefused(f"no answer from the external agent: {exc or 'timeout'}") from None
    finally:
        writer.close()
    name = external_id.rstrip(b"\0").decode("utf-8", "replace")
    if not status or status[0] == 0:
        raise ExternalRefused(f"the external agent refused it (external_id: {name})")
    return name
