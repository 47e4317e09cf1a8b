"""stats_interval lines and /metrics against a real pooler (workers 2)."""

from __future__ import annotations

import re
import socket
import subprocess
import threading
import time
import urllib.request

import psycopg
from harness import HOST, free_port, make_config, release_port, route, wait_until
from prometheus_client.parser import text_string_to_metric_families

LINE = re.compile(
    r"\[p0\.(\w+)\] (\d+) clients, (\d+) active servers, (\d+) idle servers, "
    r"(\d+) transactions/sec \((\d+) usec\) (\d+) queries/sec \((\d+) usec\) "
    r"(\d+) in bytes/sec, (\d+) out bytes/sec"
)
QUERY = "select 1"
Q_BYTES = 1 + 4 + len(QUERY) + 1  # a simple Query message


def paced_load(p, rate, stop, counter):
    """`rate` queries per second in total from 4 connections, on an absolute schedule."""

    def one(k):
        with psycopg.connect(
            p.dsn("p0"), autocommit=True, cursor_factory=psycopg.ClientCursor
        ) as conn:
            start = time.monotonic()
            n = 0
            while not stop.is_set():
                due = start + n * 4 / rate + k / rate
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                conn.execute(QUERY)
                counter.append(1)
                n += 1

    threads = [threading.Thread(target=one, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    return threads


def test_three_stats_lines_match_the_traffic(pooler):
    cfg = make_config(
        route("p0", "default", pool="transaction", pool_size=4), workers=2, stats_interval=2
    )
    p = pooler(cfg)
    stop, counter = threading.Event(), []
    threads = paced_load(p, 100, stop, counter)
    try:
        # the first stats line under load covers part of an interval: skip it
        start = p.log_offset()
        wait_until(lambda: LINE.search(p.log_text(start)), timeout=10)
        since = p.log_offset()
        wait_until(lambda: len(LINE.findall(p.log_text(since))) >= 3, timeout=15)
    finally:
        stop.set()
        for t in threads:
            t.join()
    lines = LINE.findall(p.log_text(since))[:3]
    for _user, clients, active, idle, tps, xact_us, qps, query_us, inb, outb in lines:
        assert int(clients) == 4
        assert int(active) + int(idle) <= 4
        assert abs(int(tps) - 100) <= 10, lines
        assert abs(int(qps) - 100) <= 10, lines
        assert abs(int(inb) - 100 * Q_BYTES) <= 0.1 * 100 * Q_BYTES, lines
        assert int(outb) > 0 and int(query_us) > 0 and int(xact_us) > 0
    assert re.search(r"\(stats\) clients \d+", p.log_text(since))


def test_metrics_endpoint_is_valid_prometheus_text(pooler):
    port = free_port()
    try:
        cfg = make_config(route(pool="transaction", pool_size=2), workers=2, stats_interval=1)
        cfg = cfg.replace("workers 2", f"workers 2\npromhttp_server_port {port}")
        p = pooler(cfg)
        for _ in range(5):
            p.sql("select 1", dbname="p1")

        def scrape():
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                return r.read().decode()

        def scrape_families():
            return {f.name: f for f in text_string_to_metric_families(scrape())}

        def transactions(fams):
            samples = fams["pooler_route_transactions"].samples
            return sum(s.value for s in samples if s.labels["database"] == "p1")

        families = wait_until(lambda: (f := scrape_families()) and transactions(f) >= 5 and f)
        for name in (
            "odyssey_version_info",
            "odyssey_database_avg_tx_per_second",
            "odyssey_client_pool_active_route",
            "odyssey_server_pool_state_route",
            "odyssey_route_bytes_received",
            "odyssey_route_transaction_duration_seconds",
            "odyssey_errors",
            "odyssey_lists_pools",
            "pooler_worker_rss_bytes",
        ):
            assert name in families, name
        workers = families["pooler_worker_rss_bytes"].samples
        assert len(workers) == 2 and all(s.value > 0 for s in workers)
    finally:
        release_port(port)


def test_routes_on_one_backend_have_one_name_each_everywhere(pooler):
    """A session and a transaction route to the same backend database (issue 17): SHOW POOLS,
    POOLS_EXTENDED and STATS name them by what clients ask for, /metrics has no two series
    with the same labels, the stats lines name both."""
    port = free_port()
    try:
        cfg = make_config(
            [
                route("bench_s", "default", pool="session", storage_db="p0"),
                route("bench_t", "default", pool="transaction", storage_db="p0", pool_size=2),
            ],
            workers=2,
            stats_interval=1,
            promhttp_server_port=port,
        )
        p = pooler(cfg)
        for db in ("bench_s", "bench_t"):
            for _ in range(3):
                p.sql("select 1", dbname=db)
        with p.connect("console", "admin") as conn:

            def pools(command):
                cur = conn.execute(command, prepare=False)
                names = [c.name for c in cur.description]
                rows = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
                return [r for r in rows if r["database"] not in ("aggregated", "console")]

            wait_until(lambda: len(pools("SHOW POOLS")) >= 2)  # snapshots come every second
            for command in ("SHOW POOLS", "SHOW POOLS_EXTENDED"):
                rows = pools(command)
                assert sorted((r["database"], r["user"]) for r in rows) == [
                    ("bench_s", "postgres"),
                    ("bench_t", "postgres"),
                ], command
                assert {(r["backend_database"], r["backend_user"]) for r in rows} == {
                    ("p0", "postgres")
                }
            stats = conn.execute("SHOW STATS").fetchall()
            assert {"bench_s", "bench_t"} <= {r[0] for r in stats}
            assert "p0" not in {r[0] for r in stats}

        def scrape():
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                return r.read().decode()

        def route_series():
            return [
                (s.name, tuple(sorted(s.labels.items())))
                for f in text_string_to_metric_families(scrape())
                for s in f.samples
                if "database" in s.labels and s.labels["database"].startswith("bench")
            ]

        series = wait_until(route_series)
        assert len(series) == len(set(series)), [s for s in series if series.count(s) > 1]
        assert {dict(labels)["database"] for _, labels in series} == {"bench_s", "bench_t"}
        since = p.log_offset()
        p.wait_for_log(r"\[bench_t\.postgres\] ", since=since)
        p.wait_for_log(r"\[bench_s\.postgres\] ", since=since)
    finally:
        release_port(port)


def _query(sql: str) -> bytes:
    body = sql.encode() + b"\0"
    return b"Q" + (len(body) + 4).to_bytes(4, "big") + body


def test_waiting_means_the_same_everywhere_and_matches_pg_stat_activity(pooler, pg):
    """One definition of waiting (issue 17): a client that asked for a server and has none.
    With pgbench running through the pooler, two transaction-pool servers held in open
    transactions and three clients asking for one (one of them sending its query in two
    pieces), plus a session-pool login waiting for its server: SHOW POOLS, SHOW CLIENTS,
    /metrics and the dashboard's pools agree, and pg_stat_activity shows the held servers and
    no backend for a waiting query."""
    from wire import control, read_until, startup_packet

    port = free_port()
    cfg = make_config(
        [
            route("t", "default", pool="transaction", pool_size=2, storage_db="p0"),
            route("s", "default", pool="session", pool_size=1, storage_db="p0"),
            route("bench", "default", pool="transaction", pool_size=4, storage_db="p0"),
        ],
        stats_interval=1,
        promhttp_server_port=port,
        log_session=False,
    )
    p = pooler(cfg)
    pgbench = [pg.binary("pgbench"), "-h", HOST, "-p", str(p.port), "-U", "postgres", "-n"]
    bench = subprocess.Popen(
        [*pgbench, "-S", "-c", "4", "-T", "300", "bench"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    holders = [p.connect("t", autocommit=False) for _ in range(2)]
    session_holder = p.connect("s")
    waiters: list[socket.socket] = []
    try:
        for conn in holders:
            conn.execute("select 'held'")  # a transaction stays open: the server is held
        for n in range(3):
            sock = socket.create_connection((HOST, p.port))
            waiters.append(sock)
            sock.sendall(startup_packet(database="t"))
            read_until(sock, b"Z")
            query = _query(f"select 'waited {n}'")
            sock.sendall(query[:3] if n == 0 else query)  # the first one in two pieces
        login = socket.create_connection((HOST, p.port))
        waiters.append(login)
        login.sendall(startup_packet(database="s"))  # its login waits for the held server

        with p.connect("console", "admin") as console:

            def rows(command):
                cur = console.execute(command, prepare=False)
                names = [c.name for c in cur.description]
                return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

            def pool(database):
                return next((r for r in rows("SHOW POOLS") if r["database"] == database), {})

            wait_until(
                lambda: pool("t").get("cl_waiting") == 3 and pool("s").get("cl_waiting") == 1
            )
            t, s = pool("t"), pool("s")
            assert (t["cl_active"], t["sv_active"], t["sv_idle"]) == (2, 2, 0)
            assert (s["cl_active"], s["sv_active"], s["sv_idle"]) == (1, 1, 0)
            assert t["maxwait"] * 1_000_000 + t["maxwait_us"] > 0
            assert s["maxwait"] * 1_000_000 + s["maxwait_us"] > 0

            clients = rows("SHOW CLIENTS")
            clients = [c for c in clients if c["database"] in ("s", "t")]  # (not pgbench's)
            waiting = sorted(c["database"] for c in clients if c["state"] == "waiting")
            assert waiting == ["s", "t", "t", "t"], clients
            assert all(
                c["wait"] * 1_000_000 + c["wait_us"] > 0 for c in clients if c["state"] == "waiting"
            )

            def families():
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                    text = r.read().decode()
                return {f.name: f for f in text_string_to_metric_families(text)}

            gauge = {
                s.labels["database"]: s.value
                for s in families()["odyssey_client_pool_waiting_route"].samples
            }
            assert (gauge["t"], gauge["s"]) == (3, 1)
            pools = {x.database: x for x in control(p, "pools")}
            assert (pools["t"].cl_waiting, pools["s"].cl_waiting) == (3, 1)
            assert pools["t"].maxwait_us > 0 and pools["s"].maxwait_us > 0

            activity = pg.psql(
                "select state, query from pg_stat_activity where datname = 'p0' "
                "and backend_type = 'client backend' and query like 'select ''%'"
            )
            assert activity.count("idle in transaction|select 'held'") == 2, activity
            assert "waited" not in activity, activity

            # more bytes of a waiting client do not restart its wait
            first = waiters[0].getsockname()[1]

            def wait_of_first():
                row = next(c for c in rows("SHOW CLIENTS") if c["port"] == first)
                return row["wait"] * 1_000_000 + row["wait_us"]

            before = wait_until(lambda: (w := wait_of_first()) >= 200_000 and w)
            waiters[0].sendall(_query("select 'waited 0'")[3:])
            assert wait_of_first() >= before

            # the servers come back: nobody waits, anywhere
            for conn in holders:
                conn.commit()
            session_holder.close()
            for sock in waiters:
                read_until(sock, b"Z")
            wait_until(lambda: pool("t")["cl_waiting"] == 0 and pool("s")["cl_waiting"] == 0)
            assert not [
                c
                for c in rows("SHOW CLIENTS")
                if c["state"] == "waiting" and c["database"] != "bench"
            ]
    finally:
        for sock in waiters:
            sock.close()
        for conn in holders:
            conn.close()
        session_holder.close()
        bench.terminate()
        bench.wait()
        release_port(port)
