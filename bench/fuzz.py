#!/usr/bin/env python3
"""Long live fuzz run (the CI version is tests/integration/test_fuzz_live.py).

Starts a throwaway PostgreSQL and `pooler serve` (workers 2, transaction pool), captures real
psycopg/psql/pgbench sessions, then replays random mutations of them for MINUTES while two
well-behaved clients run checked queries. Prints the packets fuzzed, problems found, worker
restarts, and the workers' resident memory (sampled every 20 ms: baseline, peak, and after
the run). The mutations include messages of any type with hostile lengths (fuzzlib).
Usage: bench/fuzz [MINUTES=5] [SEED]
"""

from __future__ import annotations

import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from fuzzlib import (
    GoodClients,
    RssSampler,
    capture_sessions,
    check,
    mutate,
    replay,
    split_session,
)
from harness import Pooler, free_port, make_config, route
from wire import rss_kb, workers

from pooler.pgcluster import PgCluster


def main() -> int:
    minutes = float(sys.argv[1]) if len(sys.argv) > 1 else 5.0
    seed = int(sys.argv[2]) if len(sys.argv) > 2 else random.randrange(1 << 30)
    pg = PgCluster(free_port(), max_connections=300)
    pg.start()
    problems: list[str] = []
    try:
        pg.create_database("p0")
        pg.pgbench("-i", "-s", "1", "-q", db="p0")
        sessions = [split_session(s) for s in capture_sessions(pg)]
        cfg = make_config(
            route(pool="transaction", pool_size=10, pool_timeout=5000),
            workers=2,
            listen={"client_login_timeout": 2000},
            log_to_stdout=False,
        )
        with Pooler(Path(tempfile.mkdtemp(prefix="pooler-fuzz-")), cfg, pg_port=pg.port) as p:
            before = workers(p)
            rng = random.Random(seed)
            n = nbytes = nerrors = 0
            started = time.monotonic()
            with GoodClients(p) as good, RssSampler([w.pid for w in before]) as rss:
                while time.monotonic() - started < minutes * 60:
                    s = rng.randrange(len(sessions))
                    data, ops = mutate(rng, sessions[s])
                    outcome = replay(p.port, data, rng)
                    problem = check(outcome)
                    n += 1
                    nbytes += len(data)
                    nerrors += bool(outcome.errors)
                    if problem:
                        problems.append(f"#{n}: {problem}; session {s}, mutations {ops}")
                        print(problems[-1], flush=True)
                    if good.errors:
                        problems.append(f"#{n}: good client failed: {good.errors}")
                        break
                    if n % 1000 == 0:
                        print(f"{n} sessions, {time.monotonic() - started:.0f} s", flush=True)
            time.sleep(3)  # the cron's trim runs every second
            after = workers(p)
            memory = ", ".join(
                f"worker {pid}: {rss.baseline[pid] / 1024:.1f} -> peak {rss.peak[pid] / 1024:.1f}"
                f" -> {rss_kb(pid) / 1024:.1f} MB"
                for pid in rss.pids
                if pid in {w.pid for w in after}
            )
            restarts = sum(w.restarts for w in after)
            traceback = "Traceback (most recent call last)" in p.log_text()
            print(
                f"seed {seed}: {n} mutated sessions ({nbytes} bytes, {nerrors} answered with an "
                f"ErrorResponse) in {minutes:g} min; good-client queries {good.queries}; "
                f"problems {len(problems)}; worker restarts {restarts}; "
                f"pids unchanged {[w.pid for w in after] == [w.pid for w in before]}; "
                f"traceback in log: {traceback}; RSS {memory}"
            )
            return 1 if problems or restarts or traceback else 0
    finally:
        pg.remove()


if __name__ == "__main__":
    sys.exit(main())
