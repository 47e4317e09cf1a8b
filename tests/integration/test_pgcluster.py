"""PgCluster against a real server: initdb, start, psql, roles, restart, cleanup."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from harness import free_port, release_port

from pooler.pgcluster import (
    PgCluster,
    PgError,
    PgNotInstalledError,
    find_bindir,
    port_is_free,
)
from pooler.sql import quote_literal


def _have_pg() -> bool:
    try:
        find_bindir()
    except PgNotInstalledError:
        return False
    return True


needs_pg = pytest.mark.skipif(
    not _have_pg() and not os.environ.get("CI"), reason="PostgreSQL server binaries not installed"
)


@pytest.fixture(scope="module")
def cluster() -> Iterator[PgCluster]:
    """A cluster of this module's own (restarted by the tests, so not the session `pg`)."""
    port = free_port()
    try:
        with PgCluster(port, max_connections=50, settings={"log_connections": True}) as c:
            yield c
    finally:
        release_port(port)


# -- a real server ----------------------------------------------------------------------


@pytest.mark.pg
@needs_pg
def test_start_and_psql(cluster: PgCluster) -> None:
    assert cluster.is_running()
    assert cluster.psql("select 1, 'a'; select 2") == "1|a\n2"
    assert cluster.psql("show fsync") == "off"
    assert cluster.psql("show max_connections") == "50"
    assert cluster.psql("show listen_addresses") == "127.0.0.1"
    assert (cluster.socket_dir / f".s.PGSQL.{cluster.port}").exists()


@pytest.mark.pg
@needs_pg
def test_psql_error_is_raised_with_message(cluster: PgCluster) -> None:
    with pytest.raises(PgError, match="no_such_table"):
        cluster.psql("select * from no_such_table")


@pytest.mark.pg
@needs_pg
@pytest.mark.parametrize(
    ("method", "stored"),
    [("scram-sha-256", "SCRAM-SHA-256$"), ("md5", "md5"), ("password", "SCRAM")],
)
def test_create_role_and_login(cluster: PgCluster, method: str, stored: str) -> None:
    name = f"r_{method.replace('-', '_')}"
    cluster.create_role(name, "s3cret'pw", method)
    assert cluster.psql(
        f"select rolpassword from pg_authid where rolname = {quote_literal(name)}"
    ).startswith(stored)
    offset = len(cluster.log_text().encode())
    with psycopg.connect(cluster.dsn("postgres", name, "s3cret'pw")) as conn:
        assert conn.execute("select current_user").fetchone() == (name,)
    # log_connections names the method of the pg_hba rule that matched
    assert f'identity="{name}" method={method}' in cluster.log_text(offset)
    with pytest.raises(psycopg.OperationalError, match="authentication failed"):
        psycopg.connect(cluster.dsn("postgres", name, "wrong"))


@pytest.mark.pg
@needs_pg
def test_create_database_with_keyword_name(cluster: PgCluster) -> None:
    cluster.create_role("order_owner", "pw")
    cluster.create_database("order", owner="order_owner")
    cluster.psql("create table t(x int); insert into t values (1), (2);", db="order")
    assert cluster.psql("select sum(x) from t", db="order") == "3"
    assert (
        cluster.psql("select pg_get_userbyid(datdba) from pg_database where datname = 'order'")
        == "order_owner"
    )


@pytest.mark.pg
@needs_pg
def test_restart_keeps_data(cluster: PgCluster) -> None:
    cluster.psql("create table if not exists kept(x int); insert into kept values (42);")
    pid = cluster.psql("select pg_backend_pid()")
    cluster.restart()
    assert cluster.is_running()
    assert cluster.psql("select x from kept") == "42"
    assert cluster.psql("select pg_backend_pid()") != pid


@pytest.mark.pg
@needs_pg
def test_stop_start_and_remove() -> None:
    port = free_port()
    try:
        pg = PgCluster(port)
        pg.init()
        assert (pg.datadir / "PG_VERSION").exists()
        pg.start()
        assert not port_is_free(port)
        pg.stop()
        assert not pg.is_running()
        pg.stop()  # idempotent
        pg.start()
        assert pg.psql("select 1") == "1"
        basedir = pg.basedir
        pg.remove()
        assert not basedir.exists()
        assert port_is_free(port)
        pg.remove()  # idempotent
    finally:
        release_port(port)


@pytest.mark.pg
@needs_pg
def test_start_failure_shows_server_log() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        pg = PgCluster(s.getsockname()[1])
        try:
            with pytest.raises(PgError, match=r"(?s)pg_ctl start failed.*server log.*could not"):
                pg.start()
        finally:
            pg.remove()


@pytest.mark.pg
@needs_pg
def test_given_datadir_is_kept_and_reusable() -> None:
    parent = Path(tempfile.mkdtemp(prefix="pooler-pgtest-"))
    parent.chmod(0o755)  # as root, the postgres OS user must reach it
    port = free_port()
    try:
        datadir = parent / "data"
        with PgCluster(port, datadir=datadir) as pg:
            pg.psql("create table kept(x int); insert into kept values (7);")
        assert (datadir / "PG_VERSION").exists()
        with PgCluster(port, datadir=datadir) as pg:  # a new object: no initdb, new socket dir
            assert pg.psql("select x from kept") == "7"
            assert (pg.socket_dir / f".s.PGSQL.{port}").exists()
    finally:
        release_port(port)
        shutil.rmtree(parent, ignore_errors=True)
