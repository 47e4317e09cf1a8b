"""The memory flood of issue 16 (tests/integration/test_memory_flood.py, bench/memory_flood.py):
clients that each send 50 MB messages of every frontend type, and a few that are not.

:func:`client` runs one such client against a pooler's port and tallies what happened;
:class:`RssPeak` samples a set of processes' resident memory meanwhile.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from dataclasses import dataclass, field

from wire import rss_kb, startup_packet

from pooler.protocol import build

HOST = "127.0.0.1"
MB = 1024 * 1024
SIZE = 50 * MB

# What goes through to PostgreSQL (streamed; answered), then the refused types: the pooler
# ends the connection at the header (PostgreSQL's limits and types, a Parse too large to
# share in a transaction pool).
STREAMED = "QBFd"
REFUSED = ["P", "D", "C", "E", "S", "H", "X", "c", "f", "p", "z", "\x00", "\xff"]
TYPES = list(STREAMED) + REFUSED


def _body_head(mtype: str) -> tuple[bytes, bytes]:
    """(first bytes, last bytes) of a SIZE-byte body of this type; spaces in between."""
    if mtype == "Q":
        return b"select 1 --", b"\0"
    if mtype == "B":  # an unknown statement, one text parameter of almost SIZE bytes
        head = b"\0nope\0" + struct.pack("!hh", 0, 1) + struct.pack("!i", SIZE - 16)
        return head, struct.pack("!h", 0)
    if mtype == "F":  # a function that does not exist, one argument
        return struct.pack("!ihhi", 1, 0, 1, SIZE - 16), struct.pack("!h", 0)
    if mtype == "P":
        return b"big\0select 1 --", b"\0\0\0"
    return b"", b""


def send_message(sock: socket.socket, mtype: str) -> None:
    head, tail = _body_head(mtype)
    sock.sendall(mtype.encode("latin-1") + struct.pack("!i", SIZE + 4) + head)
    filler = SIZE - len(head) - len(tail)
    piece = b" " * MB
    while filler > 0:
        n = min(filler, MB)
        sock.sendall(piece[:n])
        filler -= n
    sock.sendall(tail)
    if mtype != "Q":
        sock.sendall(build.sync())


def read_answer(sock: socket.socket) -> bytes:
    """Until ReadyForQuery or the end of the connection."""
    data = b""
    while not data.endswith(b"Z\0\0\0\x05I") and not data.endswith(b"Z\0\0\0\x05E"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def _rest(sock: socket.socket) -> bytes:
    """What the pooler said before it ended the connection (its last 300 bytes)."""
    data = b""
    with contextlib.suppress(OSError):
        sock.settimeout(1)
        while chunk := sock.recv(65536):
            data += chunk
    return data[-300:]


@dataclass
class Tally:
    answered: int = 0  # streamed messages PostgreSQL answered
    refused: int = 0  # connections the pooler ended
    problems: list[str] = field(default_factory=list)
    cut_short: list[str] = field(default_factory=list)  # streamed messages not answered
    lock: threading.Lock = field(default_factory=threading.Lock)


def client(port: int, i: int, tally: Tally, heavy: bool = False) -> None:
    refused_type = TYPES[i % len(TYPES)]
    plan = [*STREAMED, REFUSED[i % len(REFUSED)]] if heavy else [refused_type]
    try:
        with socket.create_connection((HOST, port), timeout=120) as sock:
            sock.sendall(startup_packet())
            if b"Z" not in read_answer(sock)[-6:]:
                raise AssertionError("no login")
            for mtype in plan:
                try:
                    send_message(sock, mtype)
                except OSError as exc:  # ended by the pooler while we were sending: refused
                    with tally.lock:
                        tally.refused += 1
                        if mtype in STREAMED:
                            tally.cut_short.append(f"client {i} {mtype}: {exc!r} {_rest(sock)!r}")
                    return
                answer = read_answer(sock)
                with tally.lock:
                    if answer.endswith((b"Z\0\0\0\x05I", b"Z\0\0\0\x05E")):
                        tally.answered += 1
                    else:
                        tally.refused += 1
                        if mtype in STREAMED:
                            tally.cut_short.append(f"client {i} {mtype}: {answer[-300:]!r}")
                        return
    except Exception as exc:
        with tally.lock:
            tally.problems.append(f"client {i} ({plan}): {exc!r}")


def flood(port: int, clients: int, heavy: bool) -> Tally:
    """Run `clients` flood clients at once (threads) and wait for them all."""
    tally = Tally()
    threads = [
        threading.Thread(target=client, args=(port, i, tally, heavy)) for i in range(clients)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return tally


def expected_answers(clients: int, heavy: bool) -> int:
    """How many streamed messages PostgreSQL answers in a flood."""
    if heavy:
        return clients * len(STREAMED)
    return sum(TYPES[i % len(TYPES)] in STREAMED for i in range(clients))


class RssPeak:
    """A thread sampling the total resident memory (kB) of `pids` every 20 ms."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.peak = self.now()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run)

    def now(self) -> int:
        total = 0
        for pid in self.pids:
            with contextlib.suppress(OSError):  # it ended
                total += rss_kb(pid)
        return total

    def _run(self) -> None:
        while not self.stop.wait(0.02):
            self.peak = max(self.peak, self.now())

    def __enter__(self) -> RssPeak:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()
