"""systemd readiness (`Type=notify-reload`): datagrams to `$NOTIFY_SOCKET`, as sd_notify(3).

`READY=1` once every worker serves, `RELOADING=1` (with `MONOTONIC_USEC`) when a reload
starts and `READY=1` again when it is applied, `STOPPING=1` on shutdown. Without
`NOTIFY_SOCKET` (not started by systemd) nothing is sent. A name starting with `@` is in the
abstract namespace. Failures (a full receiver included) are ignored: readiness reporting never stops the pooler.
"""

from __future__ import annotations

import os
import socket
import time


def notify(*states: str) -> bool:
    """Send `states` (e.g. "READY=1") as one datagram; False when nobody listens."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address or address[0] not in "/@":
        return False
    if address[0] == "@":
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.setblocking(False)  # a receiver that does not read never blocks the pooler
            sock.sendto("\n".join(states).encode(), address)
    except OSError:
        return False
    return True


def reloading() -> bool:
    return notify(
        "RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}"
    )
