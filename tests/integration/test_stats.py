"""stats_interval lines and /metrics against a real pooler (workers 2)."""

from __future__ import annotations

import re
import threading
import time
import urllib.request

import psycopg
from harness import free_port, make_config, release_port, route, wait_until
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
