"""The console's SHOW tables in pgbouncer's columns: worker snapshots + config -> result sets.

Nothing here does I/O, so every view is testable without processes. Column names, order and
types are pgbouncer 1.25's (peers.md §2.1, `src/admin.c`: `s` text, `i` int4, `q` int8, `T`
timestamptz). Values are summed over all workers. The commands only odyssey has are in
`odyssey_views`; merging the workers' snapshots is `aggregate`'s.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from pooler import __version__
from pooler.snapshot import RouteCounters, RouteSnapshot, WorkerSnapshot
from pooler.supervisor.aggregate import (
    ROUTE_EXTRA_NAMES,
    ROUTE_EXTRA_TYPES,
    Rates,
    by_database,
    route_extra,
    sum_counters,
)
from pooler.supervisor.result import INT4, TEXT, TIMESTAMPTZ, Result, table

# --- SHOW commands --------------------------------------------------------------------


def show_pools(routes: list[RouteSnapshot]) -> Result:
    rows = []
    for r in routes:
        wait = r.wait_us
        rows.append(
            (
                r.database,
                r.user,
                r.cl_active,
                r.cl_waiting,
                0,
                0,
                r.sv_active,
                0,
                0,
                r.sv_idle,
                0,
                0,
                r.sv_login,
                wait // 1_000_000,
                wait % 1_000_000,
                r.mode,
                r.load_balance_hosts,
                *route_extra(r),
            )
        )
    return table(
        "ssiiiiiiiiiiiiiss" + ROUTE_EXTRA_TYPES,
        [
            "database",
            "user",
            "cl_active",
            "cl_waiting",
            "cl_active_cancel_req",
            "cl_waiting_cancel_req",
            "sv_active",
            "sv_active_cancel",
            "sv_being_canceled",
            "sv_idle",
            "sv_used",
            "sv_tested",
            "sv_login",
            "maxwait",
            "maxwait_us",
            "pool_mode",
            "load_balance_hosts",
            *ROUTE_EXTRA_NAMES,
        ],
        rows,
    )


_STATS_NAMES = (
    "server_assignment_count",
    "xact_count",
    "query_count",
    "received",
    "sent",
    "xact_time",
    "query_time",
    "wait_time",
    "client_parse_count",
    "server_parse_count",
    "bind_count",
)


def _totals_row(c: RouteCounters) -> tuple[int, ...]:
    return (
        c.assignments,
        c.xact_count,
        c.query_count,
        c.bytes_received,
        c.bytes_sent,
        c.xact_time_us,
        c.query_time_us,
        c.wait_time_us,
        c.client_parses,
        c.server_parses,
        c.binds,
    )


def _avg_row(r: Rates) -> tuple[int, ...]:
    return (
        round(r.assign_per_sec),
        round(r.xact_per_sec),
        round(r.query_per_sec),
        round(r.recv_per_sec),
        round(r.sent_per_sec),
        round(r.avg_xact_time_us),
        round(r.avg_query_time_us),
        round(r.avg_wait_time_us),
        0,
        0,
        0,
    )


def show_stats(
    routes: list[RouteSnapshot], db_rates: dict[str, Rates], kind: str = "stats"
) -> Result:
    """SHOW STATS / STATS_TOTALS / STATS_AVERAGES: one row per database clients ask for."""
    rows = []
    for db, members in sorted(by_database(routes).items()):
        totals = _totals_row(sum_counters(members))
        avgs = _avg_row(db_rates.get(db, Rates()))
        if kind == "stats":
            rows.append((db, *totals, *avgs))
        elif kind == "totals":
            rows.append((db, *totals))
        else:
            rows.append((db, *avgs))
    if kind == "stats":
        total_names = [f"total_{n}" for n in _STATS_NAMES]
        avg_names = [
            "avg_server_assignment_count",
            "avg_xact_count",
            "avg_query_count",
            "avg_recv",
            "avg_sent",
            "avg_xact_time",
            "avg_query_time",
            "avg_wait_time",
            "avg_client_parse_count",
            "avg_server_parse_count",
            "avg_bind_count",
        ]
        names = ["database", *total_names, *avg_names]
    else:
        names = [
            "database",
            "server_assignment_count",
            "xact_count",
            "query_count",
            "bytes_received",
            "bytes_sent",
            "xact_time",
            "query_time",
            "wait_time",
        ]
        if kind == "totals":
            names += ["client_parse_count", "server_parse_count", "bind_count"]
        else:
            names += ["avg_client_parse_count", "avg_server_parse_count", "avg_bind_count"]
    return table("s" + "q" * (len(names) - 1), names, rows)


def _route_rules(config: Any) -> list[Any]:
    return [
        rule
        for rule in config.rules
        if (storage := config.storage(rule.storage)) is None or storage.type != "local"
    ]


def _rule_database(route: RouteSnapshot) -> str:
    """The database name of the rule a route came from (SHOW DATABASES lists rules)."""
    return route.rule_database


def _rule_user(route: RouteSnapshot) -> str:
    return route.rule_user


def show_databases(config: Any, routes: list[RouteSnapshot], paused: set[str] | bool) -> Result:
    rows = []
    seen: dict[str, tuple[Any, ...]] = {}
    for rule in _route_rules(config):
        name = rule.db_name
        if name in seen:
            continue
        storage = config.storage(rule.storage)
        members = [r for r in routes if _rule_database(r) == name and not r.obsolete]
        servers = sum(r.servers for r in members)
        clients = sum(r.clients for r in members)
        host = storage.host if storage is not None else None
        port = storage.endpoints[0].port if storage is not None and storage.endpoints else 0
        multi = storage is not None and len(storage.endpoints) > 1
        is_paused = paused is True or (isinstance(paused, set) and name in paused)
        pool_size = config.pool_size_of(rule)  # a shared_pool's, when the rule names one
        seen[name] = (
            name,
            host,
            port,
            rule.storage_db or rule.database or name,
            rule.storage_user,
            pool_size,
            rule.min_pool_size,
            0,
            rule.server_lifetime,
            rule.pool,
            storage.balancing_method if multi and storage is not None else None,
            pool_size,
            servers,
            rule.client_max or 0,
            clients,
            int(is_paused),
            0,
        )
    rows = list(seen.values())
    return table(
        "ssissiiiissiiiiii",
        [
            "name",
            "host",
            "port",
            "database",
            "force_user",
            "pool_size",
            "min_pool_size",
            "reserve_pool_size",
            "server_lifetime",
            "pool_mode",
            "load_balance_hosts",
            "max_connections",
            "current_connections",
            "max_client_connections",
            "current_client_connections",
            "paused",
            "disabled",
        ],
        rows,
    )


def show_users(config: Any, routes: list[RouteSnapshot]) -> Result:
    seen: dict[str, tuple[Any, ...]] = {}
    for rule in _route_rules(config):
        name = rule.user_name
        if name in seen:
            continue
        members = [r for r in routes if _rule_user(r) == name and not r.obsolete]
        pool_size = config.pool_size_of(rule)
        seen[name] = (
            name,
            f"{pool_size:9d}",
            "",
            rule.pool,
            pool_size,
            sum(r.servers for r in members),
            rule.client_max or 0,
            sum(r.clients for r in members),
        )
    return table(
        "ssssiiii",
        [
            "name",
            "pool_size",
            "reserve_pool_size",
            "pool_mode",
            "max_user_connections",
            "current_connections",
            "max_user_client_connections",
            "current_client_connections",
        ],
        list(seen.values()),
    )


def show_lists(config: Any, routes: list[RouteSnapshot], snapshots: list[WorkerSnapshot]) -> Result:
    rules = _route_rules(config)
    clients = sum(s.clients for s in snapshots)
    login = sum(s.login_clients for s in snapshots)
    servers = sum(r.servers for r in routes)
    rows = [
        ("databases", len({r.db_name for r in rules})),
        ("users", len({r.user_name for r in rules})),
        ("peers", 0),
        ("pools", len(routes)),
        ("peer_pools", 0),
        ("free_clients", 0),
        ("used_clients", clients),
        ("login_clients", login),
        ("free_servers", 0),
        ("used_servers", servers),
        ("dns_names", 0),
        ("dns_zones", 0),
        ("dns_queries", 0),
        ("dns_pending", 0),
        ("routing_clients", login),
    ]
    return table("si", ["list", "items"], rows)


def version_string() -> str:
    return f"pooler {__version__}"


def show_version() -> Result:
    return table("s", ["version"], [(version_string(),)])


def show_state(paused: bool) -> Result:
    rows = [("active", "no" if paused else "yes"), ("paused", "yes" if paused else "no")]
    rows.append(("suspended", "no"))
    return table("ss", ["key", "value"], rows)


_CONFIG_SKIP = frozenset(
    {
        "path",
        "generation",
        "warnings",
        "listens",
        "storages",
        "rules",
        "ldap_endpoints",
        "shared_pools",
        "conn_drop_options",
        "soft_oom",
        "query_parsing",
        "hba_rules",
        "load_modules",
        "includes",
        "pos",
        "key_pos",
        "workers_auto",
    }
)


def _config_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def show_config(config: Any) -> Result:
    from pooler.config.diff import LIVE_GLOBAL_KEYS

    rows = []
    for f in fields(config):
        if f.name in _CONFIG_SKIP:
            continue
        default = f.default if f.default is not f.default_factory else None
        rows.append(
            (
                f.name,
                _config_value(getattr(config, f.name)),
                _config_value(default),
                "yes" if f.name in LIVE_GLOBAL_KEYS else "no",
            )
        )
    return table("ssss", ["key", "value", "default", "changeable"], rows)


HELP = """Console usage
\tSHOW HELP|CONFIG|DATABASES|POOLS|POOLS_EXTENDED|CLIENTS|SERVERS|USERS|VERSION
\tSHOW STATS|STATS_TOTALS|STATS_AVERAGES|LISTS|STATE|RULES|ERRORS|STORAGES|LISTEN
\tRELOAD
\tPAUSE [<db>]
\tRESUME [<db>]
\tRECONNECT [<db>]
\tKILL [<db>]
\tKILL_CLIENT <client id>
\tSHUTDOWN"""


def show_help() -> Result:
    return Result([], [], "SHOW", [HELP])


SOCKET_COLUMNS = [
    ("type", TEXT),
    ("user", TEXT),
    ("database", TEXT),
    ("replication", TEXT),
    ("state", TEXT),
    ("addr", TEXT),
    ("port", INT4),
    ("local_addr", TEXT),
    ("local_port", INT4),
    ("connect_time", TIMESTAMPTZ),
    ("request_time", TIMESTAMPTZ),
    ("wait", INT4),
    ("wait_us", INT4),
    ("close_needed", INT4),
    ("ptr", TEXT),
    ("link", TEXT),
    ("remote_pid", INT4),
    ("tls", TEXT),
    ("application_name", TEXT),
    ("prepared_statements", INT4),
    ("id", TEXT),
]


def show_sockets(rows: list[tuple[Any, ...]]) -> Result:
    return Result(list(SOCKET_COLUMNS), rows)
