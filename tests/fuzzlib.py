"""Live protocol fuzzing: capture real client sessions, mutate them, replay them at a pooler.

Used by tests/integration/test_fuzz_live.py (hypothesis, a few hundred examples) and by
bench/fuzz (plain random, for minutes). One mutated session is one TCP connection:

* :func:`capture_sessions` records the client→server bytes of psycopg (simple and extended
  protocol, a transaction, COPY FROM STDIN, an error), psql and pgbench sessions through a
  recording :class:`faultproxy.FaultProxy` in front of PostgreSQL;
* :func:`split_session` cuts a capture into the startup packet and the typed messages;
* :func:`mutate` applies 1-4 random operations (bit flips, truncation, dropped, duplicated
  and swapped messages, forged length fields, unknown or out-of-order message types,
  injected garbage) chosen by a :class:`random.Random`;
* :func:`hostile_message` builds one message of any type (frontend types and others) with a
  hostile length (PostgreSQL's small-message limit, client_max_buffer, 50 MB, 1 GiB, 2 GiB,
  negative...) and some of its body; :func:`mutate` splices such messages in too, and
  test_fuzz_live sends every type with every such length after a login;
* :func:`replay` sends the result (whole or in small chunks; optionally only after a login
  it sent first), then either reads the answer (half-closing once the pooler is quiet)
  until the pooler closes, or aborts the connection;
* :class:`RssSampler` samples the workers' resident memory while a run goes on;
* :func:`check` says what is wrong with the outcome (a hang, a malformed reply, an
  ErrorResponse without severity or SQLSTATE), or None.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import struct
import subprocess
import threading
import time
from dataclasses import dataclass, field

from faultproxy import FaultProxy
from harness import wait_until
from wire import BACKEND_TYPES, error_fields, split_messages

HOST = "127.0.0.1"

INTERESTING_LENGTHS = (0, 1, 3, 4, 5, 8, -1, -4, 0x7FFFFFFF, 0x40000001, 10001, 65536 + 1)
FRONTEND_TYPES = b"QPBEDCSHFXpdcf"
HOSTILE_TYPES = FRONTEND_TYPES + bytes((0, ord("z"), 0xFF))
MB = 1024 * 1024
HOSTILE_LENGTHS = (
    -1, 0, 3, 4, 5, 10000, 10001, 65537, 4 * MB + 1, 50 * MB, (1 << 30) - 1, (1 << 30) + 1,
    0x7FFFFFFF,
)  # fmt: skip
HOSTILE_SENT = (0, 1000, 300_000)  # body bytes actually sent (up to the length)


def hostile_message(rng: random.Random, mtype: int, length: int) -> bytes:
    """A message of type `mtype` whose length field says `length`, with part of its body."""
    sent = max(0, min(length - 4, rng.choice(HOSTILE_SENT)))
    head = rng.randbytes(min(sent, 64))
    return bytes([mtype]) + struct.pack("!i", length) + head + b" " * (sent - len(head))


def capture_sessions(pg: object) -> list[bytes]:
    """Client→server bytes of a few real client sessions against PostgreSQL ``pg``."""
    import psycopg

    from pooler.pgcluster import conninfo

    with FaultProxy(HOST, pg.port, record=True) as fp:  # type: ignore[attr-defined]
        dsn = conninfo(
            host=HOST,
            port=fp.port,
            dbname="p0",
            user="postgres",
            sslmode="disable",
            gssencmode="disable",
            application_name="fuzz",
        )
        with psycopg.connect(dsn, autocommit=True, prepare_threshold=0) as conn:
            conn.execute("select 1")
            for i in range(3):
                conn.execute(
                    "select %s::int + aid from pgbench_accounts where aid = %s", (i, i + 1)
                )
            with conn.transaction():
                conn.execute("update pgbench_branches set bbalance = bbalance where bid = 1")
                conn.execute("set local statement_timeout = '5s'")
            conn.execute("create temp table fuzz_t (a int, b text)")
            with conn.cursor() as cur, cur.copy("copy fuzz_t from stdin") as copy:
                for i in range(20):
                    copy.write_row((i, f"row {i}"))
            with contextlib.suppress(psycopg.Error):
                conn.execute("select 1/0")
            conn.execute("select count(*) from fuzz_t; select now()", prepare=False)
            conn.execute("listen fuzz_channel")
        env = {**os.environ, "PGSSLMODE": "disable", "PGGSSENCMODE": "disable"}
        binary = pg.binary  # type: ignore[attr-defined]
        base = ["-h", HOST, "-p", str(fp.port), "-U", "postgres"]
        subprocess.run(
            [binary("psql"), "-X", "-q", *base, "-d", "p0", "-c", "select 1", "-c", "\\dt"],
            env=env,
            capture_output=True,
            timeout=30,
            check=True,
        )
        subprocess.run(
            [binary("pgbench"), *base, "-n", "-t", "3", "-M", "extended", "p0"],
            env=env,
            capture_output=True,
            timeout=30,
            check=True,
        )
        wait_until(lambda: not fp.connections, timeout=5, message="recorded sessions to end")
        return [bytes(r) for r in fp.recorded if len(r) > 8]


def split_session(data: bytes) -> list[bytes]:
    """[startup packet, message, message, ...] of a capture (a tail that does not frame is
    kept as one last piece)."""
    length = struct.unpack_from("!i", data)[0]
    pieces = [data[:length]]
    pos = length
    while pos + 5 <= len(data):
        n = struct.unpack_from("!i", data, pos + 1)[0]
        pieces.append(data[pos : pos + 1 + n])
        pos += 1 + n
    if pos < len(data):
        pieces.append(data[pos:])
    return pieces


def _set_length(piece: bytes, value: int) -> bytes:
    off = 0 if piece[:1] == b"\0" else 1  # the startup packet has no type byte
    if len(piece) < off + 4:
        return piece
    return piece[:off] + struct.pack("!i", value) + piece[off + 4 :]


def mutate(rng: random.Random, pieces: list[bytes]) -> tuple[bytes, list[str]]:
    """Apply 1-4 random operations; return the mutated stream and what was done."""
    pieces = list(pieces)
    done: list[str] = []
    cut: int | None = None
    for _ in range(rng.choice((1, 1, 1, 2, 2, 3, 4))):
        op = rng.choice(
            (
                "flip", "flip", "length", "length", "type", "drop", "dup", "swap", "insert",
                "inject", "truncate", "startup", "hostile",
            )
        )  # fmt: skip
        i = rng.randrange(len(pieces))
        piece = pieces[i]
        if op == "flip" and piece:
            b = bytearray(piece)
            for _ in range(rng.randint(1, 4)):
                b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
            pieces[i] = bytes(b)
        elif op == "length":
            if rng.random() < 0.6:
                value = rng.choice(INTERESTING_LENGTHS)
            else:
                value = max(0, len(piece) - (i > 0) + rng.randint(-8, 8))
            pieces[i] = _set_length(piece, value)
            op += f"={value}"
        elif op == "type" and i > 0:
            new = rng.choice((rng.choice(FRONTEND_TYPES), rng.randrange(256)))
            pieces[i] = bytes([new]) + piece[1:]
            op += f"={new!r}"
        elif op == "drop" and len(pieces) > 1:
            del pieces[i]
        elif op == "dup":
            pieces.insert(i, piece)
        elif op == "swap":
            j = rng.randrange(len(pieces))
            pieces[i], pieces[j] = pieces[j], pieces[i]
        elif op == "insert":
            at = rng.randrange(len(piece) + 1)
            pieces[i] = piece[:at] + rng.randbytes(rng.randint(1, 16)) + piece[at:]
        elif op == "inject":
            mtype = rng.choice((rng.choice(FRONTEND_TYPES), rng.randrange(256)))
            body = rng.randbytes(rng.randint(0, 40))
            pieces.insert(i, bytes([mtype]) + struct.pack("!i", len(body) + 4) + body)
            op += f"={mtype!r}"
        elif op == "hostile" and i > 0:
            mtype = rng.choice(HOSTILE_TYPES)
            length = rng.choice(HOSTILE_LENGTHS)
            pieces.insert(i, hostile_message(rng, mtype, length))
            op += f"={mtype!r}/{length}"
        elif op == "truncate":
            cut = rng.randrange(sum(map(len, pieces)) + 1)
            op += f"@{cut}"
        elif op == "startup":
            # a protocol version or a parameter of the startup packet
            b = bytearray(pieces[0])
            if len(b) >= 8 and rng.random() < 0.5:
                b[4:8] = struct.pack("!i", rng.choice((0, 1, 0x20000, 0x30001, 0x40000, -1)))
            else:
                at = rng.randrange(8, max(9, len(b)))
                b[at:at] = rng.choice((b"\0", b"user\0", b"_pq_.x\0y\0", b"replication\0on\0"))
            pieces[0] = bytes(b)
        else:
            continue
        done.append(f"{op}#{i}")
    data = b"".join(pieces)
    if cut is not None:
        data = data[:cut]
    return data, done


@dataclass
class Outcome:
    mode: str  # "halfclose" or "abort"
    reply: bytes = b""
    closed: bool = True  # the pooler closed the connection (halfclose mode)
    seconds: float = 0.0
    error: str | None = None  # a socket error on our side (e.g. reset while sending)
    errors: list[dict[str, str]] = field(default_factory=list)


def replay(
    port: int,
    data: bytes,
    rng: random.Random,
    timeout: float = 10.0,
    quiet: float = 0.15,
    login: bytes | None = None,
) -> Outcome:
    """Send `data` (after `login`, a startup packet answered up to ReadyForQuery, if given)
    and see how the pooler answers."""
    # every random choice is drawn before any I/O (hypothesis needs replayable draws)
    mode = "abort" if rng.random() < 0.2 else "halfclose"
    pieces = [data]
    if rng.random() < 0.3 and len(data) < 100_000:  # in small pieces: every split point
        pieces, pos = [], 0
        while pos < len(data):
            step = rng.randint(1, 64)
            pieces.append(data[pos : pos + step])
            pos += step
    outcome = Outcome(mode)
    started = time.monotonic()
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        if login is not None:
            sock.sendall(login)
            answer = b""
            while b"Z\0\0\0\x05" not in answer:
                chunk = sock.recv(65536)
                if not chunk:
                    raise AssertionError(f"login refused: {answer!r}")
                answer += chunk
        try:
            for piece in pieces:
                sock.sendall(piece)
        except OSError as exc:
            outcome.error = repr(exc)  # the pooler closed on us mid-send: fine
        if mode == "abort":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return outcome
        # read what the pooler answers; once it is quiet for `quiet` s (it waits for more
        # input, as PostgreSQL would), half-close: it must then close too
        reply = bytearray()
        sock.settimeout(quiet)
        half_closed = False
        try:
            while True:
                try:
                    chunk = sock.recv(65536)
                except TimeoutError:
                    if half_closed:
                        raise
                    half_closed = True
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_WR)
                    sock.settimeout(timeout)
                    continue
                if not chunk:
                    break
                reply += chunk
        except ConnectionResetError:
            pass
        except TimeoutError:
            outcome.closed = False
        outcome.reply = bytes(reply)
    outcome.seconds = time.monotonic() - started
    messages, _tail = split_messages(outcome.reply)
    outcome.errors = [error_fields(body) for kind, body in messages if kind == ord("E")]
    return outcome


def check(outcome: Outcome) -> str | None:
    """What is wrong with an outcome, or None."""
    if outcome.mode == "abort":
        return None
    if not outcome.closed:
        return f"the pooler did not close the connection within {outcome.seconds:.1f} s"
    messages, _tail = split_messages(outcome.reply)
    for kind, _body in messages:
        if kind not in BACKEND_TYPES:
            return f"unknown message type {chr(kind)!r} in the reply"
    for fields in outcome.errors:
        if not fields.get("S") or len(fields.get("C", "")) != 5:
            return f"ErrorResponse without severity/SQLSTATE: {fields}"
    return None


class RssSampler:
    """A thread sampling the resident memory (kB) of the pooler's workers every 20 ms."""

    def __init__(self, pids: list[int]) -> None:
        from wire import rss_kb

        self.rss_kb = rss_kb
        self.pids = pids
        self.baseline = {pid: rss_kb(pid) for pid in pids}
        self.peak = dict(self.baseline)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        while not self.stop.wait(0.02):
            for pid in self.pids:
                self.peak[pid] = max(self.peak[pid], self.rss_kb(pid))

    def growth_kb(self) -> int:
        return max(self.peak[pid] - self.baseline[pid] for pid in self.pids)

    def back_near_baseline(self, ratio: float = 1.2) -> bool:
        return all(self.rss_kb(pid) <= self.baseline[pid] * ratio for pid in self.pids)

    def __enter__(self) -> RssSampler:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


class GoodClients:
    """Threads running checked queries (simple and extended protocol) until stopped."""

    def __init__(self, p, n=2):
        self.p = p
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.queries = 0
        self.threads = [threading.Thread(target=self._run, args=(i,)) for i in range(n)]

    def _run(self, i):
        try:
            with self.p.connect("p0", application_name=f"good{i}") as conn:
                n = 0
                while not self.stop.is_set():
                    n += 1
                    assert conn.execute(f"select {n}").fetchone()[0] == n
                    row = conn.execute("select %s::int * 2, count(*) from pgbench_branches", (n,))
                    assert row.fetchone() == (n * 2, 1)
                    self.queries += 2
        except BaseException as exc:
            self.errors.append(exc)

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(10)
