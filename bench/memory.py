"""The memory step of bench/bench.py: RSS per idle client and per server connection."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from processes import stop_proc, track
from procstat import rss_kb
from targets import BENCH_DIR, HOST, SETTINGS, Target

from pooler.pgcluster import PgCluster


def memory_step(target: Target, pg: PgCluster, n_clients: int, workdir: Path) -> dict[str, Any]:
    """RSS of the target with n idle clients, and per server connection.

    1. fresh process, one warm-up login: RSS0;  2. n idle clients (logged in, no query): RSS1;
    3. pool_size of them open a transaction (BEGIN; SELECT 1) and hold it: every server
       connection of the pool is in use: RSS2.
    """
    res: dict[str, Any] = {"target": target.name, "clients": n_clients}
    target.stop()
    target.start()
    helper = [sys.executable, str(BENCH_DIR / "idle_clients.py"), HOST, str(target.port)]
    # warm-up: one login + query, so RSS0 includes one route, one server connection and
    # whatever first-use imports/allocations the process does.
    warm = subprocess.run(
        [*helper, "1", "--hold", "0", "--once"], capture_output=True, text=True, timeout=60
    )
    if warm.returncode != 0:
        res["error"] = f"warm-up failed: {(warm.stderr or warm.stdout).strip()[-300:]}"
        return res
    time.sleep(0.5)
    servers0 = count_server_conns(pg)
    res["rss0"], res["pss0"] = rss_kb(target.mem_pids())
    proc = subprocess.Popen(
        [*helper, str(n_clients), "--hold", str(SETTINGS["pool_size"])],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    track(proc)
    try:
        line = read_line(proc, 120)
        if not line.startswith("READY"):
            res["error"] = f"idle clients: {line or proc.stderr.read()[-500:]}"
            return res
        res["opened"] = int(line.split()[1])
        time.sleep(1.0)
        res["servers1"] = count_server_conns(pg)
        res["rss1"], res["pss1"] = rss_kb(target.mem_pids())
        proc.stdin.write("hold\n")
        proc.stdin.flush()
        line = read_line(proc, 60)
        if not line.startswith("HELD"):
            res["error"] = f"hold: {line or proc.stderr.read()[-500:]}"
            return res
        time.sleep(1.0)
        res["servers2"] = count_server_conns(pg)
        res["rss2"], res["pss2"] = rss_kb(target.mem_pids())
        res["servers0"] = servers0
        proc.stdin.write("quit\n")
        proc.stdin.flush()
        proc.wait(30)
    finally:
        stop_proc(proc)
    return res


def read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    import selectors

    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    if sel.select(timeout):
        return proc.stdout.readline().strip()
    return ""


def count_server_conns(pg: PgCluster) -> int:
    out = pg.psql(
        "select count(*) from pg_stat_activity where backend_type = 'client backend' "
        "and pid <> pg_backend_pid()"
    )
    return int(out.strip() or 0)
