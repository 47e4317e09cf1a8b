"""Shared server-side statements under DDL (issue 14, faults 1 and 1b).

A transaction pool shares one server-side statement per query text between its clients and
caches unnamed statements on the servers. Whatever a client is answered must be what its own
connection to PostgreSQL would answer: rows in the shape it was described, or PostgreSQL's
own "cached plan must not change result type"; a statement the pooler cached and PostgreSQL
finds stale is re-prepared, not an error that comes back on every attempt.
"""

from __future__ import annotations

import psycopg
import pytest
from harness import make_config, route


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
