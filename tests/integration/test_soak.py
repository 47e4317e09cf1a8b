"""A short soak (bench/soak runs it for minutes): 400 asyncpg clients, long-lived and
connect-per-transaction, through `pool_size 20` (workers 2) with a counter workload.

SOAK_CLIENTS / SOAK_SECONDS override the size. See tests/soaklib.py.
"""

from __future__ import annotations

import asyncio
import os

import soaklib
from harness import make_config, route

CLIENTS = int(os.environ.get("SOAK_CLIENTS", "400"))
SECONDS = float(os.environ.get("SOAK_SECONDS", "20"))


def test_soak_counter_workload(pooler, pg):
    soaklib.setup_table(pg, "p1")
    try:
        p = pooler(make_config(route(pool="transaction", pool_size=20), workers=2))
        report = asyncio.run(soaklib.run(p, pg, clients=CLIENTS, seconds=SECONDS))
        print(f"soak: {report.summary()}")
        assert not report.errors, report.summary()
        assert report.commits > CLIENTS, report.summary()
        assert report.table_sum == report.commits, report.summary()
        assert report.peak_servers <= 20, report.summary()
        assert report.pool_servers_end == report.pg_servers_end, report.summary()
        assert report.rss_growth < 0.10, report.summary()
        assert [w.restarts for w in soaklib.workers(p)] == [0, 0]
    finally:
        soaklib.drop_table(pg, "p1")
