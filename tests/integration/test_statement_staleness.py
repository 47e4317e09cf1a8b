"""Shared server-side statements under DDL (issue 14, faults 1 and 1b).

A transaction pool shares one server-side statement per query text between its clients and
caches unnamed statements on the servers. Whatever a client is answered must be what its own
connection to PostgreSQL would answer: rows in the shape it was described, or PostgreSQL's
own "cached plan must not change result type"; a statement the pooler cached and PostgreSQL
finds stale is re-prepared, not an error that comes back on every attempt.
"""

from __future__ import annotations

import asyncio

import psycopg
import pytest
from harness import HOST, make_config, route


def transaction_pool(pool_size: int = 4, workers: int = 1) -> str:
    return make_config(
        route(pool="transaction", pool_size=pool_size, pool_discard=False),
        workers=workers,
        log_session=False,
    )


@pytest.mark.timeout(60)
@pytest.mark.parametrize("autocommit", [False, True])
def test_unnamed_statement_cached_in_a_rolled_back_transaction(pooler, autocommit):
    """Fault 1b: psycopg without auto-prepare sends every query as an unnamed statement,
    which the pooler caches on the servers. A type created and used in a transaction that
    rolls back, then created again: the statement cached in the first transaction names
    the old type's OID. PostgreSQL (directly, through a session pool, through pgbouncer)
    just runs the new statement; so must a transaction pool, on every attempt."""
    p = pooler(transaction_pool(pool_size=1))
    with psycopg.connect(p.dsn("p1"), prepare_threshold=None, autocommit=autocommit) as conn:
        for attempt in range(3):
            if autocommit:
                conn.execute("begin")
            conn.execute("create type stale_ty as enum ('a', 'b')")
            conn.execute("create table stale_tt (v stale_ty[])")
            conn.execute("insert into stale_tt values (%s::stale_ty[])", (["a", "b"],))
            assert conn.execute("select v::text from stale_tt").fetchone() == ("{a,b}",), attempt
            if autocommit:
                conn.execute("rollback")
            else:
                conn.rollback()


@pytest.mark.timeout(60)
def test_unnamed_statement_naming_a_dropped_type_is_dropped_after_its_error(pooler, pg):
    """The type is dropped and created again outside any transaction the pooler sees: the
    cached statement's failure ("cache lookup failed for type") may reach the client once
    (it is not retried yet), but the statement is then prepared again everywhere: never
    the same failure on every later attempt."""
    p = pooler(transaction_pool(pool_size=2))
    insert = "insert into stale_tt2 values (%s::stale_ty2[])"
    try:
        with psycopg.connect(p.dsn("p1"), prepare_threshold=None, autocommit=True) as conn:
            conn.execute("create type stale_ty2 as enum ('a', 'b')")
            conn.execute("create table stale_tt2 (v stale_ty2[])")
            for _server in range(2):  # cached on both servers
                with conn.transaction():
                    conn.execute(insert, (["a"],))
            conn.execute("drop table stale_tt2; drop type stale_ty2")
            conn.execute("create type stale_ty2 as enum ('a', 'b')")
            conn.execute("create table stale_tt2 (v stale_ty2[])")
            failures = 0
            for _attempt in range(4):
                try:
                    conn.execute(insert, (["b"],))
                except psycopg.errors.InternalError_ as exc:
                    assert "cache lookup failed for type" in str(exc), exc
                    failures += 1
            assert failures <= 1
            assert conn.execute("select count(*) from stale_tt2").fetchone() == (4 - failures,)
    finally:
        pg.psql("drop table if exists stale_tt2; drop type if exists stale_ty2", db="p1")


# The table's shapes, cycled by the DDL task: each is what `select *` returns.
SHAPES = [
    ("alter table stale_t add column b int default 7", ("id", "a", "b")),
    ("alter table stale_t drop column b", ("id", "a")),
    ("alter table stale_t alter column a type text", ("id", "a")),
    ("alter table stale_t add column c text default 'x'", ("id", "a", "c")),
    ("alter table stale_t drop column c", ("id", "a")),
    ("alter table stale_t alter column a type int using a::int", ("id", "a")),
]


@pytest.mark.timeout(120)
def test_asyncpg_cache_under_ddl_never_decodes_another_shape(pooler, pg):
    """Fault 1: 8 asyncpg clients (statement cache on) on pool_size 4, workers 2, while
    columns are added, dropped and retyped directly on PostgreSQL. Every row has the shape
    of the table at some moment and the values of its columns; the only error is
    PostgreSQL's "cached plan must not change result type" (asyncpg retries it itself
    outside a transaction, so it should hardly ever surface)."""
    asyncpg = pytest.importorskip("asyncpg")
    pg.psql("drop table if exists stale_t", db="p1")
    pg.psql("create table stale_t (id int primary key, a int)", db="p1")
    pg.psql("insert into stale_t select g, g * 10 from generate_series(1, 50) g", db="p1")
    p = pooler(transaction_pool(pool_size=4, workers=2))
    valid = {columns for _sql, columns in SHAPES}
    wrong: list[str] = []
    stale_errors: dict[int, int] = {}
    queries = [0]
    done = asyncio.Event()

    async def client(n: int) -> None:
        conn = await asyncpg.connect(host=HOST, port=p.port, user="postgres", database="p1")
        try:
            i = 0
            while not done.is_set():
                i += 1
                key = 1 + (n * 7 + i) % 50
                try:
                    rows = await conn.fetch("select * from stale_t where id=$1", key)
                except asyncpg.exceptions.InvalidCachedStatementError:
                    stale_errors[n] = stale_errors.get(n, 0) + 1
                    continue
                except Exception as exc:
                    wrong.append(f"{type(exc).__name__}: {exc}")
                    continue
                queries[0] += 1
                if len(rows) != 1:
                    wrong.append(f"{len(rows)} rows for id {key}")
                    continue
                row = rows[0]
                if (
                    tuple(row.keys()) not in valid
                    or row["id"] != key
                    or str(row["a"]) != str(key * 10)
                ):
                    wrong.append(f"row {dict(row)} for id {key}")
        finally:
            await conn.close()

    async def ddl() -> None:
        conn = await asyncpg.connect(host=HOST, port=pg.port, user="postgres", database="p1")
        try:
            for _round in range(4):
                for sql, _columns in SHAPES:
                    await asyncio.sleep(0.05)  # let the clients run queries in this shape
                    await conn.execute(sql)
            await asyncio.sleep(0.05)
        finally:
            await conn.close()
            done.set()

    async def main() -> None:
        await asyncio.gather(ddl(), *(client(n) for n in range(8)))

    try:
        asyncio.run(main())
    finally:
        pg.psql("drop table if exists stale_t", db="p1")
    print("queries", queries[0], "stale errors", stale_errors)
    assert queries[0] > 100
    assert not wrong, wrong[:10]
    # asyncpg re-prepares after InvalidCachedStatementError and retries once: one surfacing
    # error per client would mean the retry met a stale statement again
    assert all(count <= 1 for count in stale_errors.values()), stale_errors
