"""The console views odyssey has and pgbouncer lacks (odyssey.md §3): POOLS_EXTENDED, RULES,
ERRORS, STORAGES and LISTEN, and odyssey's stats_interval log lines (§2.12).

Pure functions of merged routes (`aggregate.merge_routes`), snapshots and the config; values
are summed over all workers.
"""

from __future__ import annotations

from typing import Any

from pooler.config.routing import routing_order
from pooler.histogram import merge_histograms, quantile
from pooler.snapshot import RouteSnapshot, WorkerSnapshot
from pooler.supervisor.aggregate import (
    ROUTE_EXTRA_NAMES,
    ROUTE_EXTRA_TYPES,
    route_extra,
    route_rates,
    route_titles,
    sum_counters,
)
from pooler.supervisor.result import Result, table

DEFAULT_QUANTILES = (0.5, 0.95, 0.99)


# --- stats_interval lines -------------------------------------------------------------


def stats_lines(
    routes: list[RouteSnapshot], previous: dict[Any, RouteSnapshot], seconds: float, clients: int
) -> list[str]:
    """odyssey's per-interval lines (odyssey.md §2.12): `clients N` then one line per route."""
    lines = [f"clients {clients}"]
    titles = route_titles(routes)
    for route in routes:
        r = route_rates(route, previous.get(route.key), seconds)
        name = titles[route.key]
        lines.append(
            f"[{name}] {route.clients} clients, {route.sv_active} active servers, "
            f"{route.sv_idle} idle servers, {round(r.xact_per_sec)} transactions/sec "
            f"({round(r.avg_xact_time_us)} usec) {round(r.query_per_sec)} queries/sec "
            f"({round(r.avg_query_time_us)} usec) {round(r.recv_per_sec)} in bytes/sec, "
            f"{round(r.sent_per_sec)} out bytes/sec"
        )
    return lines


# --- SHOW commands --------------------------------------------------------------------


def _qname(q: float) -> str:
    return f"{q:.6g}"


def parse_quantiles(text: str | None) -> tuple[float, ...]:
    if not text:
        return DEFAULT_QUANTILES
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        return DEFAULT_QUANTILES


def show_pools_extended(routes: list[RouteSnapshot], quantiles: tuple[float, ...]) -> Result:
    """odyssey's POOLS_EXTENDED (pre-1.16 pgbouncer POOLS + bytes + quantiles, then an
    `aggregated` row); quantiles in µs over the route's life; `wait_<q>` columns are ours."""
    names = [
        "database",
        "user",
        "cl_active",
        "cl_waiting",
        "sv_active",
        "sv_idle",
        "sv_used",
        "sv_tested",
        "sv_login",
        "maxwait",
        "maxwait_us",
        "pool_mode",
        "bytes_received",
        "bytes_sent",
        "tcp_conn_count",
    ]
    types = "ss" + "q" * 9 + "s" + "qqq"
    for kind in ("query", "transaction", "wait"):
        for q in quantiles:
            names.append(f"{kind}_{_qname(q)}")
            types += "n"
    names += ROUTE_EXTRA_NAMES
    types += ROUTE_EXTRA_TYPES

    def qs(route_list: list[RouteSnapshot]) -> list[float]:
        out: list[float] = []
        counters = [r.counters for r in route_list]
        for hists in (
            [k.query_hist for k in counters],
            [k.xact_hist for k in counters],
            [k.wait_hist for k in counters],
        ):
            merged = merge_histograms(hists)
            out.extend(round(quantile(merged, q), 1) for q in quantiles)
        return out

    rows: list[tuple[Any, ...]] = []
    for r in routes:
        wait = r.wait_us
        rows.append(
            (
                r.database,
                r.user,
                r.cl_active,
                r.cl_waiting,
                r.sv_active,
                r.sv_idle,
                0,
                0,
                r.sv_login,
                wait // 1_000_000,
                wait % 1_000_000,
                r.mode,
                r.counters.bytes_received,
                r.counters.bytes_sent,
                r.counters.server_connects,
                *qs([r]),
                *route_extra(r),
            )
        )
    total = sum_counters(routes)
    rows.append(
        (
            "aggregated",
            "aggregated",
            *([None] * 10),
            total.bytes_received,
            total.bytes_sent,
            total.server_connects,
            *qs(routes),
            *([None] * len(ROUTE_EXTRA_NAMES)),
        )
    )
    return table(types, names, rows)


