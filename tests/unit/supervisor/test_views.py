"""Pure console rendering: snapshots -> rows, rates, stats lines, histograms."""

from __future__ import annotations

from dataclasses import fields, replace

from pooler.control import schema
from pooler.histogram import quantile
from pooler.server.stats import RouteStats
from pooler.snapshot import RouteCounters, RouteSnapshot, WorkerSnapshot
from pooler.supervisor import aggregate, odyssey_views, views
from pooler.supervisor.console import split_statements

COUNTER_NAMES = {f.name for f in fields(RouteCounters)}


def a_route(**changes):
    """A route of app.bob; `changes` of gauges and counters by name."""
    counters = RouteCounters(**{k: v for k, v in changes.items() if k in COUNTER_NAMES})
    route = RouteSnapshot(
        key=(0, 1, "app", "bob"), database="app", user="bob", rule="app.default_user all",
        rule_database="app", rule_user="bob", generation=0, backend_db="app",
        backend_user="bob", mode="transaction", pool_size=10, obsolete=False, clients=3,
        cl_active=1, cl_waiting=2, sv_active=1, sv_idle=2, sv_login=0, maxwait_us=1_500_000,
        load_balance_hosts=None, counters=counters,
    )  # fmt: skip
    return replace(route, **{k: v for k, v in changes.items() if k not in COUNTER_NAMES})


def a_worker(*routes, clients=3):
    return WorkerSnapshot(
        index=0, pid=1, generation=0, clients=clients, login_clients=0, servers=0, routes=routes
    )


def snap(**changes):
    return a_worker(a_route(**changes))


def test_merge_sums_workers_and_keeps_max_wait():
    a = snap(xact_count=10, bytes_received=100, maxwait_us=5)
    b = snap(xact_count=5, bytes_received=50, maxwait_us=7)
    (route,) = aggregate.merge_routes([a, b])
    assert route.counters.xact_count == 15 and route.counters.bytes_received == 150
    assert route.clients == 6 and route.cl_waiting == 4 and route.maxwait_us == 7
    assert route.workers == 2


def test_pools_row_shape():
    result = views.show_pools(aggregate.merge_routes([snap()]))
    assert [c for c, _ in result.columns][:4] == ["database", "user", "cl_active", "cl_waiting"]
    (row,) = result.rows
    assert row[:4] == ("app", "bob", 1, 2)
    assert row[13:15] == (1, 500_000)  # maxwait s, us


def test_stats_line_is_odysseys_format():
    old = aggregate.merge_routes([snap(xact_count=0, query_count=0, bytes_received=0)])[0]
    new = snap(
        xact_count=300, query_count=600, bytes_received=3000, bytes_sent=6000,
        xact_time_us=300_000, query_time_us=300_000, obsolete=True,
    )  # fmt: skip
    lines = odyssey_views.stats_lines(aggregate.merge_routes([new]), {old.key: old}, 3.0, 3)
    assert lines == [
        "clients 3",
        "[app.bob obsolete] 3 clients, 1 active servers, 2 idle servers, "
        "100 transactions/sec (1000 usec) 200 queries/sec (500 usec) 1000 in bytes/sec, "
        "2000 out bytes/sec",
    ]


def test_histogram_quantiles():
    stats = RouteStats()
    for us in range(1, 1001):
        stats.record_query(us * 100)
    assert stats.query_time_us == sum(range(1, 1001)) * 100
    assert stats.query_count == 1000
    p50 = quantile(stats.query_hist, 0.5)
    p99 = quantile(stats.query_hist, 0.99)
    assert abs(p50 - 50_000) / 50_000 < 0.07
    assert abs(p99 - 99_000) / 99_000 < 0.07
    stats.record_wait(0)
    assert stats.assignments == 1 and stats.wait_hist == {0: 1}


def test_split_statements():
    assert split_statements("show version; show lists;") == ["show version", "show lists"]
    assert split_statements("kill_client 'a;b'") == ["kill_client 'a;b'"]
    assert split_statements(" ; ") == []


def test_schema_round_trip_and_errors():
    import json

    import pytest

    line = json.dumps({"version": 1, "id": 3, "type": "pause", "database": "db"}).encode()
    request = schema.decode_request(line)
    assert isinstance(request, schema.PauseRequest) and request.database == "db"
    with pytest.raises(schema.ProtocolError) as exc:
        schema.decode_request(b'{"version": 2, "type": "status", "id": 1}')
    assert exc.value.code == "bad_version" and exc.value.request_id == 1
    with pytest.raises(schema.ProtocolError):
        schema.decode_request(b"[1]")
    with pytest.raises(schema.ProtocolError) as exc:  # not a TypeError (unhashable type)
        schema.decode_request(b'{"version": 1, "type": ["status"], "id": 4}')
    assert exc.value.code == "unknown_type" and exc.value.request_id == 4
    with pytest.raises(schema.ProtocolError) as exc:  # not a RecursionError
        schema.decode_request(b"[" * 100_000)
    assert exc.value.code == "bad_json"
    for bad in (
        b'{"version": 1, "type": "subscribe", "topics": "stats", "id": 5}',
        b'{"version": 1, "type": "pause", "database": ["db"], "id": 5}',
        b'{"version": 1, "type": "kill_client", "client_id": 7, "id": 5}',
        b'{"version": 1, "type": "config_apply", "text": null, "id": 5}',
    ):
        with pytest.raises(schema.ProtocolError) as exc:  # not a TypeError in the handler
            schema.decode_request(bad)
        assert exc.value.code == "bad_request" and exc.value.request_id == 5
    with pytest.raises(schema.ProtocolError) as exc:
        schema.decode_request(b'{"version": 1, "type": "status", "id": [1]}')
    assert exc.value.code == "bad_request" and exc.value.request_id is None
    assert schema.decode_request(b'{"version": 1, "type": "resume", "database": null}')


