"""The admin console against a real `pooler serve` (workers 2) and a real PostgreSQL."""

from __future__ import annotations

import threading

import psycopg
import pytest
from harness import make_config, patience, route, wait_until

POOLS_COLUMNS = [
    "database", "user", "cl_active", "cl_waiting", "cl_active_cancel_req",
    "cl_waiting_cancel_req", "sv_active", "sv_active_cancel", "sv_being_canceled", "sv_idle",
    "sv_used", "sv_tested", "sv_login", "maxwait", "maxwait_us", "pool_mode",
    "load_balance_hosts",
]  # fmt: skip
STATS_COLUMNS = [
    "database", "total_server_assignment_count", "total_xact_count", "total_query_count",
    "total_received", "total_sent", "total_xact_time", "total_query_time", "total_wait_time",
    "total_client_parse_count", "total_server_parse_count", "total_bind_count",
    "avg_server_assignment_count", "avg_xact_count", "avg_query_count", "avg_recv", "avg_sent",
    "avg_xact_time", "avg_query_time", "avg_wait_time", "avg_client_parse_count",
    "avg_server_parse_count", "avg_bind_count",
]  # fmt: skip
DATABASES_COLUMNS = [
    "name", "host", "port", "database", "force_user", "pool_size", "min_pool_size",
    "reserve_pool_size", "server_lifetime", "pool_mode", "load_balance_hosts", "max_connections",
    "current_connections", "max_client_connections", "current_client_connections", "paused",
    "disabled",
]  # fmt: skip
SOCKET_COLUMNS = [
    "type", "user", "database", "replication", "state", "addr", "port", "local_addr",
    "local_port", "connect_time", "request_time", "wait", "wait_us", "close_needed", "ptr",
    "link", "remote_pid", "tls", "application_name", "prepared_statements", "id",
]  # fmt: skip
LISTS_ROWS = [
    "databases", "users", "peers", "pools", "peer_pools", "free_clients", "used_clients",
    "login_clients", "free_servers", "used_servers", "dns_names", "dns_zones", "dns_queries",
    "dns_pending",
]  # fmt: skip


def console(p, user="admin"):
    return psycopg.connect(p.dsn("console", user), autocommit=True)


def show(p, what, user="admin"):
    with console(p, user) as conn:
        cur = conn.execute(f"show {what}")
        names = [d.name for d in cur.description]
        return names, [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def two_worker_config(**kw):
    return make_config(route(pool="transaction", pool_size=4), workers=2, **kw)


def test_exporter_column_lists(pooler):
    p = pooler(two_worker_config())
    p.sql("select 1", dbname="p0")
    names, _ = show(p, "pools")
    # pgbouncer's columns, then the route's backend, rule and generation (issue 17)
    assert names == [*POOLS_COLUMNS, "backend_database", "backend_user", "rule", "generation"]
    names, _ = show(p, "stats")
    assert names == STATS_COLUMNS
    names, _ = show(p, "databases")
    assert names == DATABASES_COLUMNS
    names, rows = show(p, "lists")
    assert names == ["list", "items"]
    assert [r["list"] for r in rows][: len(LISTS_ROWS)] == LISTS_ROWS
    names, _ = show(p, "clients")
    assert names == SOCKET_COLUMNS
    names, _ = show(p, "servers")
    assert names == SOCKET_COLUMNS


def test_types_are_pgbouncers(pooler):
    p = pooler(two_worker_config())
    with console(p) as conn:
        cur = conn.execute("show pools")
        types = [d.type_code for d in cur.description]
        assert types[:2] == [25, 25] and set(types[2:15]) == {23} and types[15:17] == [25, 25]
        cur = conn.execute("show stats")
        assert {d.type_code for d in cur.description[1:]} == {20}


def test_odyssey_exporter_queries(pooler):
    p = pooler(two_worker_config())
    with console(p) as conn:
        cur = conn.execute(
            "show version; show lists; show stats; show databases; show pools_extended; "
            "show errors;"
        )
        seen = []
        while True:
            seen.append([d.name for d in cur.description])
            if not cur.nextset():
                break
    assert seen[0] == ["version"]
    assert seen[1] == ["list", "items"]
    assert seen[5] == ["error_type", "count"]
    assert "query_0.99" in seen[4] and "transaction_0.5" in seen[4]


@pytest.mark.parametrize(
    "what",
    [
        "pools", "pools_extended", "stats", "stats_totals", "stats_averages", "clients",
        "servers", "databases", "lists", "users", "config", "version", "state", "rules",
        "errors", "storages", "listen", "help",
    ],
)  # fmt: skip
def test_every_show_command_answers(pooler, what):
    p = pooler(two_worker_config())
    with console(p) as conn:
        conn.execute(f"SHOW {what.upper()};")


def test_unknown_command_and_roles(pooler):
    cfg = make_config([route(), route("console", "stat", storage="local", role="stat")], workers=2)
    p = pooler(cfg)
    with console(p) as conn:
        with pytest.raises(psycopg.errors.SyntaxError, match="frobnicate"):
            conn.execute("frobnicate now")
        with pytest.raises(psycopg.errors.SyntaxError, match="nonsense"):
            conn.execute("show nonsense")
    with console(p, "stat") as conn:
        conn.execute("show pools")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="Unsuitable user role"):
            conn.execute("reload")


