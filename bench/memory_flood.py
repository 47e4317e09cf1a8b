#!/usr/bin/env python3
"""The memory flood of issue 16 against the pooler and pgbouncer, side by side.

CLIENTS clients at once each send 50 MB messages (tests/floodlib.py: one message of a type
chosen round-robin, or with --heavy a 50 MB Query, Bind, FunctionCall and CopyData and then
a refused type) through a transaction pool of 10 servers (pooler: workers 1). Prints the
target's RSS before, its peak during, and after the clients left (at once and 5 s later).
Usage: bench/memory_flood.py [--heavy] [--clients N] [pooler|pgbouncer ...]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from floodlib import RssPeak, expected_answers, flood
from harness import Pooler, free_port, make_config, route
from processes import pick_port, stop_proc
from targets import SETTINGS, PgBouncer, find_peer, peer_version
from wire import workers

from pooler.pgcluster import PgCluster


def run(name: str, port: int, pids: list[int], clients: int, heavy: bool) -> str:
    with RssPeak(pids) as rss:
        baseline = rss.now()
        started = time.monotonic()
        tally = flood(port, clients, heavy)
        took = time.monotonic() - started
    at_once = rss.now()
    time.sleep(5)
    later = rss.now()
    ok = tally.answered == expected_answers(clients, heavy) and not tally.problems
    for note in tally.cut_short[:5]:
        print(f"  {name}: cut short: {note}")
    return (
        f"{name}: {clients} clients{' (heavy)' if heavy else ''} in {took:.1f} s, "
        f"answered {tally.answered}, refused {tally.refused}, problems {len(tally.problems)}"
        f"{'' if ok else ' (UNEXPECTED)'}; RSS {baseline / 1024:.1f} MB -> peak "
        f"{rss.peak / 1024:.1f} MB -> {at_once / 1024:.1f} MB when they left, "
        f"{later / 1024:.1f} MB 5 s later"
    )


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--heavy", action="store_true")
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("targets", nargs="*", default=["pooler", "pgbouncer"])
    args = parser.parse_args()
    pg = PgCluster(free_port(), max_connections=100)
    pg.start()
    lines = []
    try:
        pg.create_database("p0")
        tmp = Path(tempfile.mkdtemp(prefix="pooler-flood-"))
        tmp.chmod(0o755)  # pgbouncer runs as postgres
        for name in args.targets:
            if name == "pooler":
                cfg = make_config(
                    route(pool="transaction", pool_size=10, pool_timeout=0),
                    workers=1,
                    log_to_stdout=False,
                )
                with Pooler(tmp / "pooler", cfg, pg_port=pg.port) as p:
                    p.sql("select 1", dbname="p0")
                    pids = [w.pid for w in workers(p)]
                    lines.append(run("pooler", p.port, pids, args.clients, args.heavy))
            else:
                SETTINGS["pool_size"] = 10  # as the pooler's route above
                binary = find_peer("pgbouncer", "PGBOUNCER_BIN", path_ok=False)
                bouncer = PgBouncer(pick_port(), pg.port, tmp / "pgbouncer", binary)
                bouncer.start()
                try:
                    assert bouncer.proc is not None
                    label = f"pgbouncer {peer_version(binary)}"
                    lines.append(
                        run(label, bouncer.port, [bouncer.proc.pid], args.clients, args.heavy)
                    )
                finally:
                    stop_proc(bouncer.proc)
            print(lines[-1], flush=True)
    finally:
        pg.remove()
    return 0


if __name__ == "__main__":
    sys.exit(main())
