"""Pool modes through a real `pooler serve` in front of a real PostgreSQL."""

from __future__ import annotations

import threading

import asyncpg
import psycopg
import pytest
from harness import make_config, patience, route, wait_until


def backend_pid(conn: psycopg.Connection) -> int:
    return conn.execute("select pg_backend_pid()").fetchone()[0]


def test_session_pool_keeps_one_server_per_client(pooler):
    p = pooler(make_config(route(pool="session")))
    with p.connect("p0") as a, p.connect("p0") as b:
        assert backend_pid(a) == backend_pid(a)
        assert backend_pid(a) != backend_pid(b)
        a.execute("set application_name = 'kept'")
        assert a.execute("show application_name").fetchone()[0] == "kept"
        assert a.execute("select 1 + 1").fetchone()[0] == 2


def test_transaction_pool_shares_servers_between_transactions(pooler):
    p = pooler(make_config(route(pool="transaction", pool_size=1, pool_discard=False)))
    with p.connect("p0") as a, p.connect("p0") as b:
        assert backend_pid(a) == backend_pid(b)  # one server for both
        with a.transaction():
            pid = backend_pid(a)
            assert a.execute("select 1").fetchone()[0] == 1
            assert backend_pid(a) == pid  # held for the whole transaction


def test_transaction_pool_holds_server_until_commit(pooler):
    p = pooler(make_config(route(pool="transaction", pool_size=1, pool_timeout=500)))
    with p.connect("p0") as a, p.connect("p0") as b:
        a.execute("begin")
        a.execute("select 1")
        with pytest.raises(psycopg.OperationalError, match=r"pool_size"):
            b.execute("select 1")
        a.execute("commit")
    with p.connect("p0") as c:
        assert c.execute("select 7").fetchone()[0] == 7


def test_statement_pool_releases_after_each_statement(pooler):
    p = pooler(make_config(route(pool="statement", pool_size=1)))
    with p.connect("p0") as a, p.connect("p0") as b:
        assert backend_pid(a) == backend_pid(b)
        assert a.execute("select 2").fetchone()[0] == 2


def test_parameters_follow_the_client_across_servers(pooler):
    p = pooler(make_config(route(pool="transaction", pool_size=2, pool_discard=False)))
    with p.connect("p0") as a, p.connect("p0") as b:
        a.execute("set TimeZone = 'Asia/Tokyo'")
        # B must not inherit A's setting, whichever server it lands on.
        for _ in range(5):
            assert b.execute("show TimeZone").fetchone()[0] != "Asia/Tokyo"
            with b.transaction():
                b.execute("set local TimeZone = 'UTC'")
        # A keeps its own setting, whichever server it lands on.
        for _ in range(5):
            assert a.execute("show TimeZone").fetchone()[0] == "Asia/Tokyo"
            with b.transaction():  # keep B on a server so A moves around
                b.execute("select 1")
                assert a.execute("show TimeZone").fetchone()[0] == "Asia/Tokyo"


def test_reset_discards_session_state_in_transaction_mode(pooler):
    p = pooler(make_config(route(pool="transaction", pool_size=1)))
    with p.connect("p0") as a, p.connect("p0") as b:
        a.execute("create temp table t (x int)")
        rows = b.execute("select count(*) from pg_tables where tablename = 't'").fetchone()
        assert rows[0] == 0


def test_copy_in_and_out(pooler, pg):
    p = pooler(make_config(route(pool="transaction", pool_size=2)))
    pg.psql("create table if not exists copy_t (a int, b text)", db="p1")
    try:
        with p.connect("p1") as conn:
            conn.execute("truncate copy_t")
            with conn.cursor() as cur, cur.copy("copy copy_t from stdin") as copy:
                for i in range(1000):
                    copy.write_row((i, f"row {i}"))
            out = bytearray()
            with conn.cursor() as cur, cur.copy("copy copy_t to stdout") as copy:
                for chunk in copy:
                    out += chunk
            assert out.count(b"\n") == 1000
            assert conn.execute("select sum(a) from copy_t").fetchone()[0] == sum(range(1000))
    finally:
        pg.psql("drop table copy_t", db="p1")


def test_pipeline_mode_through_transaction_pool(pooler):
    p = pooler(make_config(route(pool="transaction", pool_size=1)))
    with p.connect("p0") as conn, conn.pipeline():
        cursors = [conn.execute("select %s::int", (i,)) for i in range(50)]
        conn.execute("select 1")
    assert [c.fetchone()[0] for c in cursors] == list(range(50))


async def test_asyncpg_with_statement_cache_in_session_pool(pooler):
    p = pooler(make_config(route(pool="session")))
    conn = await asyncpg.connect(host="127.0.0.1", port=p.port, user="postgres", database="p0")
    try:
        for i in range(20):
            assert await conn.fetchval("select $1::int + 1", i) == i + 1
        rows = await conn.fetch("select aid from pgbench_accounts where aid <= $1", 5)
        assert [r["aid"] for r in rows] == [1, 2, 3, 4, 5]
    finally:
        await conn.close()


