"""Pure console rendering: snapshots -> rows, rates, stats lines, histograms."""

from __future__ import annotations

from pooler.control import schema
from pooler.server.stats import RouteStats, quantile
from pooler.supervisor import views
from pooler.supervisor.console import split_statements


def snap(**counters):
    route = {
        "key": (0, 1, "app", "bob"),
        "database": "app",
        "user": "default_user",
        "backend_db": "app",
        "backend_user": "bob",
        "mode": "transaction",
        "pool_size": 10,
        "obsolete": False,
        "clients": 3,
        "cl_active": 1,
        "cl_waiting": 2,
        "sv_active": 1,
        "sv_idle": 2,
        "sv_login": 0,
        "maxwait_us": 1_500_000,
        **counters,
    }
    return {"clients": 3, "routes": [route]}


def test_merge_sums_workers_and_keeps_max_wait():
    a = snap(xact_count=10, bytes_received=100, maxwait_us=5)
    b = snap(xact_count=5, bytes_received=50, maxwait_us=7)
    (route,) = views.merge_routes([a, b])
    assert route["xact_count"] == 15 and route["bytes_received"] == 150
    assert route["clients"] == 6 and route["cl_waiting"] == 4 and route["maxwait_us"] == 7


def test_pools_row_shape():
    result = views.show_pools(views.merge_routes([snap()]))
    assert [c for c, _ in result.columns][:4] == ["database", "user", "cl_active", "cl_waiting"]
    (row,) = result.rows
    assert row[:4] == ("app", "bob", 1, 2)
    assert row[13:15] == (1, 500_000)  # maxwait s, us


def test_stats_line_is_odysseys_format():
    old = views.merge_routes([snap(xact_count=0, query_count=0, bytes_received=0)])[0]
    new = snap(
        xact_count=300, query_count=600, bytes_received=3000, bytes_sent=6000,
        xact_time_us=300_000, query_time_us=300_000, obsolete=True,
    )  # fmt: skip
    lines = views.stats_lines(views.merge_routes([new]), {old["key"]: old}, 3.0, 3)
    assert lines == [
        "clients 3",
        "[app.default_user obsolete] 3 clients, 1 active servers, 2 idle servers, "
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
