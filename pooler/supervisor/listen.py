"""Listen sockets, bound by the supervisor and inherited by the workers.

TCP: every worker gets its own socket on the same address with SO_REUSEPORT, so the kernel
spreads new connections over the workers. (One shared socket was measured first: all 50
connections of a test landed on the same one of 4 workers, because whichever worker wakes
first accepts the whole backlog.) A worker that is restarted gets the same socket back, so
connections queued on it while it was down are served, not refused. Unix sockets cannot be
balanced that way and are shared by all workers.
"""

from __future__ import annotations

import ctypes
import os
import select
import socket
import struct

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


def bind_listen(config: Config, listen: Listen) -> list[socket.socket]:
    """The socket(s) of one listen section for one worker (a unix socket: for all)."""
    return [_bind_unix(config, listen)] if listen.host is None else _bind_tcp(listen)


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


SO_ATTACH_REUSEPORT_CBPF = 51  # linux/asm-generic/socket.h
_BPF_LD_W_ABS, _BPF_ALU_MOD_K, _BPF_JEQ_K, _BPF_RET_K = 0x20, 0x94, 0x15, 0x06
_SKF_AD_RANDOM = (-0x1000 + 56) & 0xFFFFFFFF  # SKF_AD_OFF + SKF_AD_RANDOM


def _steering_program(slots: list[int]) -> bytes:
    """cBPF: A = random % len(slots); return slots[A] (one jeq per slot)."""
    code = [(_BPF_LD_W_ABS, 0, 0, _SKF_AD_RANDOM), (_BPF_ALU_MOD_K, 0, 0, len(slots))]
    for position, slot in enumerate(slots):
        code += [(_BPF_JEQ_K, 0, 1, position), (_BPF_RET_K, 0, 0, slot)]
    code.append((_BPF_RET_K, 0, 0, slots[0]))
    return b"".join(struct.pack("HBBI", *instruction) for instruction in code)


def steer(per_worker: list[Bound], serving: list[int]) -> bool:
    """New TCP connections go only to the sockets of the `serving` worker indexes (each
    SO_REUSEPORT group: one listen address). False when the kernel refused (connections are
    then spread over every socket, as without a program)."""
    if not per_worker or not serving:
        return True  # nothing to steer
    ok = True
    for position, (_listen, sock) in enumerate(per_worker[0]):
        if sock.family == socket.AF_UNIX:
            continue  # one socket shared by all workers
        program = ctypes.create_string_buffer(_steering_program(sorted(serving)))
        fprog = struct.pack("HL", 2 + 2 * len(serving) + 1, ctypes.addressof(program))
        try:
            per_worker[0][position][1].setsockopt(
                socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog
            )
        except OSError:
            ok = False
    return ok


def queued(bound: Bound) -> bool:
    """Are connections waiting in these (TCP) sockets for a worker to accept them?"""
    socks = [sock for _, sock in bound if sock.family != socket.AF_UNIX]
    return bool(socks and select.select(socks, [], [], 0)[0])