def test_cancel_request_cancels_the_running_query(pooler):
    p = pooler(make_config(route(pool="transaction", pool_size=2)))
    with p.connect("p0") as conn:
        timer = threading.Timer(0.3, conn.cancel)
        timer.start()
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("select pg_sleep(20)")
        timer.join()
        assert conn.execute("select 3").fetchone()[0] == 3


def test_client_killed_mid_transaction_leaves_no_dirty_server(pooler, pg):
    p = pooler(make_config(route(pool="transaction", pool_size=1, pool_timeout=5000)))
    pg.psql("create table if not exists lock_t (id int primary key)", db="p2")
    pg.psql("insert into lock_t values (1) on conflict do nothing", db="p2")
    try:
        a = p.connect("p2")
        a.execute("begin")
        a.execute("select * from lock_t where id = 1 for update")
        a.pgconn.finish()  # vanishes without COMMIT/ROLLBACK
        with p.connect("p2") as b:
            # the same (only) server: it must not still hold A's transaction and lock
            assert b.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
            b.execute("set lock_timeout = '2s'")
            b.execute("select * from lock_t where id = 1 for update nowait")
            assert b.execute("select 1").fetchone()[0] == 1
    finally:
        pg.psql("drop table lock_t", db="p2")


def test_client_killed_mid_query_is_cancelled_and_server_reused(pooler, pg):
    p = pooler(make_config(route(pool="transaction", pool_size=1, pool_timeout=10000)))
    a = p.connect("p0")
    pid = backend_pid(a)
    a.pgconn.send_query(b"select pg_sleep(30)")
    wait_until(
        lambda: "pg_sleep" in pg.psql(f"select query from pg_stat_activity where pid = {pid}")
    )
    a.pgconn.finish()
    with p.connect("p0") as b:
        assert backend_pid(b) == pid  # reused after cancel, not replaced
        assert b.execute("select 5").fetchone()[0] == 5


def test_postgres_restart_underneath(pooler, pg):
    p = pooler(make_config(route(pool="transaction", pool_size=2)))
    with p.connect("p0") as conn:
        assert conn.execute("select 1").fetchone()[0] == 1
        pg.restart()
        # the idle server died with PostgreSQL; a new one serves the next query
        wait_until(lambda: _query_ok(conn), timeout=15)
    with p.connect("p0") as fresh:
        assert fresh.execute("select 2").fetchone()[0] == 2


def _query_ok(conn: psycopg.Connection) -> bool:
    try:
        return conn.execute("select 1").fetchone()[0] == 1
    except psycopg.Error:
        return False


def test_client_leaving_with_answers_in_flight_gets_its_server_reset_once(pooler):
    """A client pipelines statements and leaves (Terminate) before the answers are in: the
    server's last ReadyForQuery arrives after the client is gone. The server must be reset
    and released once; it once went back to the pool still owing an answer, which the next
    client then received instead of its own (found by the live fuzz test)."""
    import socket

    from wire import read_to_eof, read_until, startup_packet

    from pooler.protocol import build

    p = pooler(make_config(route(pool="transaction", pool_size=2)))
    burst = (
        b"".join(
            build.parse("", f"select {i}") + build.bind("", "") + build.execute() + build.sync()
            for i in range(20)
        )
        + build.terminate()
    )
    with p.connect("p0", application_name="steady") as steady:
        for n in range(200):
            with socket.create_connection(("127.0.0.1", p.port), timeout=10) as sock:
                sock.sendall(startup_packet(application_name="leaver"))
                assert read_until(sock, b"Z")[-1][0] == ord("Z")
                sock.sendall(burst)
                read_to_eof(sock)
            assert steady.execute(f"select {n}").fetchone()[0] == n
    log = p.log_text()
    assert "unexpected answer" not in log
    assert "reset failed" not in log


def test_a_client_sending_only_unanswered_messages_does_not_pin_a_server(pooler):
    """A lone Flush (or CopyDone outside COPY) gets no answer from PostgreSQL, so no
    ReadyForQuery would ever give the server back: it goes back at once."""
    import socket

    from wire import read_until, startup_packet

    from pooler.protocol import build

    p = pooler(make_config(route(pool="transaction", pool_size=1, pool_timeout=2000)))
    with socket.create_connection(("127.0.0.1", p.port), timeout=10) as sock:
        sock.sendall(startup_packet())
        read_until(sock, b"Z")
        sock.sendall(build.flush())
        sock.sendall(build.copy_done())
        # the only server is free for another client (pool_timeout would refuse it)
        assert p.sql("select 41", dbname="p0") == [(41,)]
        # and the first client still works
        sock.sendall(build.query("select 42"))
        rows = [body for kind, body in read_until(sock, b"Z") if kind == ord("D")]
        assert rows and rows[0].endswith(b"42")


