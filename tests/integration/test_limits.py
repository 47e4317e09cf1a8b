"""Limits and timers (odyssey reference §1.8, §2.7) through a real `pooler serve`.

Server connections are observed in PostgreSQL's pg_stat_activity (by backend pid, or by a
role only this test uses); every wait is a harness.wait_until, never a fixed sleep.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading

import psycopg
import pytest
from harness import (
    HOST,
    MD5_PW,
    MD5_USER,
    PLAIN_PW,
    PLAIN_USER,
    make_config,
    patience,
    route,
    wait_until,
)


def startup_error(port: int, database: str, user: str) -> dict[str, str]:
    """A raw v3 startup; the fields of the ErrorResponse that answers it."""
    body = struct.pack("!i", 196608)
    for key, value in (("user", user), ("database", database)):
        body += key.encode() + b"\0" + value.encode() + b"\0"
    body += b"\0"
    data = b""
    with socket.create_connection((HOST, port), timeout=5) as sock:
        with contextlib.suppress(OSError):  # refused early: the error is already waiting
            sock.sendall(struct.pack("!i", len(body) + 4) + body)
        while len(data) < 5 or len(data) < 1 + struct.unpack("!i", data[1:5])[0]:
            try:
                chunk = sock.recv(4096)
            except ConnectionResetError:
                break
            if not chunk:
                break
            data += chunk
    assert data[:1] == b"E", f"expected an ErrorResponse, got {data!r}"
    fields = {}
    for part in data[5:].split(b"\0"):
        if part:
            fields[chr(part[0])] = part[1:].decode()
    return fields


def pids_of(pg, where: str) -> set[int]:
    out = pg.psql(f"select pid from pg_stat_activity where {where}")
    return {int(line) for line in out.split()}


def backend_pid(conn: psycopg.Connection) -> int:
    return conn.execute("select pg_backend_pid()").fetchone()[0]


def alive(pg, pid: int) -> bool:
    return bool(pids_of(pg, f"pid = {pid}"))


def _works(p, **kw) -> bool:
    try:
        return p.sql("select 1", **kw) == [(1,)]
    except psycopg.OperationalError:
        return False


# -- client_max --------------------------------------------------------------------------


def test_global_client_max(pooler):
    p = pooler(make_config(route(), client_max=2))
    a = p.connect("p0")
    b = p.connect("p0")
    try:
        fields = startup_error(p.port, "p0", "postgres")
        assert fields["S"] == "FATAL"
        assert fields["C"] == "53300"
        assert fields["M"].endswith("too many tcp connections (global client_max 2)")
        with pytest.raises(psycopg.OperationalError, match=r"global client_max 2"):
            p.connect("p1")
        assert a.execute("select 1").fetchone()[0] == 1
    finally:
        a.close()
    try:
        # a freed slot can be used again
        wait_until(lambda: _works(p, dbname="p1"), timeout=5)
        assert b.execute("select 2").fetchone()[0] == 2
    finally:
        b.close()


def test_route_client_max(pooler):
    p = pooler(make_config([route("p0", client_max=1), route("default")]))
    with p.connect("p0") as first:
        fields = startup_error(p.port, "p0", "postgres")
        assert fields["S"] == "FATAL"
        assert fields["C"] == "53300"
        assert fields["M"].endswith(
            "too many client tcp connections (client_max for user p0.postgres 1)"
        )
        with pytest.raises(psycopg.OperationalError, match=r"client_max for user p0\.postgres 1"):
            p.connect("p0")
        # another rule is not limited by it
        with p.connect("p1") as other1, p.connect("p1") as other2:
            assert other1.execute("select 1").fetchone()[0] == 1
            assert other2.execute("select 1").fetchone()[0] == 1
        assert first.execute("select 1").fetchone()[0] == 1
    wait_until(lambda: _works(p, dbname="p0"), timeout=5)


def test_route_client_max_counts_failed_logins_out(pooler):
    # refused clients must not eat the route's slots
    p = pooler(make_config(route("p0", client_max=1)))
    with p.connect("p0"):
        for _ in range(3):
            with pytest.raises(psycopg.OperationalError, match="client_max"):
                p.connect("p0")
    wait_until(lambda: _works(p, dbname="p0"), timeout=5)
    with p.connect("p0") as again:
        assert again.execute("select 1").fetchone()[0] == 1


# -- pool_size and pool_timeout ---------------------------------------------------------


def test_pool_timeout_session_pool(pooler):
    p = pooler(make_config(route("p0", pool="session", pool_size=1, pool_timeout=300)))
    with p.connect("p0") as holder:
        fields = startup_error(p.port, "p0", "postgres")
        assert fields["S"] == "FATAL"
        assert fields["C"] == "53300"
        assert fields["M"].endswith(
            "too many active clients for user (pool_size for user p0.postgres reached 1)"
        )
        assert holder.execute("select 1").fetchone()[0] == 1
    p.wait_for_log("server pool wait timed out")
    with p.connect("p0") as next_client:
        assert next_client.execute("select 1").fetchone()[0] == 1


def test_pool_timeout_transaction_pool(pooler):
    p = pooler(make_config(route("p0", pool="transaction", pool_size=1, pool_timeout=300)))
    with p.connect("p0") as a, p.connect("p0") as b:
        a.execute("begin")
        with pytest.raises(
            psycopg.OperationalError,
            match=r"too many active clients for user \(pool_size for user p0\.postgres reached 1\)",
        ) as info:
            b.execute("select 1")
        assert info.value.sqlstate == "53300"
        a.execute("commit")


def test_pool_size_is_respected(pooler, pg):
    p = pooler(
        make_config(
            route(
                "p1",
                authentication="none",
                pool="transaction",
                pool_size=2,
                storage_user=MD5_USER,
                storage_password=MD5_PW,
            )
        )
    )
    seen: set[int] = set()
    errors: list[BaseException] = []
    peak = [0]
    done = threading.Event()

    def client() -> None:
        try:
            with p.connect("p1", "anyone") as conn:
                for _ in range(3):
                    row = conn.execute("select pg_backend_pid(), pg_sleep(0.05)").fetchone()
                    seen.add(row[0])
        except BaseException as exc:
            errors.append(exc)

    def watch() -> None:
        while not done.is_set():
            n = len(pids_of(pg, f"datname = 'p1' and usename = '{MD5_USER}'"))
            peak[0] = max(peak[0], n)

    watcher = threading.Thread(target=watch)
    watcher.start()
    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(patience(20))
    done.set()
    watcher.join(10)
    assert not errors, errors
    assert 1 <= len(seen) <= 2
    assert peak[0] <= 2
    assert len(pids_of(pg, f"datname = 'p1' and usename = '{MD5_USER}'")) <= 2


# -- client timers -----------------------------------------------------------------------


def test_pool_client_idle_timeout_drops_idle_client(pooler):
    p = pooler(make_config(route("p0", pool="session", pool_client_idle_timeout=1)))
    with p.connect("p0") as idle:
        assert idle.execute("select 1").fetchone()[0] == 1
        p.wait_for_log(r"idle timeout", timeout=6)
        with pytest.raises(psycopg.OperationalError, match="idle timeout"):
            idle.execute("select 1")
    with p.connect("p0") as fresh:
        assert fresh.execute("select 1").fetchone()[0] == 1


def test_busy_client_outlives_pool_client_idle_timeout(pooler):
    p = pooler(make_config(route("p0", pool="transaction", pool_client_idle_timeout=1)))
    with p.connect("p0") as idle, p.connect("p0") as busy:
        idle.execute("select 1")

        def idle_dropped() -> bool:
            assert busy.execute("select 1").fetchone()[0] == 1
            return p.log_contains(r"idle timeout")

        wait_until(idle_dropped, timeout=6, interval=0.2)
        assert busy.execute("select 3").fetchone()[0] == 3
        with pytest.raises(psycopg.OperationalError):
            idle.execute("select 1")


@pytest.mark.parametrize("pool", ["session", "transaction"])
def test_pool_idle_in_transaction_timeout_rolls_back(pooler, pg, pool):
    table = f"idle_xact_{pool}"
    pg.psql(f"create table {table} (x int)", db="p2")
    try:
        p = pooler(
            make_config(route("p2", pool=pool, pool_size=1, pool_idle_in_transaction_timeout=1))
        )
        a = p.connect("p2")
        pid = backend_pid(a)
        a.execute("begin")
        a.execute(f"insert into {table} values (1)")
        assert pids_of(pg, f"pid = {pid} and state = 'idle in transaction'")
        p.wait_for_log(r"idle transaction timeout|idle in transaction", timeout=6)
        with pytest.raises(psycopg.Error, match="timeout"):
            a.execute("commit")
        a.close()
        # the server was rolled back (or closed), never left idle in transaction
        wait_until(
            lambda: not pids_of(pg, f"pid = {pid} and state <> 'idle'"),
            timeout=5,
            message="the dropped client's server to leave its transaction",
        )
        assert pg.psql(f"select count(*) from {table}", db="p2") == "0"
        with p.connect("p2") as b:
            assert b.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
            assert b.execute(f"select count(*) from {table}").fetchone()[0] == 0
    finally:
        pg.psql(f"drop table {table}", db="p2")


# -- server timers -----------------------------------------------------------------------


@pytest.mark.parametrize("key", ["server_lifetime", "pool_ttl"])
def test_idle_server_is_closed(pooler, pg, key):
    p = pooler(make_config(route("p1", pool="session", **{key: 1})))
    with p.connect("p1") as conn:
        pid = backend_pid(conn)
    assert alive(pg, pid)  # kept idle in the pool after the client left
    wait_until(lambda: not alive(pg, pid), timeout=6, message=f"{key} to close server {pid}")
    with p.connect("p1") as conn:
        assert backend_pid(conn) != pid


def test_server_without_ttl_is_reused(pooler, pg):
    p = pooler(make_config(route("p1", pool="session")))
    with p.connect("p1") as conn:
        pid = backend_pid(conn)

    def server_idle() -> bool:  # (it is reset, DISCARD ALL, before it is idle again)
        with p.connect("console", "admin") as admin:
            cur = admin.execute("show pools")
            names = [d.name for d in cur.description]
            rows = [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
        return any(r["database"] == "p1" and r["sv_idle"] == 1 for r in rows)

    wait_until(server_idle, timeout=10)
    with p.connect("p1") as conn:
        assert backend_pid(conn) == pid


def test_server_lifetime_closes_server_at_release(pooler, pg):
    # a server older than server_lifetime is not given back to the pool
    p = pooler(make_config(route("p1", pool="transaction", server_lifetime=1, pool_size=1)))
    with p.connect("p1") as conn:
        first = backend_pid(conn)
        wait_until(
            lambda: backend_pid(conn) != first, timeout=6, interval=0.2, message="a new server"
        )
    wait_until(lambda: not alive(pg, first), timeout=5)


def test_min_pool_size_opens_idle_servers(pooler, pg):
    p = pooler(
        make_config(
            route(
                "p2",
                authentication="none",
                pool="transaction",
                min_pool_size=3,
                storage_user=PLAIN_USER,
                storage_password=PLAIN_PW,
            )
        )
    )
    where = f"datname = 'p2' and usename = '{PLAIN_USER}'"
    # opened at start (the backend user is storage_user): no client needed, as in odyssey
    wait_until(lambda: len(pids_of(pg, where)) >= 3, timeout=6, message="3 idle servers")
    with p.connect("p2", "anyone") as conn:
        assert conn.execute("select 1").fetchone()[0] == 1
    assert len(pids_of(pg, where)) == 3
    assert pids_of(pg, f"{where} and state = 'idle'") == pids_of(pg, where)


def test_global_client_max_holds_across_workers(pooler):
    # odyssey counts client_max over the whole process, not per worker thread
    p = pooler(make_config(route(), client_max=2, workers=2))
    conns, refused = [], 0
    try:
        for _ in range(12):  # SO_REUSEPORT spreads them over both workers
            try:
                conns.append(p.connect("p0"))
            except psycopg.OperationalError as exc:
                assert "global client_max 2" in str(exc)
                refused += 1
        assert len(conns) == 2
        assert refused == 10
    finally:
        for conn in conns:
            conn.close()


def test_route_client_max_holds_across_workers(pooler):
    p = pooler(make_config(route("p0", client_max=2), workers=2))
    conns, refused = [], 0
    try:
        for _ in range(12):  # SO_REUSEPORT spreads them over both workers
            try:
                conns.append(p.connect("p0"))
            except psycopg.OperationalError as exc:
                assert "client_max for user p0.postgres 2" in str(exc)
                refused += 1
        assert len(conns) == 2
        assert refused == 10
    finally:
        for conn in conns:
            conn.close()


def test_pool_size_holds_across_workers(pooler, pg):
    p = pooler(
        make_config(
            route(
                "p1",
                pool="session",
                pool_size=2,
                pool_timeout=300,
                storage_user=MD5_USER,
                storage_password=MD5_PW,
            ),
            workers=2,
        )
    )
    conns, refused = [], 0
    try:
        for _ in range(12):
            try:
                conns.append(p.connect("p1", "anyone"))
            except psycopg.OperationalError as exc:
                assert "pool_size for user p1.anyone reached 2" in str(exc)
                refused += 1
        assert len(conns) == 2
        assert len(pids_of(pg, f"datname = 'p1' and usename = '{MD5_USER}'")) == 2
    finally:
        for conn in conns:
            conn.close()
