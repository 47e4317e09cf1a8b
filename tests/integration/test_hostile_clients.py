"""Slow and hostile clients (extends test_clients.py, which covers garbage startup packets and
a few slow startups): hundreds of stalled half-startups, and a client that stops reading a
large result (back-pressure: the worker's memory stays flat, other clients carry on).
"""

from __future__ import annotations

import os
import socket
import struct
import threading
import time

from harness import HOST, make_config, patience, route, wait_until
from wire import read_until, rss_kb, startup_packet, workers

from pooler.protocol import build

STALLED = int(os.environ.get("STALLED_CLIENTS", "300"))


def closed(s: socket.socket) -> bool:
    """The pooler closed `s` (what it sent first is read and dropped)."""
    s.settimeout(0.001)
    try:
        while s.recv(65536):
            pass
    except TimeoutError:
        return False
    except OSError:
        pass
    return True


def test_stalled_half_startups_do_not_delay_logins(pooler):
    p = pooler(make_config(route(pool="transaction"), listen={"client_login_timeout": 8000}))
    half = startup_packet()[:7]
    socks = []
    try:
        for i in range(STALLED):
            s = socket.create_connection((HOST, p.port), timeout=5)
            s.sendall(half if i % 3 else struct.pack("!i", 64))  # half a packet / a length
            socks.append(s)
        # another client logs in, repeatedly, while they all stall: each login is done
        # before any stalled one is closed (a login that waited behind them would not be)
        for _ in range(5):
            with p.connect("p0") as conn:
                assert conn.execute("select 1").fetchone()[0] == 1
        assert not any(closed(s) for s in socks)

        # all are closed after client_login_timeout (counted from each accept)
        pending = list(socks)

        def all_closed() -> bool:
            pending[:] = [s for s in pending if not closed(s)]
            return not pending

        wait_until(all_closed, timeout=10, interval=0.1, message=lambda: f"{len(pending)} open")
    finally:
        for s in socks:
            s.close()
    with p.connect("p0") as conn:
        assert conn.execute("select 2").fetchone()[0] == 2


def test_client_that_stops_reading_does_not_grow_memory(pooler):
    # one worker, so the reader and the other client share it
    p = pooler(make_config(route(pool="transaction", pool_size=4), workers=1))
    with p.connect("p0") as other:
        other.execute("select 1")
        pid = workers(p)[0].pid
        base = rss_kb(pid)
        with socket.create_connection((HOST, p.port), timeout=5) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            sock.sendall(startup_packet())
            read_until(sock, b"Z")
            # ~200 MB of result; we never read it
            sock.sendall(build.query("select repeat('x', 1000000) from generate_series(1, 200)"))
            samples = []
            for _ in range(60):  # the other client is answered all along (3 s or more)
                assert other.execute("select 42").fetchone()[0] == 42
                samples.append(rss_kb(pid))
                time.sleep(0.05)
            growth_mb = (max(samples) - base) / 1024
            assert growth_mb < 32, (base, samples)
        # the reader left mid-result: its server is cancelled/closed, the pool carries on
        for _ in range(3):
            assert other.execute("select 43").fetchone()[0] == 43
    wait_until(lambda: p.sql("select 44", dbname="p0") == [(44,)], timeout=5)
    print(f"stopped reader: worker RSS {base} kB -> max {max(samples)} kB")


def test_slow_reader_does_not_stall_its_worker(pooler):
    # a client reading a large result at a crawl; others on the worker are not slowed down
    p = pooler(make_config(route(pool="transaction", pool_size=4), workers=1))
    stop = threading.Event()
    reading = threading.Event()

    def crawl() -> None:
        with socket.create_connection((HOST, p.port), timeout=10) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
            sock.sendall(startup_packet())
            read_until(sock, b"Z")
            sock.sendall(build.query("select repeat('y', 10000) from generate_series(1, 20000)"))
            while not stop.is_set():
                if not sock.recv(4096):
                    break
                reading.set()
                time.sleep(0.002)  # the crawl: 4 KB every 2 ms

    t = threading.Thread(target=crawl)
    t.start()
    try:
        with p.connect("p0") as other:
            assert reading.wait(patience(10))  # the result is flowing, at a crawl
            for i in range(50):
                assert other.execute(f"select {i}").fetchone()[0] == i
            # done while the 200 MB result still crawls (at 2 MB/s it takes 100 s)
            assert t.is_alive()
    finally:
        stop.set()
        t.join(10)
