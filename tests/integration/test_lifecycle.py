"""The link between a client and a server (issue 14): what one client leaves on a server
never reaches the next, a paused server is resumed when it leaves its client, statement
pools refuse transaction blocks, startup `options` are honoured, any cancel packet is
handled, and a message still arriving keeps its server."""

from __future__ import annotations

import socket
import struct

import asyncpg
import psycopg
import psycopg.errors
import pytest
from harness import HOST, make_config, route, wait_until
from wire import read_to_eof, read_until, startup_packet


def backend_pid(conn: psycopg.Connection) -> int:
    return conn.execute("select pg_backend_pid()").fetchone()[0]


# --- fault 0: a session pool is invisible ----------------------------------------------


def test_session_pool_gives_the_next_client_a_fresh_session(pooler):
    p = pooler(make_config(route(pool="session", pool_size=1)))
    with p.connect("p0") as a:
        pid = backend_pid(a)
        a.execute("set app.tenant = '42'")
        a.execute("prepare p as select 1")
        a.execute("create temp table mine (x int)")
        a.execute("listen somewhere")
        a.execute("set default_transaction_read_only = on")
        a.execute("set client_encoding = 'LATIN1'")
    with p.connect("p0") as b:
        assert backend_pid(b) == pid  # the same server, reset
        assert b.execute("select current_setting('app.tenant', true)").fetchone()[0] in (None, "")
        assert b.execute("select count(*) from pg_prepared_statements").fetchone()[0] == 0
        assert b.execute("show default_transaction_read_only").fetchone()[0] == "off"
        assert b.execute("show client_encoding").fetchone()[0] == "UTF8"
        assert b.info.encoding == "utf-8"
        assert b.execute("select count(*) from pg_listening_channels()").fetchone()[0] == 0
        assert b.execute("select to_regclass('pg_temp.mine')").fetchone()[0] is None
        b.execute("create temp table mine (x int)")  # not read-only


def test_session_pool_applies_the_next_clients_startup_parameters(pooler):
    p = pooler(make_config(route(pool="session", pool_size=1)))
    with p.connect("p0", application_name="first") as a:
        pid = backend_pid(a)
        a.execute("set TimeZone = 'Asia/Tokyo'")
        a.execute("set application_name = 'changed'")
    with p.connect("p0", application_name="second") as b:
        assert backend_pid(b) == pid
        assert b.execute("show application_name").fetchone()[0] == "second"
        assert b.execute("show TimeZone").fetchone()[0] != "Asia/Tokyo"
        assert b.info.parameter_status("application_name") == "second"


WORKLOAD_TABLE = "lifecycle_w"
# A custom setting another client defined on the server reads '' after the reset where a
# fresh backend says NULL (PostgreSQL cannot forget a placeholder; pgbouncer alike): the
# value is gone, which is what matters.
TENANT = "select coalesce(current_setting('app.tenant', true), '')"


def psycopg_workload(dsn: str) -> list[object]:
    """Clients one after the other, each preparing statements (psycopg prepares a query it
    runs 5 times as `_pg3_N`, numbered per connection), setting session state and changing
    the schema under its prepared statements. The transcript: results or error classes."""
    out: list[object] = []

    def step(conn: psycopg.Connection, sql: str, params: object = None) -> None:
        try:
            cur = conn.execute(sql, params)
            out.append(cur.fetchall() if cur.description else cur.statusmessage)
        except psycopg.Error as exc:
            out.append(type(exc).__name__)

    for round_ in range(3):
        with psycopg.connect(dsn, autocommit=True) as conn:
            out.append(conn.info.encoding)
            step(conn, TENANT)
            step(conn, "show default_transaction_read_only")
            step(conn, "select count(*) from pg_prepared_statements")
            step(conn, f"create table if not exists {WORKLOAD_TABLE} (id int, v text)")
            for i in range(8):
                step(conn, f"insert into {WORKLOAD_TABLE} values (%s, %s)", (i, f"r{round_}"))
                step(conn, f"select id, v from {WORKLOAD_TABLE} where id = %s", (i,))
            step(conn, f"alter table {WORKLOAD_TABLE} add column extra int default 7")
            step(conn, f"select * from {WORKLOAD_TABLE} where id = %s", (1,))
            step(conn, f"alter table {WORKLOAD_TABLE} drop column extra")
            step(conn, f"select * from {WORKLOAD_TABLE} where id = %s", (1,))
            step(conn, "select %s::text", ("é",))
            step(conn, "set app.tenant = '42'")
            step(conn, "set client_encoding = 'LATIN1'")
            step(conn, "set default_transaction_read_only = on")
    with psycopg.connect(dsn, autocommit=True) as conn:
        step(conn, f"drop table {WORKLOAD_TABLE}")
    return out


