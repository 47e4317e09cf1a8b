"""auth_query, hba_file, and storages with several hosts (target_session_attrs)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import psycopg
import pytest
from harness import (
    HOST,
    MD5_PW,
    MD5_USER,
    SCRAM_PW,
    SCRAM_USER,
    free_port,
    make_config,
    release_port,
    route,
    storage,
    wait_until,
)

from pooler.pgcluster import PgCluster

AUTH_QUERY = "SELECT usename, passwd FROM pg_shadow WHERE usename = $1"


def auth_query_config(method: str) -> str:
    internal = route(
        "postgres", "postgres", authentication="none", pool="session", pool_routing="internal"
    )
    users = route(
        "p0",
        "default",
        authentication=method,
        auth_query=AUTH_QUERY,
        auth_query_db="postgres",
        auth_query_user="postgres",
        pool="transaction",
        pool_size=4,
    )
    return make_config([internal, users])


@pytest.mark.parametrize(
    ("method", "user", "password"),
    [("scram-sha-256", SCRAM_USER, SCRAM_PW), ("md5", MD5_USER, MD5_PW)],
    ids=["scram", "md5"],
)
def test_auth_query_logs_users_in_with_their_stored_secret(pooler, method, user, password):
    p = pooler(auth_query_config(method))
    with p.connect("p0", user, password, prepare_threshold=None) as conn:
        assert conn.execute("select current_user").fetchone()[0] == user
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        p.connect("p0", user, "wrong")
    assert password not in p.log_text()


def test_auth_query_unknown_user_is_refused(pooler):
    p = pooler(auth_query_config("scram-sha-256"))
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        p.connect("p0", "nobody_here", "x")


def test_hba_file_denies_before_authentication(pooler, tmp_path):
    hba = tmp_path / "pooler_hba.conf"
    hba.write_text(f"host p1 all {HOST}/32 deny\nhost all all {HOST}/32 allow\n")
    p = pooler(make_config(route(), hba_file=str(hba)))
    with pytest.raises(psycopg.OperationalError, match="host based authentication rejected"):
        p.connect("p1")
    assert p.sql("select 1", dbname="p0") == [(1,)]


def _run_as_postgres(argv: list[str]) -> None:
    if os.geteuid() == 0:
        argv = ["runuser", "-u", "postgres", "--", *argv]
    subprocess.run(argv, check=True, capture_output=True, timeout=60)


@pytest.fixture
def standby(pg):
    """A streaming replica of the session PostgreSQL (pg_basebackup -R)."""
    base = Path(tempfile.mkdtemp(prefix="pooler-standby-"))
    if os.geteuid() == 0:
        shutil.chown(base, "postgres", "postgres")
    datadir = base / "data"
    _run_as_postgres(
        [
            pg.binary("pg_basebackup"),
            *("-h", HOST, "-p", str(pg.port), "-U", "postgres", "-D", str(datadir)),
            *("-R", "-X", "stream", "-c", "fast"),
        ]
    )
    port = free_port()
    replica = PgCluster(port, datadir=datadir, max_connections=300)
    replica.start()
    try:
        wait_until(lambda: replica.psql("select pg_is_in_recovery()").strip() == "t")
        yield replica
    finally:
        replica.stop()
        shutil.rmtree(base, ignore_errors=True)
        release_port(port)


def multi_host_config(tsa: str, hosts: str) -> str:
    return make_config(
        route("p0", "postgres", pool="transaction", pool_size=4, target_session_attrs=tsa),
        storages=storage(host=hosts, port=None),
    )


def in_recovery(p) -> bool:
    return p.sql("select pg_is_in_recovery()", dbname="p0")[0][0]


def test_target_session_attrs_picks_the_right_host(pooler, pg, standby):
    hosts = f"{HOST}:{standby.port},{HOST}:{pg.port}"
    primary = pooler(multi_host_config("read-write", hosts))
    assert [in_recovery(primary) for _ in range(4)] == [False] * 4
    replica = pooler(multi_host_config("read-only", hosts))
    assert [in_recovery(replica) for _ in range(4)] == [True] * 4
    anything = pooler(multi_host_config("any", hosts))
    assert anything.sql("select 1", dbname="p0") == [(1,)]
    standby.stop()  # the standby goes down: new servers of "any" land on the primary
    for _ in range(4):
        with anything.connect("p0") as conn, conn.transaction():
            assert conn.execute("select pg_is_in_recovery()").fetchone()[0] is False


def test_a_dead_host_is_skipped(pooler, pg):
    dead = free_port()  # nothing listens there: a host that is down
    try:
        p = pooler(multi_host_config("any", f"{HOST}:{dead},{HOST}:{pg.port}"))
        for _ in range(4):  # whichever host the round robin starts with, the live one serves
            with p.connect("p0") as conn, conn.transaction():
                assert conn.execute("select 1").fetchone()[0] == 1
    finally:
        release_port(dead)
