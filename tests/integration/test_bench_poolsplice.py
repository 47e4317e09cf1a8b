"""bench/poolsplice.py (the ``poolsplice`` bench target) serves pgbench's scenarios through a real
PostgreSQL on a pool of its own server connections: a floor that does not pool, or that
breaks, would measure nothing."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import HOST, free_port, is_listening, release_port, wait_until
from test_pgbench import count_backends, pgbench, processed

POOLSPLICE = Path(__file__).resolve().parents[2] / "bench" / "poolsplice.py"
POOL = 4


@pytest.fixture
def poolsplice(pg) -> Iterator[int]:
    port = free_port()
    argv = [sys.executable, str(POOLSPLICE), str(port), str(pg.port), "--host", HOST]
    proc = subprocess.Popen(
        [*argv, "--pool", str(POOL), "--database", "p0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_until(lambda: proc.poll() is not None or is_listening(port), 20)
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        yield port
    finally:
        proc.terminate()
        proc.wait(30)
        release_port(port)
    wait_until(lambda: count_backends(pg) == 0)  # its server connections closed with it


@pytest.mark.parametrize(
    ("args", "txns"),
    [
        (("-S", "-c", "8", "-t", "100"), 800),  # a: more clients than servers
        (("-S", "-M", "extended", "-c", "8", "-t", "100"), 800),  # b
        (("-c", "8", "-t", "50"), 400),  # d: a server stays linked inside BEGIN ... END
        (("-S", "-C", "-c", "4", "-t", "50"), 200),  # f: Terminate closes the client alone
        (("-S", "-c", "60", "-j", "2", "-t", "20"), 1200),  # e, smaller: clients queue
    ],
    ids=["select", "extended", "tpcb", "connect-per-txn", "many-clients"],
)
def test_pgbench_runs_through_a_pool_of_its_own_servers(pg, poolsplice, args, txns):
    assert count_backends(pg) == POOL  # logged in at start, before any client
    assert processed(pgbench(pg, poolsplice, *args)) == (txns, 0)
    assert count_backends(pg) == POOL  # the same servers served every client
