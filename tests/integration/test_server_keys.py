"""Global keys about logins and server connections: server_login_retry, client_max_routing."""

from __future__ import annotations

import socket
import struct
import threading

import psycopg
import pytest
from faultproxy import FaultProxy
from harness import HOST, make_config, route, storage, wait_until
from wire import read_until, startup_packet

from pooler.pgcluster import conninfo
from pooler.protocol import build


@pytest.fixture
def one_connection_role(pg):
    """A role PostgreSQL lets log in once at a time (CONNECTION LIMIT 1): its second login is
    refused with 53300 `too many connections for role`."""
    name = "one_conn_user"
    pg.psql(f"DROP ROLE IF EXISTS {name}")
    pg.create_role(name, "one_pw", "md5", options="CONNECTION LIMIT 1")
    pg.psql(f"GRANT ALL ON DATABASE p0 TO {name}")
    try:
        yield name, "one_pw"
    finally:
        pg.psql(f"REVOKE ALL ON DATABASE p0 FROM {name}; DROP ROLE IF EXISTS {name}")


def test_server_login_retry_until_a_connection_slot_frees(pooler, pg, one_connection_role):
    """odyssey: a backend login refused for too many connections is retried every
    server_login_retry ms while the rule's pool_timeout lasts (it used to fail at once)."""
    user, password = one_connection_role
    rule = route("p0", user, pool="session", pool_timeout=20000, storage_password=password)
    p = pooler(make_config(rule, server_login_retry=50))
    direct = psycopg.connect(
        conninfo(host=HOST, port=pg.port, dbname="p0", user=user, password=password)
    )  # takes the role's only connection
    result: list[object] = []

    def client() -> None:
        try:
            with p.connect("p0", user) as conn:
                result.append(conn.execute("select current_user").fetchone())
        except psycopg.Error as exc:
            result.append(exc)

    thread = threading.Thread(target=client)
    thread.start()
    p.wait_for_log(r"too many connections for role .*retrying in 50 ms \(server_login_retry\)")
    assert not result
    direct.close()
    thread.join(20)
    assert result == [(user,)]


def test_without_pool_timeout_the_refusal_reaches_the_client(pooler, pg, one_connection_role):
    user, password = one_connection_role
    p = pooler(make_config(route("p0", user, pool="session", storage_password=password)))
    with (
        psycopg.connect(
            conninfo(host=HOST, port=pg.port, dbname="p0", user=user, password=password)
        ),
        pytest.raises(psycopg.OperationalError, match="too many connections"),
    ):
        p.connect("p0", user)


def test_client_max_routing_queues_logins_beyond_it(pooler):
    """client_max_routing 1: while one client sits in authentication, the next login waits in
    the routing queue (odyssey's log line) and goes on when the first is through."""
    p = pooler(
        make_config(
            [
                route("p0", "postgres"),
                route("p1", "postgres", authentication="clear_text", password="pw"),
            ],
            client_max_routing=1,
        )
    )
    slow = socket.create_connection((HOST, p.port), timeout=10)
    slow.sendall(startup_packet("postgres", "p1"))
    assert read_until(slow, b"R")[-1][0] == ord("R")  # asked for a password: in routing
    done: list[object] = []
    thread = threading.Thread(target=lambda: done.append(p.sql("select 1", dbname="p0")))
    thread.start()
    p.wait_for_log(r"\(client_max_routing\) client is waiting in routing queue")
    assert not done
    slow.close()  # its place frees
    thread.join(10)
    assert done == [[(1,)]]


def test_server_max_routing_one_server_login_at_a_time(pooler, pg):
    """server_max_routing 1: while a server login hangs (a host that never answers), the next
    one waits for it instead of starting (odyssey's concurrent backend connect limit)."""
    with FaultProxy(HOST, pg.port) as proxy:
        proxy.mode = "blackhole"  # logins through it hang until backend_connect_timeout_ms
        p = pooler(
            make_config(
                route("p0", "postgres"),
                storages=storage(port=proxy.port, server_max_routing=1),
                backend_connect_timeout_ms=3000,
            )
        )
        results: list[object] = []

        def client() -> None:
            try:
                results.append(p.sql("select 1", dbname="p0"))
            except psycopg.Error as exc:
                results.append(type(exc))

        first = threading.Thread(target=client)
        first.start()
        wait_until(lambda: proxy.accepted == 1)
        second = threading.Thread(target=client)
        second.start()
        p.wait_for_log(r"\(server_max_routing\) storage 'postgres_server': server connect waits")
        assert proxy.accepted == 1  # the second login has not started
        proxy.mode = "pass"  # the first times out; the second goes through
        first.join(20)
        second.join(20)
        assert sorted(map(str, results)) == sorted(map(str, [psycopg.OperationalError, [(1,)]]))


