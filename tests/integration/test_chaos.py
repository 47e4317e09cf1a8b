"""Chaos: random worker SIGKILLs and `workers` changes (1..4, by reload) under mixed load.

Holds that no acknowledged commit is lost, that PostgreSQL never sees more backends than
pool_size for the route (sampled every 100 ms) and that every login attempt is answered:
none fails but where its worker was killed under it (none waits past pool_timeout, none hangs). POOLER_CHAOS_SECONDS sets how long (30 s by default in the suite).
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from pathlib import Path

import psycopg
import pytest
from harness import make_config, route, wait_until

SECONDS = float(os.environ.get("POOLER_CHAOS_SECONDS", "30"))
POOL_SIZE = 6
POOL_TIMEOUT_MS = 10000
DB = "p1"


def config(workers: int) -> str:
    return make_config(
        route(
            pool="transaction",
            pool_size=POOL_SIZE,
            pool_timeout=POOL_TIMEOUT_MS,
            pool_discard=False,
        ),
        workers=workers,
        log_session=False,
        graceful_shutdown_timeout_ms=3000,
    )


def workers_of(supervisor_pid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[1]) == supervisor_pid and fields[0] != "Z":
            pids.append(int(entry.name))
    return pids


@pytest.mark.timeout(SECONDS + 180)
def test_chaos_keeps_commits_pool_size_and_logins(pooler, pg):
    pg.psql("drop table if exists chaos; create table chaos (id bigint primary key)", db=DB)
    pg.psql("grant all on chaos to public", db=DB)
    p = pooler(config(2), check_log=False)  # (killed workers leave no traceback, but...)
    stop = threading.Event()
    acknowledged: list[int] = []
    login_times: list[float] = []
    login_failures: list[str] = []
    other_errors: list[str] = []
    peak = 0
    events: list[str] = []
    ids = iter(range(1, 10**9))
    lock = threading.Lock()

    def login() -> psycopg.Connection | None:
        started = time.monotonic()
        try:
            conn = p.connect(DB, connect_timeout=POOL_TIMEOUT_MS // 1000 + 20)
            conn.execute("select 1")
            return conn
        except psycopg.OperationalError as exc:
            with lock:
                login_failures.append(" ".join(str(exc).split()))
            return None
        finally:
            with lock:
                login_times.append(time.monotonic() - started)

    def writer() -> None:
        conn = None
        while not stop.is_set():
            if conn is None or conn.closed:
                conn = login()
                continue
            with lock:
                new_id = next(ids)
            try:
                with conn.transaction():
                    conn.execute("insert into chaos values (%s)", (new_id,))
                    conn.execute("select pg_sleep(0.002)")
                with lock:
                    acknowledged.append(new_id)  # COMMIT answered: must be in the table
            except psycopg.OperationalError:
                conn.close()  # its worker was killed or retired: connect again
            except psycopg.Error as exc:
                other_errors.append(repr(exc))
                conn.close()
        if conn is not None:
            conn.close()

    def reader() -> None:
        conn = None
        while not stop.is_set():
            if conn is None or conn.closed:
                conn = login()
                continue
            try:
                conn.execute("select count(*) from chaos").fetchone()
            except psycopg.OperationalError:
                conn.close()
            except psycopg.Error as exc:
                other_errors.append(repr(exc))
                conn.close()
        if conn is not None:
            conn.close()

    def short_lived() -> None:
        while not stop.is_set():
            conn = login()
            if conn is not None:
                conn.close()

    def sample() -> None:
        nonlocal peak
        with psycopg.connect(pg.dsn(), autocommit=True) as conn:
            while not stop.is_set():
                row = conn.execute(
                    "select count(*) from pg_stat_activity "
                    "where datname = %s and backend_type = 'client backend'",
                    (DB,),
                ).fetchone()
                peak = max(peak, row[0])
                if row[0] > POOL_SIZE:
                    events.append(f"{time.monotonic():.1f} {row[0]} backends")
                stop.wait(0.1)

    def chaos() -> None:
        rnd = random.Random(os.environ.get("POOLER_CHAOS_SEED", "15"))
        while not stop.wait(rnd.uniform(0.5, 2.5)):
            if rnd.random() < 0.5:
                victims = workers_of(p.pid)
                if victims:
                    victim = rnd.choice(victims)
                    events.append(f"{time.monotonic():.1f} SIGKILL {victim}")
                    os.kill(victim, signal.SIGKILL)
            else:
                workers = rnd.randint(1, 4)
                events.append(f"{time.monotonic():.1f} workers {workers}")
                p.write_config(config(workers))
                p.reload()

    threads = [threading.Thread(target=writer) for _ in range(6)]
    threads += [threading.Thread(target=reader) for _ in range(3)]
    threads += [threading.Thread(target=short_lived) for _ in range(2)]
    threads += [threading.Thread(target=sample), threading.Thread(target=chaos)]
    for t in threads:
        t.start()
    try:
        stop.wait(SECONDS)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    p.write_config(config(2))
    p.reload()
    in_table = {
        int(line) for line in pg.psql("select id from chaos", db=DB).split() if line.isdigit()
    }
    lost = sorted(set(acknowledged) - in_table)
    pg.psql("drop table chaos", db=DB)
    summary = (
        f"{len(acknowledged)} commits, {len(login_times)} logins "
        f"(max {max(login_times, default=0):.2f} s, {len(login_failures)} failed), "
        f"peak {peak} backends, events: {events}, failures: {login_failures[-3:]}"
    )
    print(summary)
    assert acknowledged and not lost, (lost[:10], summary)
    assert peak <= POOL_SIZE, summary
    assert not other_errors, other_errors[:5]
    # a login fails only when the worker it landed on is killed under it: none waited past
    # pool_timeout (that is an error too) or hung (connect_timeout)
    unexpected = [f for f in login_failures if "closed the connection unexpectedly" not in f]
    assert not unexpected, unexpected
    wait_until(lambda: len(workers_of(p.pid)) == 2, timeout=30)