def test_server_comes_back_at_once_when_counted_answers_never_come(pooler):
    """A client's complete Query counted as owed, then a malformed message in the same read:
    the client is refused and the Query never reaches PostgreSQL. The reset does not wait
    (pool_reset_timeout_ms) for an answer that will not come: it resynchronises the server
    with a marker query of its own and gives it back."""
    import socket

    from wire import read_to_eof, read_until, startup_packet

    from pooler.protocol import build

    p = pooler(
        make_config(
            route(pool="transaction", pool_size=1, pool_timeout=3000, pool_reset_timeout_ms=20000)
        )
    )
    assert p.sql("select 1", dbname="p0") == [(1,)]  # the one server exists
    with socket.create_connection(("127.0.0.1", p.port), timeout=10) as sock:
        sock.sendall(startup_packet())
        read_until(sock, b"Z")
        sock.sendall(build.query("begin") + build.query("select 2") + b"Q\xff\xff\xff\xff")
        read_to_eof(sock)
    # the only server is back long before the reset timeout (pool_timeout would refuse us)
    assert p.sql("select 3", dbname="p0") == [(3,)]
    assert "reset failed" not in p.log_text()


def test_malformed_client_message_closes_only_that_client(pooler):
    import socket

    p = pooler(make_config(route(pool="transaction", pool_size=2)))
    with p.connect("p0") as good:
        bad = psycopg.connect(p.dsn("p0"), autocommit=True)
        sock = socket.socket(fileno=bad.pgconn.socket)
        try:
            sock.sendall(b"Q\xff\xff\xff\xff")  # negative length
            wait_until(lambda: bad.pgconn.status != psycopg.pq.ConnStatus.OK or _broken(bad))
        finally:
            sock.detach()
            bad.close()
        assert good.execute("select 9").fetchone()[0] == 9


def _broken(conn: psycopg.Connection) -> bool:
    try:
        conn.execute("select 1")
    except psycopg.Error:
        return True
    return False


def test_waiting_clients_are_handed_the_released_server_in_turn(pooler):
    """pool_size 1, the server held in a transaction: three clients queue for it. One leaves
    while waiting, one has session parameters of its own (the server must be synced before it
    is linked), one needs nothing; as the holder commits, each waiter that is still there
    gets the server in turn, with its own settings."""
    import socket

    from wire import read_until, startup_packet

    from pooler.protocol import build

    # no pool_timeout: the waiters wait for as long as the test takes to see them waiting
    # (SHOW POOLS is as new as the worker's last snapshot, a second at most: 3-4 s in all
    # with one core busy, more on a loaded box; a 10 s pool_timeout made that a race)
    p = pooler(make_config(route(pool="transaction", pool_size=1, pool_timeout=0)))

    def waiting() -> int:
        with p.connect("console", "admin") as conn:
            cur = conn.execute("show pools")
            names = [d.name for d in cur.description]
            rows = [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
        return sum(r["cl_waiting"] for r in rows if r["database"] == "p0")

    answers: dict[str, object] = {}

    def ask(name: str, conn: psycopg.Connection, query: str) -> None:
        try:
            answers[name] = conn.execute(query).fetchone()[0]
        except Exception as exc:  # reported by the assertion below
            answers[name] = exc

    with (
        p.connect("p0") as holder,
        p.connect("p0") as tokyo,
        p.connect("p0") as plain,
        socket.create_connection(("127.0.0.1", p.port), timeout=10) as leaver,
    ):
        tokyo.execute("set TimeZone = 'Asia/Tokyo'")
        holder.execute("begin")
        holder.execute("set local TimeZone = 'UTC'")
        leaver.sendall(startup_packet())
        read_until(leaver, b"Z")
        leaver.sendall(build.query("select 'leaver'"))
        wait_until(lambda: waiting() == 1, timeout=10)
        threads = [
            threading.Thread(target=ask, args=("tokyo", tokyo, "show TimeZone")),
            threading.Thread(target=ask, args=("plain", plain, "show TimeZone")),
        ]
        for t in threads:
            t.start()
        wait_until(lambda: waiting() == 3, timeout=10)
        leaver.close()
        wait_until(lambda: waiting() == 2, timeout=10)
        holder.execute("commit")
        for t in threads:
            t.join(patience(10))
        assert answers["tokyo"] == "Asia/Tokyo"
        assert answers["plain"] != "Asia/Tokyo"
        assert holder.execute("show TimeZone").fetchone()[0] != "Asia/Tokyo"
    assert p.sql("select 7", dbname="p0") == [(7,)]
