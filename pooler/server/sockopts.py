"""TCP options of client and server sockets: `nodelay` and the `keepalive*` keys (odyssey).

`keepalive` is the idle time in seconds before the first probe (0 turns keepalive off),
`keepalive_keep_interval` the seconds between probes, `keepalive_probes` how many go
unanswered before the kernel drops the connection, `keepalive_usr_timeout` TCP_USER_TIMEOUT
in ms: 0 leaves the kernel's default, a negative value is computed as odyssey does,
1000 × (keepalive + interval × probes) − 500. A dead peer behind a silent network is found in
keepalive + interval × probes seconds instead of the kernel's two hours.
"""

from __future__ import annotations

import asyncio
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

from pooler.config import Config, Rule
from pooler.logs import log


@dataclass(frozen=True, slots=True)
class TcpOptions:
    nodelay: bool = True
    keepalive: int = 15
    interval: int = 5
    probes: int = 3
    usr_timeout: int = 0  # ms

    @classmethod
    def of(cls, config: Config, rule: Rule | None = None) -> TcpOptions:
        """The global keys, or a route's own when it sets `keepalive` (odyssey master: the
        route's other keepalive keys then default to 0, the kernel's values)."""
        if rule is not None and rule.keepalive > 0:
            return cls(
                config.nodelay,
                rule.keepalive,
                rule.keepalive_keep_interval,
                rule.keepalive_probes,
                rule.keepalive_usr_timeout,
            )
        return cls(
            config.nodelay,
            config.keepalive,
            config.keepalive_keep_interval,
            config.keepalive_probes,
            config.keepalive_usr_timeout,
        )

    @property
    def user_timeout_ms(self) -> int:
        if self.usr_timeout < 0:
            return max(0, 1000 * (self.keepalive + self.interval * self.probes) - 500)
        return self.usr_timeout


def _kernel_default(name: str, fallback: int) -> int:
    try:
        return int(Path("/proc/sys/net/ipv4", name).read_text())
    except (OSError, ValueError):
        return fallback


# What 0 ("the kernel's value") means for the keepalive keys, for a listening socket that
# may have had other values before a reload (Linux's defaults if /proc cannot say)
_KERNEL_KEEPALIVE = (
    _kernel_default("tcp_keepalive_time", 7200),
    _kernel_default("tcp_keepalive_intvl", 75),
    _kernel_default("tcp_keepalive_probes", 9),
)


def inherited(options: TcpOptions) -> bool:
    """Do the sockets a listening socket accepts get `options` from it (`set_on_listener`)?
    Linux copies a listener's socket options to every socket it accepts; TCP_NODELAY aside:
    uvloop turns it on for each, so `nodelay no` is set per socket (`apply`)."""
    return sys.platform == "linux" and options.nodelay


def set_on_listener(sock: socket.socket, options: TcpOptions) -> bool:
    """Set every keepalive option of `options` on a TCP listening socket, 0 as the kernel's
    default (a reload may change them: each is set anew); False if one could not be set."""
    keepalive, interval, probes = _KERNEL_KEEPALIVE
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, int(options.keepalive > 0))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, options.keepalive or keepalive)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, options.interval or interval)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, options.probes or probes)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, options.user_timeout_ms)
    except OSError as exc:
        log.error("socket", f"cannot set TCP options {options} on a listening socket: {exc}")
        return False
    return True


def apply(transport: asyncio.BaseTransport, options: TcpOptions) -> None:
    """Set the options on a transport's socket (TCP only; a Unix socket is left alone).

    One socket object over the transport's descriptor for all the calls: uvloop's
    `get_extra_info("socket")` makes a new one (and a getsockname) for every `setsockopt`.
    TCP_NODELAY is only ever turned off here: uvloop and asyncio set it on every TCP transport.
    """
    pseudo = transport.get_extra_info("socket")
    if pseudo is None or pseudo.family not in (socket.AF_INET, socket.AF_INET6):
        return
    try:
        sock = socket.socket(pseudo.family, pseudo.type, pseudo.proto, pseudo.fileno())
    except OSError as exc:
        log.error("socket", f"cannot set TCP options {options}: {exc}")
        return
    try:
        if not options.nodelay:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 0)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, int(options.keepalive > 0))
        if options.keepalive > 0:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, options.keepalive)
            if options.interval > 0:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, options.interval)
            if options.probes > 0:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, options.probes)
        timeout = options.user_timeout_ms
        if timeout > 0:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, timeout)
    except OSError as exc:
        log.error("socket", f"cannot set TCP options {options}: {exc}")
    finally:
        sock.detach()  # the descriptor stays the transport's
