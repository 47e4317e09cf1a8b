"""psycopg 3 and asyncpg see the same through a session pool as directly (issue 14).

Each check runs against PostgreSQL itself and through `pooler serve` (session pool, and the
transaction pool where the behaviour does not depend on a session of one's own), and asserts
that the driver saw the same thing. The differences were found by running asyncpg 0.32's own
test suite through the pooler (tests/drivers/run_asyncpg_suite.py, docs/reliability.md).
"""

from __future__ import annotations

import asyncio
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
