"""`shared_pool "name" { pool_size N }`: one backend limit for every route that names it,
over all workers (issue 18, item 6)."""

from __future__ import annotations

import signal
import threading
import urllib.request
from collections.abc import Callable

import psycopg
import pytest
from harness import make_config, route, storage, wait_until


def config(size: int = 3, workers: int = 2, **extra) -> str:
    rules = [
        route("p1", "postgres", pool="transaction", shared_pool="sp", **extra),
        route("p2", "postgres", pool="transaction", shared_pool="sp", **extra),
    ]
    shared = f'shared_pool "sp" {{\n\tpool_size {size}\n}}'
    return make_config(rules, storages=[storage(), shared], workers=workers, log_session=False)


def backends(pg) -> dict[str, int]:
    out = pg.psql(
        "select datname, count(*) from pg_stat_activity "
        "where datname in ('p1', 'p2') and backend_type = 'client backend' group by 1"
    )
    found = {"p1": 0, "p2": 0}
    for line in out.split():
        name, _, count = line.partition("|")
        found[name] = int(count)
    return found


class Sampler:
    """The most backends of p1 and p2 together seen while it runs (pg_stat_activity)."""

    def __init__(self, pg) -> None:
        self.pg = pg
        self.peak = 0
        self.seen: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        while not self._stop.is_set():
            now = backends(self.pg)
            self.peak = max(self.peak, sum(now.values()))
            self.seen.update(db for db, n in now.items() if n)
            self._stop.wait(0.02)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run_all(jobs: list[Callable[[], object]]) -> list[object]:
    results: list[object] = []

    def run(job: Callable[[], object]) -> None:
        try:
            results.append(job())
        except BaseException as exc:
            results.append(exc)

    threads = [threading.Thread(target=run, args=(job,)) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return results


def test_two_routes_never_exceed_the_shared_pool_size(pooler, pg):
    """Two routes naming one shared pool of 3, two workers, 5 busy clients on each route:
    PostgreSQL never sees more than 3 backends for the two together, and every query of
    both routes is answered (without the pool each route opened its own: 10)."""
    wait_until(lambda: sum(backends(pg).values()) == 0)  # an earlier test's are gone
    p = pooler(config(pool_timeout=30000))
    conns = [p.connect(db) for db in ("p1", "p2") for _ in range(5)]

    def busy(conn: psycopg.Connection) -> Callable[[], object]:
        def job() -> object:
            for _ in range(15):
                conn.execute("select pg_sleep(0.01)")
            return conn.info.dbname

        return job

    try:
        with Sampler(pg) as sampler:
            results = run_all([busy(c) for c in conns])
    finally:
        for conn in conns:
            conn.close()
    assert sorted(map(str, results)) == ["p1"] * 5 + ["p2"] * 5, results
    assert sampler.peak <= 3, sampler.peak
    assert sampler.seen == {"p1", "p2"}


def test_idle_servers_of_one_route_make_room_for_another(pooler, pg):
    """The shared pool is full of p1's idle servers: a client of p2 is served, one of them
    closed for it (odyssey replaces another route's idle server); the total stays 3."""
    wait_until(lambda: sum(backends(pg).values()) == 0)
    p = pooler(config(pool_timeout=20000))
    holders = [p.connect("p1") for _ in range(3)]
    try:
        # three at once: three servers, left idle when done
        barrier = threading.Barrier(3)

        def fill(conn: psycopg.Connection) -> Callable[[], object]:
            def job() -> object:
                barrier.wait(10)
                with conn.transaction():
                    conn.execute("select pg_sleep(0.3)")
                return 1

            return job

        assert run_all([fill(c) for c in holders]) == [1, 1, 1]
        wait_until(lambda: backends(pg) == {"p1": 3, "p2": 0})
        with Sampler(pg) as sampler, p.connect("p2") as other:
            assert other.execute("select 2").fetchone() == (2,)
        assert sampler.peak <= 3, sampler.peak
        assert backends(pg)["p1"] <= 2
        # and p1 is still served
        assert holders[0].execute("select 1").fetchone() == (1,)
    finally:
        for conn in holders:
            conn.close()


def test_a_reload_resizes_the_shared_pool_live(pooler, pg):
    """pool_size 1 -> 2 by SIGHUP: a client of the other route, which waited out its
    pool_timeout before, is served while the first one keeps its server."""
    p = pooler(config(size=1, workers=1, pool_timeout=1000))
    with p.connect("p1") as holder, p.connect("p2") as other:
        assert other.execute("select 0").fetchone() == (0,)  # (its route knows the server)
        holder.execute("begin")
        holder.execute("select 1")  # holds the pool's only server
        with pytest.raises(psycopg.OperationalError, match="reached 1"):
            other.execute("select 2")
    with p.connect("p1") as holder, p.connect("p2") as other:
        assert other.execute("select 0").fetchone() == (0,)
        holder.execute("begin")
        holder.execute("select 1")
        p.write_config(config(size=2, workers=1, pool_timeout=1000))
        p.signal(signal.SIGHUP)
        p.wait_for_log(r"reloaded, generation 1")
        assert other.execute("select 2").fetchone() == (2,)
        holder.execute("commit")


def test_console_metrics_and_control_show_the_shared_pool_size(pooler):
    """The rules of a shared pool have no pool_size of their own (0, which every view reads
    as "unlimited"): SHOW DATABASES, SHOW USERS, /metrics and the control socket's pools
    (the dashboard) show the shared pool's size, and the control socket names the pool."""
    from harness import free_port, release_port
    from prometheus_client.parser import text_string_to_metric_families
    from wire import control

    port = free_port()
    try:
        cfg = config(size=3).replace("workers 2", f"workers 2\npromhttp_server_port {port}")
        p = pooler(cfg)
        for db in ("p1", "p2"):
            p.sql("select 1", dbname=db)
        with p.connect("console", "admin") as conn:
            cur = conn.execute("show databases")
            names = [c.name for c in cur.description]
            dbs = {r[0]: dict(zip(names, r, strict=True)) for r in cur.fetchall()}
            cur = conn.execute("show users")
            names = [c.name for c in cur.description]
            users = {r[0]: dict(zip(names, r, strict=True)) for r in cur.fetchall()}
        for db in ("p1", "p2"):
            assert (dbs[db]["pool_size"], dbs[db]["max_connections"]) == (3, 3), dbs[db]
        assert int(users["postgres"]["pool_size"]) == 3
        assert users["postgres"]["max_user_connections"] == 3

        def capacities():
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                text = r.read().decode()
            families = {f.name: f for f in text_string_to_metric_families(text)}
            samples = families["odyssey_server_pool_capacity_configured_route"].samples
            return {s.labels["database"]: s.value for s in samples}

        assert wait_until(lambda: (c := capacities()) and set(c) >= {"p1", "p2"} and c) == {
            "p1": 3,
            "p2": 3,
        }
        pools = {x.database: x for x in control(p, "pools")}
        for db in ("p1", "p2"):
            assert (pools[db].pool_size, pools[db].shared_pool) == (3, "sp")
    finally:
        release_port(port)
