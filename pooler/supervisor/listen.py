"""Listen sockets, bound by the supervisor and inherited by the workers.

TCP: every worker gets its own socket on the same address with SO_REUSEPORT, so the kernel
spreads new connections over the workers. (One shared socket was measured first: all 50
connections of a test landed on the same one of 4 workers, because whichever worker wakes
first accepts the whole backlog.) A worker that is restarted gets the same socket back, so
connections queued on it while it was down are served, not refused. Unix sockets cannot be
balanced that way and are shared by all workers.
"""

from __future__ import annotations

import os
import socket

from pooler.config import Config, Listen

Bound = list[tuple[Listen, socket.socket]]


def _bind_unix(config: Config, listen: Listen) -> socket.socket:
    path = os.path.join(config.unix_socket_dir or ".", f".s.PGSQL.{listen.port}")
    if os.path.exists(path):
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    if config.unix_socket_mode:
        os.chmod(path, int(config.unix_socket_mode, 8))
    sock.listen(listen.backlog)
    sock.setblocking(False)
    return sock


def _bind_tcp(listen: Listen) -> list[socket.socket]:
    host = None if listen.host == "*" else listen.host
    infos = socket.getaddrinfo(host, listen.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets = []
    for family, socktype, proto, _name, addr in infos:
        sock = socket.socket(family, socktype, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(addr)
        sock.listen(listen.backlog)
        sock.setblocking(False)
        sockets.append(sock)
    return sockets


def bind_listeners(config: Config, workers: int) -> list[Bound]:
    """One list of (listen section, socket) per worker. Raises OSError (port taken...)."""
    per_worker: list[Bound] = [[] for _ in range(workers)]
    for listen in config.listens:
        if listen.host is None:
            shared = _bind_unix(config, listen)
            for bound in per_worker:
                bound.append((listen, shared))
            continue
        for bound in per_worker:
            bound.extend((listen, sock) for sock in _bind_tcp(listen))
    return per_worker


def describe(config: Config) -> str:
    return ", ".join(f"{listen.host or 'unix'}:{listen.port}" for listen in config.listens)