def test_pools_clients_servers_agree_with_pg_stat_activity(pooler, pg):
    p = pooler(two_worker_config())
    stop = threading.Event()
    errors = []

    def load():
        try:
            with p.connect("p1") as conn:
                while not stop.is_set():
                    with conn.transaction():
                        conn.execute("select pg_sleep(0.01)")
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=load) for _ in range(12)]
    for t in threads:
        t.start()
    try:
        # 12 clients over 2 workers, pool_size 4 (global): some wait, at most 4 servers
        def busy():
            _, pools = show(p, "pools")
            row = next((r for r in pools if r["database"] == "p1"), None)
            return row if row and row["cl_waiting"] > 0 else None

        row = wait_until(busy, timeout=10)
        assert row["sv_active"] + row["sv_idle"] + row["sv_login"] <= 4

        def servers_match_pg():
            _, servers = show(p, "servers")
            pids = {s["remote_pid"] for s in servers if s["database"] == "p1"}
            with psycopg.connect(pg.dsn("p0"), autocommit=True) as direct:
                activity = {
                    r[0]
                    for r in direct.execute(
                        "select pid from pg_stat_activity where datname = 'p1'"
                        " and backend_type = 'client backend'"
                    )
                }
            return pids if pids == activity and 0 < len(pids) <= 4 else None

        wait_until(servers_match_pg, timeout=10)
        _, clients = show(p, "clients")
        p1 = [c for c in clients if c["database"] == "p1"]
        assert len(p1) == 12
        assert {c["state"] for c in p1} <= {"active", "idle", "waiting"}
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors


def test_show_stats_counts_transactions(pooler):
    p = pooler(two_worker_config(stats_interval=1))
    for _ in range(20):
        p.sql("select 1", dbname="p2")

    def counted():
        _, rows = show(p, "stats_totals")
        row = next((r for r in rows if r["database"] == "p2"), None)
        return row if row and row["xact_count"] >= 20 else None

    row = wait_until(counted, timeout=5)
    assert row["query_count"] >= 20
    assert row["bytes_received"] > 0 and row["bytes_sent"] > 0


def test_kill_client_and_reload(pooler):
    p = pooler(two_worker_config())
    with p.connect("p0") as victim:
        victim.execute("select 1")
        _, clients = show(p, "clients")
        target = next(c for c in clients if c["database"] == "p0")
        with console(p) as conn:
            conn.execute(f"kill_client {target['id']}")
        with pytest.raises(psycopg.OperationalError):
            victim.execute("select 1")
    with console(p) as conn:
        conn.execute("reload")
        p.write_config("this is { not valid")
        with pytest.raises(psycopg.Error, match="reload failed"):
            conn.execute("reload")


def waiting_clients(p) -> int:
    return sum(r["cl_waiting"] for r in show(p, "pools")[1])


def test_pause_holds_a_worker_restarted_during_it(pooler):
    """A worker that crashed and came back while PAUSE is in force is paused as well (and
    one still starting when PAUSE came catches up at its first report)."""
    import os
    import signal

    from wire import workers

    p = pooler(make_config(route(pool="transaction", pool_size=4), workers=1))
    p.sql("select 1", dbname="p0")
    with console(p) as conn:
        conn.execute("pause")
    (before,) = workers(p)
    os.kill(before.pid, signal.SIGKILL)
    wait_until(lambda: workers(p)[0].restarts == 1 and workers(p)[0].pid != before.pid)
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("rows", p.sql("select 6")))
    t.start()
    try:
        wait_until(lambda: waiting_clients(p) == 1, timeout=10, interval=0.1)
        assert t.is_alive() and not result
    finally:
        with console(p) as conn:
            conn.execute("resume")
        t.join(patience(5))
    assert result["rows"] == [(6,)]


