"""A look at another process's TCP sockets (Linux pidfd_getfd; the tests run as root or as the
pooler's own user): which options the pooler set on them."""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
from collections.abc import Iterator
from pathlib import Path

SYS_PIDFD_GETFD = 438  # x86-64 and arm64 alike
_libc = ctypes.CDLL(None, use_errno=True)


def _sockets_of(pid: int) -> Iterator[socket.socket]:
    pidfd = os.pidfd_open(pid)
    try:
        for entry in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                if not os.readlink(entry).startswith("socket:"):
                    continue
            fd = _libc.syscall(SYS_PIDFD_GETFD, pidfd, int(entry.name), 0)
            if fd < 0:
                raise OSError(ctypes.get_errno(), "pidfd_getfd failed")
            sock = socket.socket(fileno=fd)
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                yield sock
            else:
                sock.close()
    finally:
        os.close(pidfd)


def tcp_socket(pids: set[int], *, local_port: int | None = None, peer_port: int | None = None):
    """A duplicate of the connected TCP socket of one of `pids` with these ports (or None).
    Close it when done."""
    for pid in pids:
        for sock in _sockets_of(pid):
            try:
                local, peer = sock.getsockname()[1], sock.getpeername()[1]
            except OSError:  # a listening socket
                sock.close()
                continue
            if (local_port is None or local == local_port) and (
                peer_port is None or peer == peer_port
            ):
                return sock
            sock.close()
    return None


def tcp_options(sock: socket.socket) -> dict[str, int]:
    tcp = socket.IPPROTO_TCP
    return {
        "nodelay": sock.getsockopt(tcp, socket.TCP_NODELAY),
        "keepalive": sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
        "idle": sock.getsockopt(tcp, socket.TCP_KEEPIDLE),
        "interval": sock.getsockopt(tcp, socket.TCP_KEEPINTVL),
        "probes": sock.getsockopt(tcp, socket.TCP_KEEPCNT),
        "user_timeout": sock.getsockopt(tcp, socket.TCP_USER_TIMEOUT),
    }
