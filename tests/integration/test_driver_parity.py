"""psycopg 3 and asyncpg see the same through a session pool as directly (issue 14).

Each check runs against PostgreSQL itself and through `pooler serve` (session pool, and the
transaction pool where the behaviour does not depend on a session of one's own), and asserts
that the driver saw the same thing. The differences were found by running asyncpg 0.32's own
test suite through the pooler (tests/drivers/run_asyncpg_suite.py, docs/reliability.md).
"""

from __future__ import annotations

import asyncio
import datetime
import threading

import asyncpg
import psycopg
import pytest
from harness import HOST, make_config, patience, route

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def target(pg, pooler):
    """``target(mode) -> port``: PostgreSQL's own port for "direct", else a pooler's with
    one route of that pool mode."""

    def make(mode: str, pool_size: int = 2) -> int:
        if mode == "direct":
            return pg.port
        return pooler(make_config(route(pool=mode, pool_size=pool_size))).port

    return make


async def aconnect(port: int, **kw) -> asyncpg.Connection:
    return await asyncpg.connect(
        host=HOST, port=port, user="postgres", database="p0", timeout=patience(10), **kw
    )


@pytest.mark.parametrize("mode", ["direct", "session", "transaction"])
async def test_asyncpg_sees_client_encoding_as_postgresql_spells_it(target, mode):
    # asyncpg asks for client_encoding 'utf-8' (quotes included); PostgreSQL reports UTF8
    port = target(mode)
    for _ in range(2):  # the first login opens the server, the second reuses it
        con = await aconnect(port)
        try:
            assert con.get_settings().client_encoding == "UTF8"
            assert await con.fetchval("show client_encoding") == "UTF8"
        finally:
            await con.close()


@pytest.mark.parametrize("mode", ["direct", "session", "transaction"])
def test_psycopg_sees_client_encoding_as_postgresql_spells_it(target, mode):
    port = target(mode)
    for _ in range(2):
        with psycopg.connect(
            host=HOST, port=port, user="postgres", dbname="p0", client_encoding="utf-8"
        ) as con:
            assert con.info.parameter_status("client_encoding") == "UTF8"
            assert con.execute("show client_encoding").fetchone()[0] == "UTF8"


@pytest.mark.parametrize("mode", ["direct", "session", "transaction"])
async def test_asyncpg_gets_postgresql_reason_when_its_backend_is_terminated(target, pg, mode):
    port = target(mode)
    con = await aconnect(port)
    try:
        pid = await con.fetchval("select pg_backend_pid()")
        sleeping = asyncio.ensure_future(con.execute("select pg_sleep(60)"))
        await _wait_active(pg, pid)
        pg.psql(f"select pg_terminate_backend({pid})", db="p0")
        with pytest.raises(asyncpg.ConnectionDoesNotExistError, match="terminating connection"):
            await asyncio.wait_for(sleeping, patience(10))
        assert isinstance(sleeping.exception().__cause__, asyncpg.AdminShutdownError)
    finally:
        con.terminate()


@pytest.mark.parametrize("mode", ["direct", "session"])  # (transaction: the idle client
def test_psycopg_gets_postgresql_reason_when_its_backend_is_terminated(target, pg, mode):
    # holds no server: the one terminated is another's or idle, and the client goes on)
    port = target(mode)
    with psycopg.connect(host=HOST, port=port, user="postgres", dbname="p0") as con:
        con.autocommit = True
        pid = con.execute("select pg_backend_pid()").fetchone()[0]
        pg.psql(f"select pg_terminate_backend({pid})", db="p0")
        with pytest.raises(psycopg.OperationalError) as caught:
            con.execute("select 1")
        assert "terminating connection due to administrator command" in str(caught.value)
        assert "pooler" not in str(caught.value)


