"""Several worker processes behaving as one pooler in every corner (issue 15): readiness,
slot fairness when pool_size < workers, worker death, changing `workers`."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
from pathlib import Path

import psycopg
from harness import make_config, route, storage, wait_until


def config(pool_size: int, workers: int, **extra) -> str:
    return make_config(
        route(pool="transaction", pool_size=pool_size, pool_discard=False, **extra),
        workers=workers,
        log_session=False,
    )


def worker_pid(supervisor_pid: int, index: int) -> int | None:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            title = (entry / "cmdline").read_text().strip("\0")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if (
            int(fields[1]) == supervisor_pid
            and fields[0] != "Z"
            and title == f"pooler: worker {index}"
        ):
            return int(entry.name)
    return None


def worker_of(conn: psycopg.Connection) -> int:
    """The worker index our BackendKeyData encodes."""
    return (conn.info.backend_pid >> 24) - 1


def backends(pg, db: str) -> int:
    out = pg.psql(
        "select count(*) from pg_stat_activity "
        f"where datname = '{db}' and backend_type = 'client backend'"
    )
    return int(out.split()[-1])


def connect_to_worker(
    p, index: int, db: str = "p0", keep: list | None = None
) -> psycopg.Connection:
    """A client that landed on worker `index` (the kernel spreads them; others are kept open
    in `keep` or closed)."""
    for _ in range(200):
        conn = p.connect(db)
        if worker_of(conn) == index:
            return conn
        if keep is not None:
            keep.append(conn)
        else:
            conn.close()
    raise AssertionError(f"no client landed on worker {index}")


def test_ready_means_every_worker_serves(pooler):
    """READY=1 (sd_notify) and the "pooler ready" line come only after every worker has
    applied generation 0; RELOADING=1/READY=1 bracket a reload, STOPPING=1 ends."""
    p = pooler(config(4, workers=4))  # start() returns at READY=1
    log = p.log_text()
    ready_line = log.index("pooler ready")
    for index in range(4):
        assert f"worker {index} applied generation 0" in log[:ready_line], log
    assert p.notified()[0] == "READY=1"

    p.write_config(config(5, workers=4))
    p.reload()
    wait_until(lambda: p.notified().count("READY=1") == 2, message=lambda: str(p.notifications))
    states = [n.split("=")[0] for n in p.notifications if not n.startswith(("STATUS", "MONO"))]
    assert states == ["READY", "RELOADING", "READY"]
    log = p.log_text()
    for index in range(4):
        assert f"worker {index} applied generation 1" in log

    p.signal(signal.SIGTERM)
    assert p.wait_exit(timeout=20) == 0
    assert p.notified()[-1] == "STOPPING=1"


def test_pool_size_below_workers_serves_every_worker(pooler, pg):
    """pool_size 1, workers 2, 4 busy clients: 10 fresh clients each log in and run a query
    within pool_timeout, whichever worker they land on (it used to be 5 of 10: a worker with
    no slot never got one)."""
    p = pooler(config(1, workers=2, pool_timeout=8000))
    stop = threading.Event()
    busy = [connect_to_worker(p, index % 2) for index in range(4)]
    failures: list[BaseException] = []

    def keep_busy(conn: psycopg.Connection) -> None:
        try:
            while not stop.is_set():
                conn.execute("select pg_sleep(0.02)")
        except BaseException as exc:
            failures.append(exc)

    def fresh(results: list) -> None:
        try:
            with p.connect("p0", connect_timeout=20) as conn:
                results.append((worker_of(conn), conn.execute("select 1").fetchone()[0]))
        except BaseException as exc:
            results.append(exc)

    loops = [threading.Thread(target=keep_busy, args=(c,)) for c in busy]
    results: list = []
    clients = [threading.Thread(target=fresh, args=(results,)) for _ in range(10)]
    try:
        for t in loops:
            t.start()
        for t in clients:
            t.start()
        for t in clients:
            t.join(timeout=30)
    finally:
        stop.set()
        for t in loops:
            t.join(timeout=30)
        for conn in busy:
            conn.close()
    assert not failures, failures
    assert len(results) == 10
    assert all(isinstance(r, tuple) and r[1] == 1 for r in results), results
    assert {r[0] for r in results} == {0, 1}, results  # both workers had fresh clients


def test_dead_workers_servers_count_until_gone(pooler, pg):
    """SIGKILL of a worker whose clients run long queries: its servers are cancelled at once,
    and PostgreSQL never sees more than pool_size backends for the route meanwhile (it saw
    pool_size more while the dead worker's queries ran on)."""
    wait_until(lambda: backends(pg, "p0") == 0)  # an earlier test's servers are gone
    p = pooler(config(3, workers=2))
    others: list[psycopg.Connection] = []
    victims = [connect_to_worker(p, 0, keep=others) for _ in range(3)]
    others = [c for c in others if worker_of(c) == 1] + [connect_to_worker(p, 1) for _ in range(3)]

    def sleep(conn: psycopg.Connection) -> None:
        with contextlib.suppress(psycopg.Error):  # its worker is killed under it
            conn.execute("select pg_sleep(60)")

    sleepers = [threading.Thread(target=sleep, args=(c,)) for c in victims]
    for t in sleepers:
        t.start()
    wait_until(lambda: sleeping(pg) == 3)
    peak = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, backends(pg, "p0"))
            stop.wait(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        os.kill(worker_pid(p.pid, 0), signal.SIGKILL)
        # worker 1's clients want servers now: they get them once the dead one's are gone
        results: list = []

        def query(conn: psycopg.Connection) -> None:
            try:
                results.append(conn.execute("select 2").fetchone()[0])
            except BaseException as exc:
                results.append(exc)

        threads = [threading.Thread(target=query, args=(c,)) for c in others]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert results == [2] * len(others), results
        wait_until(lambda: sleeping(pg) == 0, timeout=10)
    finally:
        stop.set()
        sampler.join()
        for t in sleepers:
            t.join(timeout=60)
        for conn in victims + others:
            conn.close()
    assert peak <= 3, peak
    assert p.log_contains("cancelled 3 server connections")  # not left to run their 60 s


def sleeping(pg) -> int:
    out = pg.psql("select count(*) from pg_stat_activity where query = 'select pg_sleep(60)'")
    return int(out.split()[-1])


def test_fewer_workers_lose_no_login_and_cut_no_transaction(pooler, pg):
    """A reload from 3 to 2 workers under load: the retired worker's socket stops receiving
    before it closes (every one of 40 new logins is served; 17 used to time out) and its
    clients go on until they leave (they used to get FATAL between transactions)."""
    p = pooler(config(10, workers=3))
    loaders = [connect_to_worker(p, index % 3) for index in range(6)]
    stop = threading.Event()
    errors: list[BaseException] = []
    done = [0] * len(loaders)

    def load(n: int, conn: psycopg.Connection) -> None:
        try:
            while not stop.is_set():
                with conn.transaction():
                    conn.execute("select pg_sleep(0.005)")
                done[n] += 1
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=load, args=(n, c)) for n, c in enumerate(loaders)]
    for t in threads:
        t.start()
    logins: list = []

    def login() -> None:
        try:
            with p.connect("p0", connect_timeout=10) as conn:
                logins.append((worker_of(conn), conn.execute("select 1").fetchone()[0]))
        except BaseException as exc:
            logins.append(exc)

    try:
        wait_until(lambda: all(done))
        p.write_config(config(10, workers=2))
        p.reload()
        p.wait_for_log("worker 1 applied generation 1")
        for _ in range(4):
            batch = [threading.Thread(target=login) for _ in range(10)]
            for t in batch:
                t.start()
            for t in batch:
                t.join(timeout=30)
        before = list(done)
        wait_until(lambda: all(d > b for d, b in zip(done, before, strict=True)))
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert not errors, errors
    assert len(logins) == 40
    assert all(isinstance(r, tuple) and r[1] == 1 for r in logins), logins
    assert {r[0] for r in logins} == {0, 1}
    # the retiring worker leaves once its clients have gone
    assert worker_pid(p.pid, 2) is not None
    for conn in loaders:
        conn.close()
    wait_until(lambda: worker_pid(p.pid, 2) is None, timeout=20)
    assert p.log_contains("worker 2 retired")


