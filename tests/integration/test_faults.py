"""Fault injection between the pooler and PostgreSQL (tests/faultproxy.py), pg_terminate_backend
of pooled servers and a PostgreSQL restart under load.

What each fault must give (docs/reliability.md has the matrix): the pooler's timeouts fire,
clients get SQLSTATE-coded errors, nothing hangs, and the pool refills when the fault ends.
The pooler has no query timeout (odyssey has none either): a client whose server stalls
mid-query waits until it gives up; when it disconnects, the server is cancelled, and closed
after `pool_reset_timeout_ms` when it does not answer, which frees its slot for others.
"""

from __future__ import annotations

import socket
import threading
import time

import psycopg
import pytest
from faultproxy import FaultProxy
from harness import HOST, make_config, route, storage, wait_until
from wire import error_fields, read_until, startup_packet


@pytest.fixture
def proxy(pg):
    with FaultProxy(HOST, pg.port) as fp:
        yield fp


def proxied(proxy, **rule):
    rule.setdefault("pool", "transaction")
    rule.setdefault("pool_size", 2)
    return make_config(route(**rule), storages=storage(port=proxy.port), workers=1)


def login(p, database="p0", user="postgres", timeout=10.0):
    """Log in over a raw socket: (None, seconds) when it worked, else (error fields, seconds)."""
    started = time.monotonic()
    with socket.create_connection((HOST, p.port), timeout=timeout) as sock:
        sock.sendall(startup_packet(user, database))
        messages = read_until(sock, b"ZE", timeout=timeout)
    took = time.monotonic() - started
    for kind, body in messages:
        if kind == ord("E"):
            return error_fields(body), took
    assert messages and messages[-1][0] == ord("Z"), messages
    return None, took


def works(p, database="p0"):
    try:
        return p.sql("select 1", dbname=database) == [(1,)]
    except psycopg.Error:
        return False


def pool_row(p):
    return next((r for r in p.admin("show pools") if r[0] != "console"), None)


def pooled_servers(p):
    rows = p.admin("show pools")
    return sum(r[6] + r[9] + r[12] for r in rows if r[0] != "console")


# -- connecting --------------------------------------------------------------------------


def test_server_refuses_connections_then_recovers(pooler, proxy):
    p = pooler(proxied(proxy))
    proxy.mode = "refuse"
    fields, _ = login(p)
    assert fields["S"] == "FATAL" and fields["C"] == "08006", fields
    assert "failed to connect to remote server" in fields["M"]
    proxy.mode = "pass"
    wait_until(lambda: works(p), timeout=5)


def test_blackholed_connect_hits_backend_connect_timeout(pooler, proxy):
    cfg = proxied(proxy).replace("workers 1", "workers 1\nbackend_connect_timeout_ms 500")
    p = pooler(cfg)
    proxy.mode = "blackhole"
    fields, took = login(p)  # within login()'s socket timeout: the connect timeout fired
    assert fields["C"] == "08006", fields
    assert took > 0.4, took  # not before it
    proxy.mode = "pass"
    wait_until(lambda: works(p), timeout=5)
    assert login(p)[0] is None


def test_server_closing_during_login(pooler, proxy):
    p = pooler(proxied(proxy))
    proxy.mode = "close_login"
    fields, _ = login(p)
    assert fields["C"] == "08006", fields
    proxy.mode = "pass"
    wait_until(lambda: works(p), timeout=5)


# -- mid-query -----------------------------------------------------------------------------


def test_connection_reset_mid_query(pooler, proxy, pg):
    p = pooler(proxied(proxy))
    victim = p.connect("p0")
    try:
        with p.connect("p0") as bystander:
            victim.execute("select 1")
            bystander.execute("select 1")
            victim.pgconn.send_query(b"select pg_sleep(5)")
            wait_until(lambda: _running(pg, "select pg_sleep(5)") == 1, timeout=5)
            assert proxy.reset() >= 1
            sqlstate, message = _result_error(victim)
            assert sqlstate == "08006", message
            assert "server connection was closed unexpectedly" in message
            # once the pooler has seen its idle server go too (a query sent before that
            # meets the dead server, as in pgbouncer), the bystander carries on: the pool refills
            wait_until(lambda: pooled_servers(p) == 0, timeout=5)
            assert _query_ok(bystander)
    finally:
        victim.close()
    wait_until(lambda: works(p), timeout=5)


def _result_error(conn):
    """(SQLSTATE, message) of the first error result of a send_query()."""
    while True:
        res = conn.pgconn.get_result()
        if res is None:
            return None, conn.pgconn.error_message.decode()
        if res.status == psycopg.pq.ExecStatus.FATAL_ERROR:
            state = res.error_field(psycopg.pq.DiagnosticField.SQLSTATE)
            return (state.decode() if state else None), res.error_message.decode()