async def asyncpg_workload(dsn: str) -> list[object]:
    """The same with asyncpg (its statement cache names statements per connection)."""
    out: list[object] = []

    async def step(conn: asyncpg.Connection, sql: str, *args: object) -> None:
        try:
            rows = await conn.fetch(sql, *args)
            out.append([tuple(r) for r in rows])
        except asyncpg.PostgresError as exc:
            out.append(type(exc).__name__)

    for round_ in range(3):
        conn = await asyncpg.connect(dsn)
        try:
            await step(conn, TENANT)
            await step(conn, "show default_transaction_read_only")
            await step(conn, "select count(*) from pg_prepared_statements")
            await step(conn, f"create table if not exists {WORKLOAD_TABLE} (id int, v text)")
            for i in range(5):
                await step(conn, f"insert into {WORKLOAD_TABLE} values ($1, $2)", i, f"r{round_}")
                await step(conn, f"select id, v from {WORKLOAD_TABLE} where id = $1", i)
            await step(conn, f"alter table {WORKLOAD_TABLE} add column extra int default 7")
            await step(conn, f"select * from {WORKLOAD_TABLE} where id = $1", 1)
            await step(conn, f"alter table {WORKLOAD_TABLE} alter column extra type text")
            await step(conn, f"select * from {WORKLOAD_TABLE} where id = $1", 1)
            await step(conn, f"alter table {WORKLOAD_TABLE} drop column extra")
            await step(conn, f"select * from {WORKLOAD_TABLE} where id = $1", 1)
            await step(conn, "set app.tenant = '42'")
            await step(conn, "set default_transaction_read_only = on")
        finally:
            await conn.close()
    conn = await asyncpg.connect(dsn)
    await step(conn, f"drop table {WORKLOAD_TABLE}")
    await conn.close()
    return out


def pooler_dsn(p, **extra) -> str:
    return p.dsn("p0", **extra)


@pytest.mark.timeout(120)
def test_psycopg_through_a_session_pool_is_indistinguishable_from_direct(pooler, pg):
    direct = psycopg_workload(pg.dsn(dbname="p0"))
    p = pooler(make_config(route(pool="session", pool_size=1)))
    pooled = psycopg_workload(pooler_dsn(p))
    assert pooled == direct


@pytest.mark.timeout(120)
async def test_asyncpg_through_a_session_pool_is_indistinguishable_from_direct(pooler, pg):
    direct = await asyncpg_workload(f"postgresql://postgres@{HOST}:{pg.port}/p0")
    p = pooler(make_config(route(pool="session", pool_size=1)))
    pooled = await asyncpg_workload(f"postgresql://postgres@{HOST}:{p.port}/p0")
    assert pooled == direct


# --- fault 2: a server paused by a slow client is resumed when it leaves it -------------


def test_a_server_paused_by_a_slow_client_is_resumed_when_the_client_leaves(pooler, pg):
    p = pooler(make_config(route(pool="transaction", pool_size=1, pool_discard=False)))
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.connect((HOST, p.port))
    slow.sendall(startup_packet("postgres", "p0", application_name="slow"))
    read_until(slow, b"Z")
    query = b"select repeat('x', 1000) from generate_series(1, 200000)\0"
    slow.sendall(b"Q" + struct.pack("!i", len(query) + 4) + query)
    with psycopg.connect(pg.dsn(dbname="p0"), autocommit=True) as watch:

        def writing_blocked() -> int | None:
            row = watch.execute(
                "select pid from pg_stat_activity "
                "where wait_event = 'ClientWrite' and query like 'select repeat%'"
            ).fetchone()
            return row[0] if row else None

        pid = wait_until(writing_blocked, timeout=30)
    slow.close()  # without reading: the pooler has paused reading from the server
    with p.connect("p0") as b:
        assert backend_pid(b) == pid  # the server was brought back in step, not closed
    assert not p.log_contains("reset failed")


# --- fault 3: statement pools refuse transaction blocks ---------------------------------


@pytest.fixture
def counter_table(pg):
    pg.psql("create table stmt_counter (x int); insert into stmt_counter values (1)", db="p0")
    yield
    pg.psql("drop table stmt_counter", db="p0")


def test_statement_pool_refuses_transaction_blocks(pooler, pg, counter_table):
    p = pooler(make_config(route(pool="statement", pool_size=1)))
    with p.connect("p0") as a:
        for sql in ("begin", "START TRANSACTION", "/* c */ begin isolation level serializable"):
            with pytest.raises(psycopg.errors.FeatureNotSupported, match="statement pooling"):
                a.execute(sql)
        # a multi-statement query leaving a transaction open: refused and rolled back
        with pytest.raises(psycopg.errors.FeatureNotSupported, match="transaction blocks"):
            a.execute("begin; update stmt_counter set x = 2")
        assert a.execute("select 1").fetchone()[0] == 1  # the client goes on
        assert a.execute("select x from stmt_counter").fetchone()[0] == 1
    with (
        p.connect("p0", autocommit=False) as c,  # a driver's implicit BEGIN
        pytest.raises(psycopg.errors.FeatureNotSupported),
    ):
        c.execute("update stmt_counter set x = 3")
    assert pg.psql("select x from stmt_counter", db="p0").split()[-1] == "1"


