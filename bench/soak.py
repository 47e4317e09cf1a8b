#!/usr/bin/env python3
"""Long soak (the CI version is tests/integration/test_soak.py): CLIENTS asyncpg clients (a
quarter connect per transaction) through `pool_size 20` (workers 2, transaction pool) for
MINUTES with a counter workload, against a throwaway PostgreSQL. Checks the counter sum
against the commits clients saw, SHOW POOLS against pg_stat_activity, RSS growth after warm-up.
Usage: bench/soak [MINUTES=5] [CLIENTS=2000]
"""

from __future__ import annotations

import asyncio
import resource
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import soaklib
from harness import Pooler, free_port, make_config, route

from pooler.pgcluster import PgCluster


def main() -> int:
    minutes = float(sys.argv[1]) if len(sys.argv) > 1 else 5.0
    clients = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, clients * 2 + 1000)), hard))
    pg = PgCluster(free_port(), max_connections=100)
    pg.start()
    try:
        pg.create_database("p1")
        soaklib.setup_table(pg, "p1")
        cfg = make_config(route(pool="transaction", pool_size=20), workers=2, log_to_stdout=False)
        with Pooler(Path(tempfile.mkdtemp(prefix="pooler-soak-")), cfg, pg_port=pg.port) as p:
            report = asyncio.run(
                soaklib.run(p, pg, clients=clients, seconds=minutes * 60, warmup=30)
            )
            restarts = sum(w.restarts for w in soaklib.workers(p))
            print(f"soak: {report.summary()}; worker restarts {restarts}")
            ok = (
                not report.errors
                and report.table_sum == report.commits
                and report.pool_servers_end == report.pg_servers_end
                and report.peak_servers <= 20
                and report.rss_growth < 0.10
                and not restarts
            )
            print("OK" if ok else "FAILED")
            return 0 if ok else 1
    finally:
        pg.remove()


if __name__ == "__main__":
    sys.exit(main())
