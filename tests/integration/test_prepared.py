"""Named prepared statements through transaction pools (pool_reserve_prepared_statement)."""

from __future__ import annotations

import asyncio
import re
import subprocess
import threading

import asyncpg
import psycopg
import pytest
from harness import HOST, make_config, route, wait_until


def transaction_pool(pool_size: int = 4, workers: int = 1, **extra) -> str:
    return make_config(
        route(pool="transaction", pool_size=pool_size, pool_discard=False, **extra),
        workers=workers,
        log_session=False,
    )


def test_psycopg_prepares_everything(pooler):
    p = pooler(transaction_pool(pool_size=2))
    conns = [psycopg.connect(p.dsn("p0"), autocommit=True, prepare_threshold=0) for _ in range(6)]
    try:
        for round_ in range(5):
            for i, conn in enumerate(conns):
                row = conn.execute("select %s::int + %s::int", (i, round_)).fetchone()
                assert row[0] == i + round_
                row = conn.execute(
                    "select abalance from pgbench_accounts where aid = %s", (i + 1,)
                ).fetchone()
                assert row is not None
    finally:
        for conn in conns:
            conn.close()


def test_psycopg_statement_cache_eviction_deallocates(pooler):
    p = pooler(transaction_pool(pool_size=2))
    with psycopg.connect(p.dsn("p0"), autocommit=True, prepare_threshold=0) as conn:
        conn.prepared_max = 5  # force DEALLOCATE of older statements
        for i in range(30):
            assert conn.execute(f"select {i} + %s::int", (1,)).fetchone()[0] == i + 1


def test_asyncpg_with_default_statement_cache(pooler):
    p = pooler(transaction_pool(pool_size=2))

    async def client(n: int) -> None:
        conn = await asyncpg.connect(host=HOST, port=p.port, user="postgres", database="p0")
        try:
            for i in range(30):
                assert await conn.fetchval("select $1::int * 2", i) == i * 2
                rows = await conn.fetch("select aid from pgbench_accounts where aid <= $1", n)
                assert len(rows) == n
        finally:
            await conn.close()

    async def main() -> None:
        await asyncio.gather(*(client(n) for n in range(1, 9)))

    asyncio.run(main())


def test_pgbench_prepared_mode(pooler, pg):
    p = pooler(transaction_pool(pool_size=4))
    cmd = [pg.binary("pgbench"), "-h", HOST, "-p", str(p.port), "-U", "postgres", "-n"]
    cmd += ["-M", "prepared", "-c", "16", "-t", "100", "p0"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    assert "number of transactions actually processed: 1600" in out.stdout
    assert "number of failed transactions: 0" in out.stdout

    def totals() -> dict | None:
        with p.connect("console", "admin") as console:
            cur = console.execute("show stats_totals")
            names = [column.name for column in cur.description]
            rows = [dict(zip(names, r, strict=True)) for r in cur.fetchall() if r[0] == "p0"]
        return rows[0] if rows and rows[0]["bind_count"] >= 1600 * 7 else None

    row = wait_until(totals)  # the workers report their counters every second
    # 16 clients x 7 statements of TPC-B-like, prepared on at most 4 servers each
    assert row["client_parse_count"] >= 16 * 7
    assert 7 <= row["server_parse_count"] <= 4 * 7 + 7
    assert row["bind_count"] >= 1600 * 7


def test_failed_parse_does_not_poison(pooler):
    p = pooler(transaction_pool(pool_size=1))
    with psycopg.connect(p.dsn("p0"), autocommit=True, prepare_threshold=0) as conn:
        with pytest.raises(psycopg.errors.UndefinedTable):
            conn.execute("select * from no_such_table where 1 = %s", (1,))
        assert conn.execute("select 1 + %s::int", (1,)).fetchone()[0] == 2
    with (
        psycopg.connect(p.dsn("p0"), autocommit=True, prepare_threshold=0) as conn,
        pytest.raises(psycopg.errors.UndefinedTable),
    ):
        conn.execute("select * from no_such_table where 1 = %s", (1,))


def test_schema_change_costs_at_most_one_error_per_client(pooler, pg):
    pg.psql("create table if not exists plan_t (a int)", db="p1")
    pg.psql("insert into plan_t select generate_series(1, 10)", db="p1")
    p = pooler(transaction_pool(pool_size=3))
    errors: dict[int, int] = {}
    done = threading.Event()
    altered = threading.Event()
    after_alter: dict[int, int] = {}

    def worker(n: int) -> None:
        with psycopg.connect(p.dsn("p1"), autocommit=True, prepare_threshold=0) as conn:
            while not done.is_set():
                try:
                    conn.execute("select * from plan_t where a > %s", (0,)).fetchall()
                    if altered.is_set():
                        after_alter[n] = after_alter.get(n, 0) + 1
                except psycopg.errors.FeatureNotSupported as exc:
                    assert "cached plan" in str(exc)
                    errors[n] = errors.get(n, 0) + 1

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: True)
        pg.psql("alter table plan_t add column b int", db="p1")
        altered.set()
        wait_until(lambda: len(after_alter) == 6 and min(after_alter.values()) >= 20, timeout=20)
    finally:
        done.set()
        for t in threads:
            t.join(timeout=10)
        pg.psql("drop table plan_t", db="p1")
    assert all(count <= 1 for count in errors.values()), errors


def test_server_side_names_are_shared(pooler, pg):
    p = pooler(transaction_pool(pool_size=2))
    conns = [psycopg.connect(p.dsn("p0"), autocommit=True, prepare_threshold=0) for _ in range(4)]
    try:
        for conn in conns:
            conn.execute("select %s::int as shared_marker", (1,))
        names = pg.psql(
            "select count(*) from pg_stat_activity where datname = 'p0' "
            "and backend_type = 'client backend'"
        )
        assert int(names.split()[-1]) <= 2
        # one shared server-side statement per server, whatever the number of clients
        out = (
            conns[0]
            .execute(
                "select name from pg_prepared_statements where statement like %s",
                ("%shared_marker%",),
            )
            .fetchall()
        )
        assert len(out) == 1 and re.fullmatch(r"pooler_[0-9a-f]+", out[0][0])
    finally:
        for conn in conns:
            conn.close()


def test_unnamed_statements_are_prepared_once_per_server(pooler):
    """Drivers that re-parse an unnamed statement on every execution (psycopg without
    auto-prepare, pgbench -M extended) get one shared server-side statement: the server
    binds it instead of parsing and planning the query each time."""
    p = pooler(transaction_pool(pool_size=1))
    with psycopg.connect(p.dsn("p0"), autocommit=True, prepare_threshold=None) as conn:
        for i in range(5):
            assert conn.execute("select %s::int * 3 as unnamed_marker", (i,)).fetchone() == (i * 3,)
        # a simple query in between replaces the unnamed statement, as in PostgreSQL
        conn.execute(b"select 1", prepare=False)
        assert conn.execute("select %s::int * 3 as unnamed_marker", (7,)).fetchone() == (21,)
        with conn.transaction():  # one server for both statements
            conn.execute("select %s::int * 3 as unnamed_marker", (8,))
            rows = conn.execute(
                "select name from pg_prepared_statements where statement like %s",
                ("%unnamed_marker%",),
            ).fetchall()
    assert len(rows) == 1 and re.fullmatch(r"pooler_[0-9a-f]+", rows[0][0]), rows