def test_cancel_max_inflight_and_queue_timeout(pooler, pg):
    """cancel_max_inflight 1, cancel_queue_timeout_ms 0: while one cancel to PostgreSQL hangs,
    a second is dropped at once (logged) instead of opening another connection."""
    with FaultProxy(HOST, pg.port) as proxy:
        p = pooler(
            make_config(
                route("p0", "postgres"),
                storages=storage(port=proxy.port),
                cancel_max_inflight=1,
                cancel_queue_timeout_ms=0,
                cancel_timeout_ms=5000,
            )
        )
        clients = [_raw_login(p) for _ in range(2)]  # (socket, pid, secret)
        for sock, _, _ in clients:
            sock.sendall(build.query("select pg_sleep(30)"))
        wait_until(lambda: _sleeping(pg) == 2)
        accepted = proxy.accepted
        proxy.mode = "blackhole"  # the cancel connections hang from now on
        cancels = [socket.create_connection((HOST, p.port), timeout=10) for _ in clients]
        cancels[0].sendall(build.cancel_request(clients[0][1], clients[0][2]))
        wait_until(lambda: proxy.accepted == accepted + 1)  # the first is in flight
        cancels[1].sendall(build.cancel_request(clients[1][1], clients[1][2]))
        p.wait_for_log(r"cancel request dropped: 1 in flight")
        assert proxy.accepted == accepted + 1
        proxy.mode = "pass"
        for sock in cancels + [c[0] for c in clients]:
            sock.close()  # the pooler cancels the queries of the clients that left


def _raw_login(p) -> tuple[socket.socket, int, int]:
    sock = socket.create_connection((HOST, p.port), timeout=10)
    sock.sendall(startup_packet("postgres", "p0"))
    found = read_until(sock, b"Z")
    key = next(body for kind, body in found if kind == ord("K"))
    pid, secret = struct.unpack("!ii", key)
    return sock, pid, secret


def _sleeping(pg) -> int:
    out = pg.psql("select count(*) from pg_stat_activity where query = 'select pg_sleep(30)'")
    return int(out.split()[-1])


@pytest.mark.parametrize(("ttl", "lookups"), [(30000, 1), (0, 3)])
def test_dns_cache_ttl(pooler, ttl, lookups):
    """A storage host name is looked up once per dns_cache_ttl ms (0: at every connect)."""
    p = pooler(
        make_config(
            route("p0", "postgres"),
            storages=storage(host="localhost"),
            dns_cache_ttl=ttl,
            log_debug=True,
        )
    )
    conns = [p.connect("p0") for _ in range(3)]  # session pool: three server connects
    assert p.log_text().count("(dns) resolved localhost -> ") == lookups
    for conn in conns:
        conn.close()


@pytest.mark.parametrize(("smart", "expected"), [(True, "public, pg_catalog"), (False, None)])
async def test_smart_search_path_enquoting(pooler, smart, expected):
    """A client's startup search_path `public,pg_catalog` set on a server: quoted whole it is one
    schema named "public,pg_catalog" (odyssey's default); smart_search_path_enquoting sets the
    list."""
    import asyncpg

    p = pooler(
        make_config(route("p0", "postgres", pool="transaction"), smart_search_path_enquoting=smart)
    )
    conn = await asyncpg.connect(
        host=HOST,
        port=p.port,
        user="postgres",
        database="p0",
        server_settings={"search_path": "public,pg_catalog"},
        statement_cache_size=0,
    )
    try:
        found = await conn.fetchval("show search_path")
        assert found == (expected or '"public,pg_catalog"')
    finally:
        await conn.close()