# --- one name per route -------------------------------------------------------------------


def two_routes_on_one_backend():
    """A session and a transaction route to the same backend bench|bench (issue 17)."""
    session = a_route(
        key=(0, ("bench_s", None, False, None, "default"), "bench", "bench"),
        database="bench_s", user="bench", rule="bench_s.default_user all",
        backend_db="bench", backend_user="bench", mode="session",
    )  # fmt: skip
    xact = replace(
        session,
        key=(0, ("bench_t", None, False, None, "default"), "bench", "bench"),
        database="bench_t", rule="bench_t.default_user all", mode="transaction",
    )  # fmt: skip
    return aggregate.merge_routes([a_worker(session, xact, clients=6)])


def test_pools_name_routes_by_the_client_database_and_keep_the_backend():
    for result in (
        views.show_pools(two_routes_on_one_backend()),
        odyssey_views.show_pools_extended(two_routes_on_one_backend(), (0.5,)),
    ):
        names = [c for c, _ in result.columns]
        rows = [dict(zip(names, row, strict=True)) for row in result.rows]
        rows = [r for r in rows if r["database"] != "aggregated"]
        assert [(r["database"], r["user"]) for r in rows] == [
            ("bench_s", "bench"),
            ("bench_t", "bench"),
        ]
        assert {(r["backend_database"], r["backend_user"]) for r in rows} == {("bench", "bench")}
        identities = [
            tuple(v for k, v in r.items() if k in ("database", "user", "rule", "generation"))
            for r in rows
        ]
        assert len(set(identities)) == len(rows)


def test_stats_rows_are_per_client_database():
    routes = two_routes_on_one_backend()
    result = views.show_stats(routes, {}, "totals")
    assert [row[0] for row in result.rows] == ["bench_s", "bench_t"]


def test_stats_lines_give_routes_sharing_a_name_their_rule_then_generation():
    a = a_route()
    b = a_route(key=(0, 2, "app", "bob"), rule="app.default_user 10.0.0.0/8")
    c = a_route(key=(3, 1, "app", "bob"), generation=3)
    lines = odyssey_views.stats_lines(aggregate.merge_routes([a_worker(a, b, c)]), {}, 1.0, 9)
    names = [line.split("]")[0] + "]" for line in lines[1:]]
    assert len(set(names)) == 3, names
    assert "[app.bob (rule app.default_user 10.0.0.0/8)]" in names
    assert "[app.bob (rule app.default_user all) (generation 3)]" in names


def test_route_names_are_what_clients_ask_for():
    from pooler.config import parse_text
    from pooler.server.stats import route_names, rule_label

    config = parse_text(
        'log_format "%m" listen { host "*" port 1 }\n'
        'storage "s" { type "remote" host "h" port 5432 }\n'
        'database "app" { user "bob" { authentication "none" storage "s" storage_db "real" storage_user "ro" pool "transaction" } }\n'
        'database default { user default { authentication "none" storage "s" pool "session" } }\n'
        'database "folded" { user default { authentication "none" storage "s" storage_user "ro" pool "session" } }\n'
    )
    named, default, folded = config.rules
    assert route_names(named, "real", "ro") == ("app", "bob")
    assert route_names(default, "shop", "alice") == ("shop", "alice")
    assert route_names(folded, "folded", "ro") == ("folded", "default_user")
    assert rule_label(default) == "default_db.default_user all"


def test_databases_and_users_count_the_routes_of_a_default_rule():
    """SHOW DATABASES/USERS list rules: a `default` rule's routes, named by the client's
    database and user, still count under default_db/default_user."""
    from pooler.config import parse_text

    config = parse_text(
        'log_format "%m" listen { host "*" port 1 }\n'
        'storage "s" { type "remote" host "h" port 5432 }\n'
        'database default { user default { authentication "none" storage "s" pool "session" } }\n'
    )
    route = a_route(
        database="shop", user="alice", rule_database="default_db",
        rule_user="default_user", backend_db="shop", backend_user="alice",
    )  # fmt: skip
    routes = aggregate.merge_routes([a_worker(route)])
    (db_row,) = views.show_databases(config, routes, False).rows
    assert db_row[0] == "default_db" and db_row[12] == 3 and db_row[14] == 3  # servers, clients
    (user_row,) = views.show_users(config, routes).rows
    assert user_row[0] == "default_user" and user_row[5] == 3 and user_row[7] == 3
