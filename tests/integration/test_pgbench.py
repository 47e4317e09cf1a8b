"""pgbench through the pooler in transaction mode: no failed transactions, bounded backends."""

from __future__ import annotations

import re
import subprocess
import threading

from harness import HOST, make_config, route, wait_until


def pgbench(pg, port: int, *args: str, timeout: float = 60) -> str:
    cmd = [pg.binary("pgbench"), "-h", HOST, "-p", str(port), "-U", "postgres", "-n", *args, "p0"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def processed(output: str) -> tuple[int, int]:
    """(transactions processed, transactions failed) from pgbench's report."""
    done = int(re.search(r"number of transactions actually processed: (\d+)", output)[1])
    failed = re.search(r"number of failed transactions: (\d+)", output)
    return done, int(failed[1]) if failed else 0


def transaction_pool(pool_size: int = 20, **extra):
    return make_config(
        route(pool="transaction", pool_size=pool_size, pool_discard=False, **extra),
        log_session=False,
    )


def test_pgbench_select_only(pooler, pg):
    p = pooler(transaction_pool())
    done, failed = processed(pgbench(pg, p.port, "-S", "-c", "8", "-t", "200"))
    assert (done, failed) == (1600, 0)


def test_pgbench_tpcb_like(pooler, pg):
    p = pooler(transaction_pool())
    done, failed = processed(pgbench(pg, p.port, "-c", "4", "-t", "100"))
    assert (done, failed) == (400, 0)


def test_pgbench_connect_per_transaction(pooler, pg):
    p = pooler(transaction_pool())
    done, failed = processed(pgbench(pg, p.port, "-S", "-C", "-c", "4", "-t", "50"))
    assert (done, failed) == (200, 0)


def test_pgbench_extended_protocol(pooler, pg):
    p = pooler(transaction_pool())
    done, failed = processed(pgbench(pg, p.port, "-S", "-M", "extended", "-c", "4", "-t", "100"))
    assert (done, failed) == (400, 0)


def count_backends(pg) -> int:
    out = pg.psql(
        "select count(*) from pg_stat_activity "
        "where datname = 'p0' and backend_type = 'client backend'"
    )
    return int(out.split()[-1])


def test_500_clients_share_a_pool_of_20(pooler, pg):
    p = pooler(transaction_pool(pool_size=20))
    peak = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, count_backends(pg))
            stop.wait(0.2)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        out = pgbench(pg, p.port, "-S", "-c", "500", "-j", "2", "-t", "20", timeout=120)
    finally:
        stop.set()
        sampler.join()
    done, failed = processed(out)
    assert (done, failed) == (10000, 0)
    assert 0 < peak <= 20
    wait_until(lambda: count_backends(pg) <= 20)