def show_rules(config: Any, old_rules: list[Any] | None = None) -> Result:
    rows = []
    """In the order rules are tried (odyssey's), obsolete ones last."""
    current = routing_order(config.rules, config.sequential_routing)
    for rule, obsolete in [(r, False) for r in current] + [(r, True) for r in (old_rules or [])]:
        rows.append(
            (
                rule.database if rule.database is not None else "<default>",
                rule.user_name if rule.user is not None else "<default>",
                rule.address if rule.address is not None else "<default>",
                "all" if rule.conn_type == "default" else rule.conn_type,
                obsolete,
            )
        )
    return table("ssssb", ["database", "user", "address", "connection_type", "obsolete"], rows)


ODYSSEY_ERRORS = (
    "OD_ROUTER_ERROR",
    "OD_ROUTER_ERROR_NOT_FOUND",
    "OD_ROUTER_ERROR_LIMIT",
    "OD_ROUTER_ERROR_LIMIT_ROUTE",
    "OD_ROUTER_ERROR_TIMEDOUT",
    "OD_ROUTER_ERROR_REPLICATION",
    "OD_ROUTER_CLIENT_DISCONNECTED",
    "OD_EOOM",
    "OD_EATTACH",
    "OD_EATTACH_TOO_MANY_CONNECTIONS",
    "OD_EATTACH_TARGET_SESSION_ATTRS_MISMATCH",
    "OD_ESERVER_CONNECT",
    "OD_ESERVER_READ",
    "OD_ESERVER_WRITE",
    "OD_ESERVER_READAHEAD_FULL",
    "OD_ECLIENT_WRITE",
    "OD_ECLIENT_READAHEAD_FULL",
    "OD_ECLIENT_KILLED",
    "OD_ECLIENT_TIMEOUT",
    "OD_ECLIENT_READ",
    "OD_ECLIENT_PROTOCOL_ERROR",
    "OD_ECLIENT_COPY_IN_XPROTO",
    "OD_ESYNC_BROKEN",
    "OD_ECATCHUP_TIMEOUT",
    "OD_EGRACEFUL_SHUTDOWN",
    "OD_EIDLE_TIMEOUT",
    "OD_EIDLE_IN_TRANSACTION_TIMEOUT",
)
# our error kinds (RouteStats.error / worker counters) -> odyssey's names
ERROR_NAMES = {
    "server": "OD_ESERVER_READ",
    "route_not_found": "OD_ROUTER_ERROR_NOT_FOUND",
    "client_max": "OD_ROUTER_ERROR_LIMIT",
    "pool_timeout": "OD_ROUTER_ERROR_TIMEDOUT",
    "server_connect": "OD_ESERVER_CONNECT",
    "killed": "OD_ECLIENT_KILLED",
    "catchup_timeout": "OD_ECATCHUP_TIMEOUT",
}


def error_counts(routes: list[RouteSnapshot], snapshots: list[WorkerSnapshot]) -> dict[str, int]:
    counts = dict.fromkeys(ODYSSEY_ERRORS, 0)
    sources = [r.counters.errors for r in routes] + [s.errors for s in snapshots]
    for errors in sources:
        for kind, n in errors.items():
            name = ERROR_NAMES.get(kind, kind)
            counts[name] = counts.get(name, 0) + n
    return counts


def show_errors(routes: list[RouteSnapshot], snapshots: list[WorkerSnapshot]) -> Result:
    rows = list(error_counts(routes, snapshots).items())
    return table("sq", ["error_type", "count"], rows)


def _tls(value: str | None) -> str:
    return "(None)" if value is None else value


def show_storages(config: Any) -> Result:
    rows = []
    for s in config.storages:
        port = s.endpoints[0].port if s.endpoints else (s.port if s.type != "local" else 0)
        rows.append(
            (
                s.type,
                s.host or "",
                port,
                s.tls,
                _tls(s.tls_cert_file),
                _tls(s.tls_key_file),
                _tls(s.tls_ca_file),
                _tls(s.tls_protocols),
            )
        )
    return table(
        "ssisssss",
        [
            "type",
            "host",
            "port",
            "tls",
            "tls_cert_file",
            "tls_key_file",
            "tls_ca_file",
            "tls_protocols",
        ],
        rows,
    )


def show_listen(config: Any) -> Result:
    rows = [
        (
            listen.host if listen.host is not None else "unix",
            listen.port,
            listen.tls,
            _tls(listen.tls_cert_file),
            _tls(listen.tls_key_file),
            _tls(listen.tls_ca_file),
            _tls(listen.tls_protocols),
        )
        for listen in config.listens
    ]
    return table(
        "sisssss",
        ["host", "port", "tls", "tls_cert_file", "tls_key_file", "tls_ca_file", "tls_protocols"],
        rows,
    )