async def test_statement_pool_refuses_an_extended_batch_opening_a_transaction(
    pooler, counter_table
):
    p = pooler(make_config(route(pool="statement", pool_size=1)))
    conn = await asyncpg.connect(f"postgresql://postgres@{HOST}:{p.port}/p0")
    try:
        with pytest.raises(asyncpg.FeatureNotSupportedError, match="statement pooling"):
            await conn.fetch("begin")
        with pytest.raises(asyncpg.FeatureNotSupportedError):
            async with conn.transaction():
                await conn.execute("update stmt_counter set x = 4")
        assert await conn.fetchval("select x from stmt_counter") == 1
        assert await conn.fetchval("select $1::int", 5) == 5
    finally:
        await conn.close()


# --- fault 4: startup options -----------------------------------------------------------


@pytest.fixture
def schema_s1(pg):
    pg.psql("create schema s1; create table s1.t (x int); create table public.t (x int)", db="p0")
    yield
    pg.psql("drop schema s1 cascade; drop table public.t", db="p0")


@pytest.mark.parametrize("pool", ["session", "transaction", "statement"])
def test_startup_options_become_session_parameters(pooler, pg, schema_s1, pool):
    p = pooler(make_config(route(pool=pool, pool_size=2)))
    options = r"-c search_path=s1 --statement-timeout=12345 -capp.tenant=a\ b"
    with p.connect("p0", options=options) as a, p.connect("p0") as other:
        for _ in range(3):  # whichever server it is linked to
            a.execute("insert into t values (1)")
            assert a.execute("show search_path").fetchone()[0] == "s1"
            assert a.execute("show statement_timeout").fetchone()[0] == "12345ms"
            assert a.execute("select current_setting('app.tenant')").fetchone()[0] == "a b"
            assert other.execute("show search_path").fetchone()[0] != "s1"
    assert pg.psql("select count(*) from s1.t", db="p0").split()[-1] == "3"
    assert pg.psql("select count(*) from public.t", db="p0").split()[-1] == "0"


@pytest.mark.parametrize("pool", ["session", "transaction"])
@pytest.mark.parametrize(
    ("options", "message"),
    [
        ("-c no_such_setting=1", "no_such_setting"),
        ("-B 100", "unsupported startup option"),
        ("-c search_path", "unsupported startup option"),
    ],
)
def test_startup_options_that_cannot_be_honoured_refuse_the_login(pooler, pool, options, message):
    p = pooler(make_config(route(pool=pool, pool_size=2)))
    with pytest.raises(psycopg.OperationalError, match=message):
        p.connect("p0", options=options)
    with p.connect("p0") as c:
        assert c.execute("select 1").fetchone()[0] == 1


# --- fault 5: forged CancelRequests ----------------------------------------------------


@pytest.mark.parametrize("secret", [2**31, 2**32 - 1, 0])
def test_any_cancel_packet_is_handled(pooler, secret):
    p = pooler(make_config(route(pool="session"), listen={"client_login_timeout": 60000}))
    with socket.socket() as victim:
        victim.connect((HOST, p.port))
        victim.sendall(startup_packet("postgres", "p0"))
        messages = read_until(victim, b"Z")
        pid, _ = struct.unpack("!II", next(b for t, b in messages if t == ord("K")))
        for forged_pid in (pid, 2**32 - 1, 2**31):
            with socket.socket() as attacker:
                attacker.connect((HOST, p.port))
                attacker.sendall(struct.pack("!IIII", 16, 80877102, forged_pid, secret))
                assert read_to_eof(attacker, timeout=20) == b""  # closed at once, not at 60 s
    assert not p.log_contains("Traceback|OverflowError|failed:")
    p.assert_log_clean()


# --- fault 7: a message still arriving keeps its server ---------------------------------


def test_a_large_query_arriving_in_many_reads_costs_one_reset(pooler, pg):
    pg.psql("create sequence lifecycle_resets", db="p0")
    try:
        p = pooler(
            make_config(
                route(
                    pool="transaction",
                    pool_size=1,
                    pool_discard=False,
                    pool_discard_query="select nextval('lifecycle_resets')",
                )
            )
        )
        with p.connect("p0") as a:
            a.execute("select 1")  # the route's first login is behind us

            def resets() -> int:
                return int(
                    pg.psql(
                        "select case when is_called then last_value else 0 end "
                        "from lifecycle_resets",
                        db="p0",
                    ).split()[-1]
                )

            wait_until(lambda: resets() >= 1, timeout=20)
            before = resets()
            literal = "x" * (8 << 20)
            assert a.execute(f"select length('{literal}')").fetchone()[0] == 8 << 20
            assert a.execute("select 2").fetchone()[0] == 2  # after the big one's reset
        assert resets() - before <= 2
    finally:
        pg.psql("drop sequence lifecycle_resets", db="p0")
