"""Bounded memory per client (issue 16): a message larger than client_max_buffer is streamed
to the server, never held whole; PostgreSQL's limits for small messages and its set of
message types are enforced by the pooler; what a client held goes back when it leaves.

The heavy variant (100 clients × 50 MB messages of every type at once) is
tests/integration/test_memory_flood.py.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time

import psycopg
import pytest
from harness import HOST, make_config, route, wait_until
from wire import error_fields, read_until, rss_kb, split_messages, startup_packet, workers

from pooler.protocol import build

MB = 1024 * 1024


def send_huge(sock: socket.socket, mtype: bytes, head: bytes, size: int, tail: bytes) -> None:
    """A message of `size` body bytes (head + filler + tail) sent in 1 MB pieces, so the test
    itself never holds it."""
    filler = size - len(head) - len(tail)
    sock.sendall(mtype + struct.pack("!i", size + 4) + head)
    piece = b" " * MB
    while filler > 0:
        n = min(filler, MB)
        sock.sendall(piece[:n])
        filler -= n
    sock.sendall(tail)


def logged_in(p, **extra: str) -> socket.socket:
    sock = socket.create_connection((HOST, p.port), timeout=30)
    sock.sendall(startup_packet(**extra))
    assert read_until(sock, b"Z")[-1][0] == ord("Z")
    return sock


def sample_rss(pid: int, stop: threading.Event, samples: list[int]) -> None:
    while not stop.wait(0.02):
        samples.append(rss_kb(pid))


@pytest.mark.parametrize("pool", ["session", "transaction"])
def test_a_huge_query_is_streamed_not_held(pooler, pool):
    # one 300 MB Query took a worker from 34 MB to 350 MB and kept it until a garbage
    # collection; now the worker holds at most client_max_buffer (4 MB) of it at any time
    p = pooler(make_config(route(pool=pool, pool_size=2), workers=1))
    pid = workers(p)[0].pid
    sock = logged_in(p)
    base = rss_kb(pid)
    stop, samples = threading.Event(), []
    sampler = threading.Thread(target=sample_rss, args=(pid, stop, samples))
    sampler.start()
    try:
        size = 300 * MB
        send_huge(sock, b"Q", b"select length('", size, b"') as n\0")
        answer = read_until(sock, b"Z", timeout=60)
    finally:
        stop.set()
        sampler.join()
    kinds = [kind for kind, _ in answer]
    assert kinds == [ord(c) for c in "TDCZ"], answer
    row = answer[1][1]
    assert int(row[6:]) == size - len(b"select length('") - len(b"') as n\0")
    growth_mb = (max(samples, default=base) - base) / 1024
    print(f"300 MB query, {pool}: worker RSS {base} kB -> max {max(samples)} kB")
    assert growth_mb < 40, (base, max(samples))
    sock.close()
    assert p.sql("select 1", dbname="p0") == [(1,)]


def test_a_huge_bind_of_a_shared_statement_is_renamed_and_streamed(pooler):
    # transaction pool with shared prepared statements: a Bind's statement name is rewritten
    # from its first bytes; its 200 MB of parameter go through without being held
    p = pooler(make_config(route(pool="transaction", pool_size=2), workers=1))
    pid = workers(p)[0].pid
    base = rss_kb(pid)
    value = b"y" * (200 * MB)
    with psycopg.connect(p.dsn("p0"), autocommit=True, prepare_threshold=0) as conn:
        for _ in range(2):  # prepared, then executed again by name
            got = conn.execute("select length(%s::bytea), 'x' || %s", (value, "z")).fetchone()
            assert got == (len(value), "xz")
        peak = rss_kb(pid)
    del value
    print(f"200 MB bind: worker RSS {base} kB -> {peak} kB after")
    assert (peak - base) / 1024 < 40


def test_a_parse_too_large_to_share_is_refused_clearly(pooler):
    p = pooler(make_config(route(pool="transaction", pool_size=2), workers=1))
    sock = logged_in(p)
    # the first 16 KB of an 8 MB Parse (the answer comes before the rest would be read)
    sock.sendall(b"P" + struct.pack("!i", 8 * MB) + b"big\0select 1 --" + b" " * 16384)
    sock.settimeout(30)
    data = b""
    while chunk := sock.recv(65536):  # the pooler answers and closes
        data += chunk
    (kind, body), *_ = split_messages(data)[0]
    fields = error_fields(body)
    assert (chr(kind), fields["S"], fields["C"]) == ("E", "FATAL", "54000"), fields
    assert "larger than client_max_buffer" in fields["M"]
    assert p.sql("select 1", dbname="p0") == [(1,)]


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (b"S" + struct.pack("!i", 20004) + b"\0" * 20000, "invalid message length 20004"),
        (b"D" + struct.pack("!i", 50 * MB), "invalid message length 52428800"),
        (b"p" + struct.pack("!i", 8) + b"abc\0", "invalid frontend message type 112"),
        (b"\x01" + struct.pack("!i", 4), "invalid frontend message type 1"),
    ],
    ids=["long-sync", "huge-describe", "password-after-login", "unknown-type"],
)
def test_postgres_message_limits_are_the_poolers(pooler, message, expected):
    # PostgreSQL closes the connection for these; the pooler does it without a server
    p = pooler(make_config(route(pool="session"), workers=1))
    sock = logged_in(p)
    sock.sendall(message)
    answer = read_until(sock, b"E", timeout=10)
    fields = error_fields(answer[-1][1])
    assert fields["C"] == "08P01" and expected in fields["M"], fields
    sock.close()
    with psycopg.connect(p.dsn("p0"), autocommit=True) as conn:
        assert conn.execute("select 1").fetchone() == (1,)


def test_memory_goes_back_when_streaming_clients_leave(pooler):
    p = pooler(make_config(route(pool="transaction", pool_size=4), workers=1))
    pid = workers(p)[0].pid
    p.sql("select 1", dbname="p0")
    base = rss_kb(pid)
    socks = [logged_in(p) for _ in range(8)]
    for sock in socks:  # 20 MB of a 100 MB Query each, then they leave (the four that
        # wait for a server are not read beyond 256 KB: their sends time out)
        sock.settimeout(2)
        with contextlib.suppress(TimeoutError):
            sock.sendall(b"Q" + struct.pack("!i", 100 * MB) + b"select 1 --" + b" " * (20 * MB))
    for sock in socks:
        sock.close()
    wait_until(
        lambda: rss_kb(pid) < base * 1.2 + 4096,
        timeout=15,
        message=lambda: f"worker RSS {rss_kb(pid)} kB back near {base} kB",
    )
    assert p.sql("select 2", dbname="p0") == [(2,)]


def test_console_answers_wait_for_a_client_that_does_not_read(pooler):
    # a stat user sending SHOW requests without reading the answers grew the worker by
    # megabytes a second: the console now stops reading requests while its answers wait
    cfg = make_config([route(), route("console", "stat", storage="local", role="stat")])
    p = pooler(cfg)
    pid = workers(p)[0].pid
    sock = socket.create_connection((HOST, p.port), timeout=10)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
    sock.sendall(startup_packet("stat", "console"))
    read_until(sock, b"Z")
    base = rss_kb(pid)
    request = build.query("show config") * 20  # the console reads 20 at a time
    sent = 0
    sock.settimeout(0.05)
    deadline = time.monotonic() + 4
    samples = []
    while time.monotonic() < deadline:  # send for 4 s, reading nothing
        with contextlib.suppress(TimeoutError):  # the pooler stopped reading: we are full
            sent += sock.send(request)
        samples.append(rss_kb(pid))
        time.sleep(0.01)
    growth_mb = (max(samples) - base) / 1024
    print(f"console flood: {sent} bytes of requests sent, worker RSS {base} -> {max(samples)} kB")
    assert growth_mb < 8, (base, max(samples))
    sock.close()
    with psycopg.connect(p.dsn("console", "stat"), autocommit=True) as conn:
        assert conn.execute("show version").fetchone()
