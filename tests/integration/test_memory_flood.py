"""100 clients send 50 MB messages of every frontend type (and a few that are not) at once,
through one worker (issue 16). The worker's RSS is sampled all along: it must stay under
MAX_GROWTH_MB above its baseline (and under 200 MB in all), and come back within 20 % of
the baseline a few seconds after the clients leave.

In the suite each client sends one 50 MB message (the types round-robin over the clients,
so every type is sent by several clients at once; ~1.2 GB reach PostgreSQL). With
POOLER_HEAVY_FLOOD=1 each client sends a 50 MB Query, Bind, FunctionCall and CopyData, then
one 50 MB message of a refused type (~20 GB; minutes on a small machine). FLOOD_CLIENTS
changes the number of clients. bench/memory_flood.py runs the same against pgbouncer.
"""

from __future__ import annotations

import os
import time

import pytest
from floodlib import RssPeak, expected_answers, flood
from harness import make_config, route, wait_until
from wire import rss_kb, workers

CLIENTS = int(os.environ.get("FLOOD_CLIENTS", "100"))
MAX_GROWTH_MB = 100  # the bound: per client about one read (256 KB) and a write buffer
MAX_RSS_MB = 200
HEAVY = os.environ.get("POOLER_HEAVY_FLOOD") == "1"


@pytest.mark.timeout(900 if HEAVY else 180)
def test_a_hundred_clients_sending_50_mb_messages_of_every_type(pooler):
    p = pooler(make_config(route(pool="transaction", pool_size=10, pool_timeout=0), workers=1))
    pid = workers(p)[0].pid
    for _ in range(3):
        p.sql("select 1", dbname="p0")
    baseline = rss_kb(pid)
    started = time.monotonic()
    with RssPeak([pid]) as rss:
        tally = flood(p.port, CLIENTS, HEAVY)
    took = time.monotonic() - started
    left_at = time.monotonic()

    def back() -> int:
        now = rss_kb(pid)
        return now if now <= baseline * 1.2 else 0

    try:
        wait_until(back, timeout=15, message="worker RSS back within 20 % of baseline")
    finally:
        print(
            f"flood ({'heavy' if HEAVY else 'suite'}): {CLIENTS} clients, {took:.1f} s, "
            f"answered {tally.answered}, refused {tally.refused}; worker RSS baseline "
            f"{baseline / 1024:.1f} MB, peak {rss.peak / 1024:.1f} MB, now "
            f"{rss_kb(pid) / 1024:.1f} MB, {time.monotonic() - left_at:.1f} s after they left"
        )
    assert not tally.problems, tally.problems[:5]
    growth_mb = (rss.peak - baseline) / 1024
    assert growth_mb < MAX_GROWTH_MB and rss.peak / 1024 < MAX_RSS_MB, (baseline, rss.peak)
    assert tally.answered == expected_answers(CLIENTS, HEAVY)
    assert p.sql("select 2", dbname="p0") == [(2,)]