def _query_ok(conn):
    try:
        return conn.execute("select 7").fetchone()[0] == 7
    except psycopg.Error:
        return False


def test_stalled_server_pool_timeout_and_recovery(pooler, proxy):
    cfg = proxied(proxy, pool_size=1, pool_timeout=800, pool_reset_timeout_ms=500)
    p = pooler(cfg)
    victim = p.connect("p0")
    victim.execute("select 1")  # the one server exists; wait until reset and idle
    wait_until(lambda: (row := pool_row(p)) and row[9] == 1 and row[6] == 0, timeout=5)
    proxy.stall()
    victim.pgconn.send_query(b"select 2")  # goes nowhere
    wait_until(lambda: victim.pgconn.flush() == 0, timeout=5)
    wait_until(lambda: (row := pool_row(p)) and row[6] == 1, timeout=5)  # sv_active
    # another client waits for the only server and gets pool_timeout's error
    started = time.monotonic()
    with p.connect("p0") as other, pytest.raises(psycopg.OperationalError) as info:
        other.execute("select 3")
    assert info.value.sqlstate == "53300", info.value
    assert time.monotonic() - started > 0.7  # not before pool_timeout
    # the stalled client gives up; the pooler cancels, waits pool_reset_timeout_ms, closes
    victim.pgconn.finish()
    wait_until(lambda: works(p), timeout=6)
    proxy.resume()
    wait_until(lambda: pooled_servers(p) <= 1, timeout=5)


# -- servers killed behind the pooler ----------------------------------------------------


def _running(pg, query):
    """How many backends run ``query`` now."""
    return int(
        pg.psql(
            f"select count(*) from pg_stat_activity where state = 'active' and query = '{query}'"
        )
    )


def _terminate(pg, database):
    return pg.psql(
        f"select count(pg_terminate_backend(pid)) from pg_stat_activity "
        f"where datname = '{database}' and backend_type = 'client backend' and pid <> pg_backend_pid()"
    )


def test_terminated_idle_servers_are_replaced_silently(pooler, pg):
    p = pooler(make_config(route(pool="transaction", pool_size=2)))
    with p.connect("p1") as a, p.connect("p1") as b:
        a.execute("begin")
        b.execute("select 1")  # two servers now
        a.execute("commit")
        assert int(_terminate(pg, "p1")) == 2
        wait_until(lambda: pooled_servers(p) == 0, timeout=5)  # the pooler saw them go
        for _ in range(5):  # transaction pool: idle servers died, new ones serve
            assert a.execute("select 1").fetchone()[0] == 1
            assert b.execute("select 2").fetchone()[0] == 2


def test_terminated_server_mid_query_and_in_session(pooler, pg):
    p = pooler(make_config([route("p1", pool="transaction"), route("p2", pool="session")]))
    tx = p.connect("p1")
    with p.connect("p2") as sess:
        tx.execute("select 1")
        sess.execute("select 1")
        tx.pgconn.send_query(b"select pg_sleep(10)")
        wait_until(lambda: _running(pg, "select pg_sleep(10)") == 1, timeout=5)
        _terminate(pg, "p1")
        _terminate(pg, "p2")
        sqlstate, message = _result_error(tx)
        assert sqlstate in ("57P01", "08006"), message
        with pytest.raises(psycopg.OperationalError) as idle:
            sess.execute("select 1")
        assert idle.value.sqlstate in ("57P01", "08006", None), idle.value
    tx.close()
    assert p.sql("select 1", dbname="p1") == [(1,)]
    assert p.sql("select 1", dbname="p2") == [(1,)]


def test_postgres_restart_under_load(pooler, pg):
    p = pooler(make_config(route(pool="transaction", pool_size=4), workers=2))
    stop = threading.Event()
    seen: list[str] = []
    ok_before: list[int] = [0] * 6
    ok_after: list[int] = [0] * 6
    restarted = threading.Event()

    def client(i):
        conn = None
        while not stop.is_set():
            try:
                if conn is None or conn.closed:
                    conn = p.connect("p0", connect_timeout=3)
                conn.execute("select pg_sleep(0.01)")
                (ok_after if restarted.is_set() else ok_before)[i] += 1
            except psycopg.Error as exc:
                seen.append(exc.sqlstate or type(exc).__name__)
                if conn is not None:
                    conn.close()
                conn = None
                time.sleep(0.05)
        if conn is not None:
            conn.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: all(ok_before), timeout=10, message=lambda: f"{ok_before} {seen}")
        pg.restart()
        restarted.set()
        wait_until(lambda: all(ok_after), timeout=20, message=lambda: f"{ok_after} {seen}")
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert seen, "a restart under load should be visible to some client"
    # SQLSTATE-coded errors, or a connect refused by the pooler's own 08006 / pool errors
    assert set(seen) <= {"57P01", "08006", "08P01", "57P03", "OperationalError"}, seen
    assert p.is_running()