def test_every_field_a_show_column_reads_is_produced(pooler, pg):
    """SHOW LISTS login_clients counts clients still logging in (it was always 0), SHOW POOLS
    load_balance_hosts names the balancing of a storage with several hosts (always NULL)."""
    two = f'storage "two" {{\n\ttype "remote"\n\thost "127.0.0.1:{pg.port},localhost:{pg.port}"\n}}'
    p = pooler(
        make_config(
            [route("p1", "postgres", storage="two"), route()],
            storages=[storage(), two],
            workers=2,
        )
    )
    with p.connect("p1") as conn:
        conn.execute("select 1")
        silent = [socket.create_connection(("127.0.0.1", p.port)) for _ in range(3)]
        try:

            def lists() -> dict:
                return dict(p.admin("show lists"))

            wait_until(
                lambda: lists()["login_clients"] == 3, timeout=30, message=lambda: str(lists())
            )
            with p.connect("console", "admin") as console:
                cur = console.execute("show pools")
                pools = cur.fetchall()
                column = [c.name for c in cur.description].index("load_balance_hosts")
            by_db = {row[0]: row[column] for row in pools}
            assert by_db["p1"] == "roundrobin", pools
        finally:
            for sock in silent:
                sock.close()
    wait_until(lambda: dict(p.admin("show lists"))["login_clients"] == 0, timeout=30)


def test_whole_pool_size_at_once_after_a_burst(pooler, pg):
    """After a burst that queued slot requests on every worker (each then served its
    waiters with its own released servers), `pool_size` clients holding a transaction each
    all get a server, wherever they land: a worker left queued in the supervisor lent none
    of its idle servers and the last client waited out pool_timeout beside them."""
    p = pooler(config(4, 2, pool_timeout=8000))
    done = 0
    lock = threading.Lock()

    def burst() -> None:
        nonlocal done
        while done < 200:
            with psycopg.connect(p.dsn("p1")) as conn:
                for _ in range(5):
                    conn.execute("select pg_sleep(0.005)")
                    conn.commit()
                    with lock:
                        done += 1

    for _ in range(3):
        done = 0
        threads = [threading.Thread(target=burst) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        conns = [psycopg.connect(p.dsn("p1")) for _ in range(4)]
        try:
            for conn in conns:
                conn.execute("select 1")  # (a transaction: each holds its server)
        finally:
            for conn in conns:
                conn.close()
