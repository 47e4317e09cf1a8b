"""Helpers of the reliability tests: raw protocol bytes, the control socket, process memory."""

from __future__ import annotations

import asyncio
import socket
import struct
from typing import Any

from harness import patience

from pooler.control.client import ControlClient, default_control_path

BACKEND_TYPES = frozenset(b"RSKZEDTCINnst123AGHWdcvV")


def startup_packet(user: str = "postgres", database: str = "p0", **extra: str) -> bytes:
    body = struct.pack("!i", 196608)
    for key, value in {"user": user, "database": database, **extra}.items():
        body += key.encode() + b"\0" + value.encode() + b"\0"
    body += b"\0"
    return struct.pack("!i", len(body) + 4) + body


def split_messages(data: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    """Complete typed messages in ``data`` and the incomplete tail."""
    out = []
    pos = 0
    while len(data) - pos >= 5:
        length = struct.unpack_from("!i", data, pos + 1)[0]
        if length < 4 or len(data) - pos < 1 + length:
            break
        out.append((data[pos], data[pos + 5 : pos + 1 + length]))
        pos += 1 + length
    return out, data[pos:]


def error_fields(body: bytes) -> dict[str, str]:
    return {chr(p[0]): p[1:].decode("utf-8", "replace") for p in body.split(b"\0") if p}


def read_until(sock: socket.socket, kinds: bytes, timeout: float = 5) -> list[tuple[int, bytes]]:
    """Backend messages until one whose type is in ``kinds`` (or EOF); raises after
    ``patience(timeout)`` seconds."""
    sock.settimeout(patience(timeout))
    data = b""
    while True:
        messages, _ = split_messages(data)
        for i, (kind, _body) in enumerate(messages):
            if kind in kinds:
                return messages[: i + 1]
        chunk = sock.recv(65536)
        if not chunk:
            return messages
        data += chunk


def read_to_eof(sock: socket.socket, timeout: float = 5) -> bytes:
    """Everything until the peer closes; raises TimeoutError when it does not."""
    sock.settimeout(timeout)
    data = bytearray()
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return bytes(data)
        if not chunk:
            return bytes(data)
        data += chunk


def control(p: Any, request: str, *args: Any) -> Any:
    """One control-socket request against a Pooler (default socket path)."""

    from harness import wait_until

    path = default_control_path(p.config_path)
    wait_until(path.exists, timeout=10, message=f"control socket {path}")

    async def run() -> Any:
        async with ControlClient(path) as c:
            return await getattr(c, request)(*args)

    return asyncio.run(run())


def workers(p: Any) -> list[Any]:
    return control(p, "workers")


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0
