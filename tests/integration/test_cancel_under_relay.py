"""A CancelRequest while the worker relays large results (issue 14, fault 6).

A client reads one row of a 1,000,000-row COPY TO STDOUT and cancels it: the cancel must
reach PostgreSQL while the COPY still runs, as it does directly, so the COPY ends with
"canceling statement due to user request". Meanwhile another client of the same worker
streams a large result of its own and a third keeps running `select 1`: one client's
traffic never holds the worker's loop (libuv reads a socket up to 32 times per turn of
the loop: megabytes of small messages, each looked at in Python).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import psycopg
import pytest
from harness import make_config, route

COPY = "copy (select generate_series(1, 1000000)) to stdout"
RUNS = 6


class _Outcome:
    cancelled = False

    def __enter__(self) -> _Outcome:
        return self

    def __exit__(self, kind: object, exc: object, tb: object) -> bool:
        if isinstance(exc, psycopg.errors.QueryCanceled):
            self.cancelled = True
            return True
        return False


def _copy_then_cancel(dsn: str) -> tuple[bool, float]:
    """Read one row of the big COPY, cancel, read on: (was it cancelled, seconds the
    cancel call took)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.cursor()
        took = 0.0
        with _Outcome() as outcome, cur.copy(COPY) as copy:
            assert copy.read()  # the first row
            started = time.monotonic()
            conn.cancel()
            took = time.monotonic() - started
            while copy.read():
                pass
        assert conn.execute("select 1").fetchone() == (1,)  # the connection is usable
        return outcome.cancelled, took


PINGER = """
import json, sys, threading, time, psycopg
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
latencies = []
with psycopg.connect(sys.argv[1], autocommit=True) as conn:
    print("ready", flush=True)
    while not stop.is_set():
        started = time.monotonic()
        conn.execute("select 1").fetchone()
        latencies.append(time.monotonic() - started)
print(json.dumps(latencies))
"""


@pytest.mark.timeout(180)
def test_cancel_during_a_big_copy_reaches_postgresql_in_time(pooler, pg):
    """Six runs: each COPY is cancelled, as on a direct connection. The `select 1` client
    (a process of its own, so that its latencies are the pooler's) keeps being answered;
    its latencies are printed (`pytest -s`), not asserted."""
    p = pooler(make_config(route(pool="transaction", pool_size=4), workers=1, log_session=False))
    dsn = p.dsn("p0")
    neighbour = subprocess.Popen(  # another client of the worker, streaming all the while
        ["bash", "-c", f"while :; do {pg.binary('psql')} '{dsn}' -c '{COPY}' >/dev/null; done"],
        start_new_session=True,
    )
    pinger = subprocess.Popen(
        [sys.executable, "-c", PINGER, dsn],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert pinger.stdout is not None and pinger.stdout.readline().strip() == "ready"
        outcomes = [_copy_then_cancel(dsn) for _run in range(RUNS)]
        latencies = sorted(json.loads(pinger.communicate("", timeout=60)[0]))
    finally:
        os.killpg(neighbour.pid, signal.SIGKILL)
        neighbour.wait()
        if pinger.poll() is None:
            pinger.kill()
            pinger.wait()
    print(
        f"cancel call seconds: {[round(took, 3) for _c, took in outcomes]}; select 1 latency: "
        f"n={len(latencies)} p50={latencies[len(latencies) // 2] * 1e3:.1f} ms "
        f"p90={latencies[len(latencies) * 9 // 10] * 1e3:.1f} ms max={latencies[-1] * 1e3:.1f} ms"
    )
    assert [cancelled for cancelled, _took in outcomes] == [True] * RUNS, outcomes
    assert latencies, "the select 1 client got no answer at all"
