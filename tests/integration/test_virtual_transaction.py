"""`virtual_transaction yes` (odyssey master): a bare BEGIN in a transaction pool is answered
by the pooler and run on the server the client's next statement gets (issue 18)."""

from __future__ import annotations

import psycopg
import pytest
from harness import make_config, route


def config(**glob) -> str:
    rule = route("p0", "postgres", pool="transaction", pool_size=1, pool_timeout=3000)
    return make_config(rule, **glob)


def test_a_client_in_a_virtual_begin_holds_no_server(pooler, pg):
    """pool_size 1: a client that sent BEGIN and thinks holds no server, so another client is
    served meanwhile (without it, the second one waited out pool_timeout); the transaction
    is real once it runs a statement: rolled back, its insert is gone."""
    pg.psql("create table vtx_probe (x int)", db="p0")
    try:
        p = pooler(config(virtual_transaction=True))
        with p.connect("p0") as thinker, p.connect("p0") as other:
            thinker.execute("BEGIN")
            assert thinker.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
            assert other.execute("select 2").fetchone() == (2,)  # the server was free
            thinker.execute("insert into vtx_probe values (1)")
            assert thinker.execute("select count(*) from vtx_probe").fetchone() == (1,)
            assert thinker.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
            thinker.execute("ROLLBACK")
            assert thinker.execute("select count(*) from vtx_probe").fetchone() == (0,)
            # a statement that fails inside it aborts the transaction, as PostgreSQL does
            thinker.execute("begin")
            with pytest.raises(psycopg.errors.DivisionByZero):
                thinker.execute("select 1/0")
            assert thinker.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
            thinker.execute("rollback")
            assert other.execute("select 3").fetchone() == (3,)
    finally:
        pg.psql("drop table vtx_probe", db="p0")


def test_without_the_key_begin_goes_to_the_server(pooler):
    """Unset, as odyssey 1.5.3 (which has no such key): BEGIN takes the server."""
    p = pooler(config())
    with p.connect("p0") as holder, p.connect("p0") as other:
        holder.execute("BEGIN")
        with pytest.raises(psycopg.OperationalError, match="too many active clients"):
            other.execute("select 2")
        holder.execute("ROLLBACK")


def test_a_virtual_begin_counts_as_idle_in_transaction(pooler):
    """pool_idle_in_transaction_timeout applies to a client whose BEGIN was answered and not
    yet run (it counted as idle between transactions, so it was never dropped)."""
    rule = route(
        "p0", "postgres", pool="transaction", pool_size=1, pool_idle_in_transaction_timeout=1
    )
    p = pooler(make_config(rule, virtual_transaction=True))
    with p.connect("p0") as thinker:
        thinker.execute("BEGIN")
        p.wait_for_log("idle transaction timeout", timeout=15)
        with pytest.raises(psycopg.errors.IdleInTransactionSessionTimeout):
            thinker.execute("select 1")