async def _wait_active(pg, pid: int) -> None:
    """Until backend `pid` runs a query (pg_stat_activity)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + patience(10)
    while loop.time() < deadline:
        out = pg.psql(f"select state from pg_stat_activity where pid = {pid}", db="p0")
        if "active" in out:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"backend {pid} never became active")


@pytest.mark.parametrize("mode", ["direct", "session", "transaction"])
async def test_asyncpg_prepares_afresh_after_ddl_elsewhere(target, pg, mode):
    # asyncpg prepares with Parse, Describe, Flush (no Sync). Through a transaction pool the
    # route's server may hold a copy of the same text from before an ALTER made elsewhere: a
    # new client's prepare must not get that copy's "cached plan must not change result type"
    port = target(mode, pool_size=1)  # (one server: the copy is there)
    pg.psql("create table parity_ddl(a int, b int); insert into parity_ddl values (1, 2)", "p0")
    try:
        first = await aconnect(port)
        try:
            assert await first.fetchrow("select * from parity_ddl") == (1, 2)
        finally:
            await first.close()
        pg.psql("alter table parity_ddl alter column b set data type text", "p0")
        for _ in range(2):
            con = await aconnect(port)
            try:
                assert await con.fetchrow("select * from parity_ddl") == (1, "2")
                assert await con.fetchrow("select * from parity_ddl") == (1, "2")
            finally:
                await con.close()
    finally:
        pg.psql("drop table parity_ddl", "p0")


@pytest.mark.parametrize("mode", ["direct", "session", "transaction"])
async def test_asyncpg_is_described_the_parameter_types_postgresql_infers_now(target, pg, mode):
    # A prepared statement keeps the parameter types PostgreSQL inferred at its Parse. Through
    # a transaction pool a new client's Parse of `insert into t values ($1)` may land on a
    # server's copy parsed when the column was a date: after the table is made again with a
    # time column (elsewhere), asyncpg must be described `$1 time`, as by a fresh Parse
    # directly, not the copy's `$1 date` (it encodes its argument by what it is told: a
    # time would not even encode as a date). asyncpg's test_custom_codec_override_tuple.
    port = target(mode, pool_size=1)  # (one server: the copy is there)
    pg.psql("create table parity_types (v date)", "p0")
    try:
        first = await aconnect(port)
        try:
            await first.execute("insert into parity_types values ($1)", datetime.date(2000, 1, 4))
        finally:
            await first.close()
        pg.psql("drop table parity_types; create table parity_types (v time)", "p0")
        for _ in range(2):  # (the second client lands on the copy the first one left)
            con = await aconnect(port)
            try:
                stmt = await con.prepare("insert into parity_types values ($1)")
                assert [t.name for t in stmt.get_parameters()] == ["time"]
                await stmt.fetch(datetime.time(0, 1))
                assert await con.fetchval("select count(*) from parity_types") >= 1
            finally:
                await con.close()
    finally:
        pg.psql("drop table parity_types", "p0")


@pytest.mark.parametrize("mode", ["direct", "transaction"])
async def test_asyncpg_binds_on_no_copy_older_than_the_one_it_was_described(target, pg, mode):
    # Two servers, each with a copy of `insert into t values ($1)` parsed when the column
    # was a date. After the table is made again with a time column, a client is described
    # `$1 time` on one server (a fresh copy), and binds its time, in a later transaction,
    # on the other server: never on its older copy (`$1 date`: "incorrect binary data
    # format in bind parameter 1"). asyncpg does this by itself when its prepare is ended
    # by the Close and Sync of an older statement (test_custom_codec_override_tuple).
    port = target(mode, pool_size=2)
    pg.psql("create table parity_types2 (v date)", "p0")
    try:
        cons = [await aconnect(port) for _ in range(2)]
        try:
            async with cons[0].transaction(), cons[1].transaction():  # (two servers)
                for con in cons:
                    await con.execute(
                        "insert into parity_types2 values ($1)", datetime.date.today()
                    )
        finally:
            for con in cons:
                await con.close()
        pg.psql("drop table parity_types2; create table parity_types2 (v time)", "p0")
        con, other = await aconnect(port), await aconnect(port)
        try:
            async with con.transaction():
                described_on = await con.fetchval("select pg_backend_pid()")
                stmt = await con.prepare("insert into parity_types2 values ($1)")
            assert [t.name for t in stmt.get_parameters()] == ["time"]
            elsewhere = 0  # binds while the other client holds the server it was described on
            for i in range(40):
                async with other.transaction():
                    held = await other.fetchval("select pg_backend_pid()")
                    await stmt.fetch(datetime.time(0, i))
                elsewhere += held == described_on
                if elsewhere == 2:
                    break
            assert elsewhere == 2 or mode == "direct"
            assert await con.fetchval("select count(*) from parity_types2") == i + 1
        finally:
            await con.close()
            await other.close()
    finally:
        pg.psql("drop table parity_types2", "p0")


@pytest.mark.parametrize("mode", ["direct", "session"])
async def test_asyncpg_server_pid_is_the_backend_own(target, pg, mode):
    # what pg_backend_pid(), pg_stat_activity, NOTIFY and pg_terminate_backend name
    port = target(mode)
    a, b = await aconnect(port), await aconnect(port)
    try:
        assert await a.fetchval("select pg_backend_pid()") == a.get_server_pid()
        heard: asyncio.Queue = asyncio.Queue()
        await a.add_listener("parity", lambda *args: heard.put_nowait(args[1:]))
        await b.execute("notify parity, 'hi'")
        assert await asyncio.wait_for(heard.get(), patience(5)) == (
            b.get_server_pid(),
            "parity",
            "hi",
        )
        await a.execute("notify parity, 'me'")
        assert await asyncio.wait_for(heard.get(), patience(5)) == (
            a.get_server_pid(),
            "parity",
            "me",
        )
        ended = asyncio.Event()
        b.add_termination_listener(lambda _con: ended.set())
        assert await a.fetchval("select pg_terminate_backend($1)", b.get_server_pid())
        await asyncio.wait_for(ended.wait(), patience(10))
        assert b.is_closed()
    finally:
        a.terminate()
        b.terminate()


def test_cancel_reaches_session_clients_of_every_worker(pooler):
    # a session-pool client's BackendKeyData is its server's pid: the worker that owns it is
    # in the secret, and a CancelRequest landing on the other worker is forwarded there
    p = pooler(make_config(route(pool="session"), workers=2))
    for _ in range(6):
        with psycopg.connect(p.dsn("p0")) as con:
            con.autocommit = True
            pid = con.execute("select pg_backend_pid()").fetchone()[0]
            assert con.info.backend_pid == pid
            timer = threading.Timer(0.3, con.cancel)
            timer.start()
            try:
                with pytest.raises(psycopg.errors.QueryCanceled):
                    con.execute("select pg_sleep(30)")
            finally:
                timer.cancel()
            assert con.execute("select 1").fetchone()[0] == 1