def test_pause_resume_reconnect(pooler):
    p = pooler(two_worker_config())
    p.sql("select 1", dbname="p0")
    with console(p) as conn:
        conn.execute("pause p0")
        _, state = show(p, "databases")
        assert next(r for r in state if r["name"] == "default_db")["paused"] in (0, 1)
        result = {}

        def query():
            result["rows"] = p.sql("select 5", dbname="p0")

        t = threading.Thread(target=query)
        t.start()
        # it logs in, then waits for a server while paused
        wait_until(lambda: waiting_clients(p) == 1, timeout=10, interval=0.1)
        assert t.is_alive() and not result
        conn.execute("resume p0")
        t.join(patience(5))
        assert result["rows"] == [(5,)]
        conn.execute("reconnect")
        conn.execute("resume")


def test_kill_db_drops_its_clients_and_servers_at_once(pooler, pg):
    """KILL p1 (pgbouncer): every client of p1, on both workers, idle or inside a
    transaction, gets FATAL 08P01 "database removed" and its server is closed at once (its
    backend gone from pg_stat_activity); p1 is paused until RESUME p1 (as pgbouncer, where new
    clients wait for RESUME), then served again; a client of p2 inside a transaction notices
    nothing, not even a new backend. The stat role may not KILL; unknown databases and the
    console's own are refused with pgbouncer's texts."""

    def backends(db):
        return int(pg.psql(f"select count(*) from pg_stat_activity where datname = '{db}'"))

    p = pooler(make_config(route(pool="transaction", pool_size=6), workers=2))
    wait_until(lambda: backends("p1") == 0 and backends("p2") == 0)
    victims = [p.connect("p1") for _ in range(4)]
    other = p.connect("p2")
    try:
        for i, conn in enumerate(victims):
            conn.execute("select 1")
            if i % 2:  # half of them hold their server inside a transaction
                conn.execute("begin")
                conn.execute("select 1")
        other.execute("begin")
        other_pid = other.execute("select pg_backend_pid()").fetchone()
        assert backends("p1") >= 2
        with console(p, "admin") as conn:
            assert conn.execute("kill p1").statusmessage == "KILL"
        for conn in victims:
            with pytest.raises(psycopg.OperationalError, match="database removed") as caught:
                conn.execute("select 2")
            assert caught.value.sqlstate == "08P01"
        wait_until(lambda: backends("p1") == 0)
        assert other.execute("select pg_backend_pid()").fetchone() == other_pid
        other.execute("commit")
        assert other.execute("select 3").fetchone() == (3,)

        # paused until RESUME p1: a new client of p1 waits, p2 is served meanwhile
        result: dict[str, object] = {}
        t = threading.Thread(
            target=lambda: result.setdefault("rows", p.sql("select 4", dbname="p1"))
        )
        t.start()
        wait_until(lambda: waiting_clients(p) == 1, timeout=10, interval=0.1)
        assert t.is_alive() and not result
        assert p.sql("select 5", dbname="p2") == [(5,)]
        with console(p, "admin") as conn:
            conn.execute("resume p1")
        t.join(patience(10))
        assert result["rows"] == [(4,)]
        assert p.sql("select 6", dbname="p1") == [(6,)]
    finally:
        for conn in [*victims, other]:
            conn.close()


def test_kill_all_and_what_kill_refuses(pooler):
    """KILL without a database kills every database but the console (pgbouncer 1.25);
    `KILL name` of a database no rule names, or of the console's own, is refused with
    pgbouncer's texts; the stat role may not KILL."""
    rules = [
        route("p1", pool="transaction"),
        route("p2", pool="transaction"),
        route("console", "stat", storage="local", role="stat"),
    ]
    p = pooler(make_config(rules, workers=2))
    denied = pytest.raises(psycopg.errors.InsufficientPrivilege, match="Unsuitable user role")
    with console(p, "stat") as conn, denied:
        conn.execute("kill p1")
    clients = [p.connect(db) for db in ("p1", "p2")]
    try:
        for conn in clients:
            conn.execute("select 1")
        with console(p, "admin") as conn:
            with pytest.raises(psycopg.errors.UndefinedObject, match="no such database: p9"):
                conn.execute("kill p9")
            with pytest.raises(psycopg.errors.UndefinedObject, match="cannot kill admin db"):
                conn.execute("kill console")
            assert conn.execute("kill").statusmessage == "KILL"
            for client in clients:
                with pytest.raises(psycopg.OperationalError, match="database removed"):
                    client.execute("select 2")
            assert conn.execute("show is_paused").fetchone() == (True,)  # (it survived)
            conn.execute("resume")
        assert p.sql("select 3", dbname="p2") == [(3,)]
    finally:
        for conn in clients:
            conn.close()
