"""Pure rendering: worker snapshots + config -> console result sets (and control/metrics data).

Nothing here does I/O, so every view is testable without processes. Column names, order and
types are pgbouncer 1.25's where pgbouncer has the command (peers.md §2.1, `src/admin.c`:
`s` text, `i` int4, `q` int8, `T` timestamptz), odyssey's for odyssey-only commands
(odyssey.md §3). Values are summed over all workers.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from pooler import __version__
from pooler.histogram import merge_histograms, quantile, subtract_histogram

TEXT, INT4, INT8, BOOL, TIMESTAMPTZ, NUMERIC = (
    "text",
    "int4",
    "int8",
    "bool",
    "timestamptz",
    "numeric",
)
DEFAULT_QUANTILES = (0.5, 0.95, 0.99)

COUNTERS = (
    "xact_count",
    "query_count",
    "bytes_received",
    "bytes_sent",
    "xact_time_us",
    "query_time_us",
    "wait_time_us",
    "server_connects",
    "assignments",
    "client_parses",
    "server_parses",
    "binds",
)
GAUGES = ("clients", "cl_active", "cl_waiting", "sv_active", "sv_idle", "sv_login")


@dataclass
class Result:
    """One console result set: typed columns, rows, command tag and NOTICEs sent before it."""

    columns: list[tuple[str, str]]
    rows: list[tuple[Any, ...]] = field(default_factory=list)
    tag: str = "SHOW"
    notices: list[str] = field(default_factory=list)


@dataclass
class CommandError:
    sqlstate: str
    message: str


def _result(names_types: str, names: list[str], rows: list[tuple[Any, ...]]) -> Result:
    kinds = {"s": TEXT, "i": INT4, "q": INT8, "T": TIMESTAMPTZ, "b": BOOL, "n": NUMERIC}
    assert len(names_types) == len(names)
    return Result([(n, kinds[t]) for n, t in zip(names, names_types, strict=True)], rows)


# --- aggregation ----------------------------------------------------------------------


def merge_routes(snapshots: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One dict per route key, counters and gauges summed over the workers' snapshots."""
    merged: dict[Any, dict[str, Any]] = {}
    for snap in snapshots:
        for route in snap.get("routes", ()):
            key = tuple(route["key"])
            into = merged.get(key)
            if into is None:
                into = dict(route)
                into["key"] = key
                into["errors"] = dict(route.get("errors", {}))
                for h in ("xact_hist", "query_hist", "wait_hist"):
                    into[h] = dict(route.get(h, {}))
                into["workers"] = 1
                merged[key] = into
                continue
            into["workers"] += 1
            for name in (*COUNTERS, *GAUGES):
                into[name] = into.get(name, 0) + route.get(name, 0)
            into["maxwait_us"] = max(into.get("maxwait_us", 0), route.get("maxwait_us", 0))
            into["max_wait_us"] = max(into.get("max_wait_us", 0), route.get("max_wait_us", 0))
            into["obsolete"] = into.get("obsolete", False) or route.get("obsolete", False)
            for kind, count in route.get("errors", {}).items():
                into["errors"][kind] = into["errors"].get(kind, 0) + count
            for h in ("xact_hist", "query_hist", "wait_hist"):
                into[h] = merge_histograms((into[h], route.get(h, {})))
    return sorted(merged.values(), key=lambda r: r["key"])


@dataclass
class Rates:
    """Per-second rates of one route (or database) over the last stats window."""

    xact_per_sec: float = 0.0
    query_per_sec: float = 0.0
    recv_per_sec: float = 0.0
    sent_per_sec: float = 0.0
    assign_per_sec: float = 0.0
    avg_xact_time_us: float = 0.0
    avg_query_time_us: float = 0.0
    avg_wait_time_us: float = 0.0
    window: float = 0.0


def rates(new: dict[str, Any], old: dict[str, Any] | None, seconds: float) -> Rates:
    """Rates from two cumulative counter sets `seconds` apart (old None = since zero)."""
    old = old or {}

    def d(name: str) -> int:
        return max(0, new.get(name, 0) - old.get(name, 0))

    if seconds <= 0:
        return Rates()
    xacts, queries, assigns = d("xact_count"), d("query_count"), d("assignments")
    return Rates(
        xact_per_sec=xacts / seconds,
        query_per_sec=queries / seconds,
        recv_per_sec=d("bytes_received") / seconds,
        sent_per_sec=d("bytes_sent") / seconds,
        assign_per_sec=assigns / seconds,
        avg_xact_time_us=d("xact_time_us") / xacts if xacts else 0.0,
        avg_query_time_us=d("query_time_us") / queries if queries else 0.0,
        avg_wait_time_us=d("wait_time_us") / assigns if assigns else 0.0,
        window=seconds,
    )


def sum_counters(routes: list[dict[str, Any]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for route in routes:
        for name in COUNTERS:
            total[name] = total.get(name, 0) + route.get(name, 0)
    return total


def by_database(routes: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Routes grouped by the database their clients ask for."""
    out: dict[str, list[dict[str, Any]]] = {}
    for route in routes:
        out.setdefault(route["database"], []).append(route)
    return out


# --- route names ----------------------------------------------------------------------
#
# A route is called by the database and user its clients ask for (pgbouncer's `database`
# and `user`), everywhere: console rows, stats lines, metric labels, the dashboard. What it
# connects to and the rule it came from are extra columns/labels; with the generation the
# rule was born in (an obsolete route keeps its own) they make every route's identity unique.

ROUTE_EXTRA_NAMES = ["backend_database", "backend_user", "rule", "generation"]
ROUTE_EXTRA_TYPES = "sssi"


def route_extra(route: dict[str, Any]) -> tuple[str, str, str, int]:
    return (
        route["backend_db"],
        route["backend_user"],
        route.get("rule", ""),
        route.get("generation", route["key"][0]),
    )


def route_titles(routes: list[dict[str, Any]]) -> dict[Any, str]:
    """A unique display name per route key: `db.user`, `obsolete` for an old generation, and
    the rule (then the generation) only where routes would otherwise share a name."""
    titles = {}
    for r in routes:
        title = f"{r['database']}.{r['user']}"
        titles[r["key"]] = f"{title} obsolete" if r.get("obsolete") else title
    for extra in ("rule", "generation"):
        seen: dict[str, int] = {}
        for title in titles.values():
            seen[title] = seen.get(title, 0) + 1
        for r in routes:
            if seen[titles[r["key"]]] > 1:
                value = r.get("rule", "") if extra == "rule" else route_extra(r)[3]
                titles[r["key"]] += f" ({extra} {value})"
    return titles


# --- stats_interval lines -------------------------------------------------------------


def stats_lines(
    routes: list[dict[str, Any]], previous: dict[Any, dict[str, Any]], seconds: float, clients: int
) -> list[str]:
    """odyssey's per-interval lines (odyssey.md §2.12): `clients N` then one line per route."""
    lines = [f"clients {clients}"]
    titles = route_titles(routes)
    for route in routes:
        r = rates(route, previous.get(route["key"]), seconds)
        name = titles[route["key"]]
        lines.append(
            f"[{name}] {route['clients']} clients, {route['sv_active']} active servers, "
            f"{route['sv_idle']} idle servers, {round(r.xact_per_sec)} transactions/sec "
            f"({round(r.avg_xact_time_us)} usec) {round(r.query_per_sec)} queries/sec "
            f"({round(r.avg_query_time_us)} usec) {round(r.recv_per_sec)} in bytes/sec, "
            f"{round(r.sent_per_sec)} out bytes/sec"
        )
    return lines


# --- SHOW commands --------------------------------------------------------------------


def show_pools(routes: list[dict[str, Any]]) -> Result:
    rows = []
    for r in routes:
        wait = r.get("maxwait_us", 0) if r.get("cl_waiting") else 0
        rows.append(
            (
                r["database"],
                r["user"],
                r["cl_active"],
                r["cl_waiting"],
                0,
                0,
                r["sv_active"],
                0,
                0,
                r["sv_idle"],
                0,
                0,
                r["sv_login"],
                wait // 1_000_000,
                wait % 1_000_000,
                r["mode"],
                r.get("load_balance_hosts"),
                *route_extra(r),
            )
        )
    return _result(
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


def _qname(q: float) -> str:
    return f"{q:.6g}"


def parse_quantiles(text: str | None) -> tuple[float, ...]:
    if not text:
        return DEFAULT_QUANTILES
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        return DEFAULT_QUANTILES


def show_pools_extended(routes: list[dict[str, Any]], quantiles: tuple[float, ...]) -> Result:
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

    def qs(route_list: list[dict[str, Any]]) -> list[float]:
        out: list[float] = []
        for hist in ("query_hist", "xact_hist", "wait_hist"):
            merged = merge_histograms(r.get(hist, {}) for r in route_list)
            out.extend(round(quantile(merged, q), 1) for q in quantiles)
        return out

    rows: list[tuple[Any, ...]] = []
    for r in routes:
        wait = r.get("maxwait_us", 0) if r.get("cl_waiting") else 0
        rows.append(
            (
                r["database"],
                r["user"],
                r["cl_active"],
                r["cl_waiting"],
                r["sv_active"],
                r["sv_idle"],
                0,
                0,
                r["sv_login"],
                wait // 1_000_000,
                wait % 1_000_000,
                r["mode"],
                r.get("bytes_received", 0),
                r.get("bytes_sent", 0),
                r.get("server_connects", 0),
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
            total.get("bytes_received", 0),
            total.get("bytes_sent", 0),
            total.get("server_connects", 0),
            *qs(routes),
            *([None] * len(ROUTE_EXTRA_NAMES)),
        )
    )
    return _result(types, names, rows)


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


def _totals_row(c: dict[str, int]) -> tuple[int, ...]:
    return (
        c.get("assignments", 0),
        c.get("xact_count", 0),
        c.get("query_count", 0),
        c.get("bytes_received", 0),
        c.get("bytes_sent", 0),
        c.get("xact_time_us", 0),
        c.get("query_time_us", 0),
        c.get("wait_time_us", 0),
        c.get("client_parses", 0),
        c.get("server_parses", 0),
        c.get("binds", 0),
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
    routes: list[dict[str, Any]], db_rates: dict[str, Rates], kind: str = "stats"
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
    return _result("s" + "q" * (len(names) - 1), names, rows)


def _route_rules(config: Any) -> list[Any]:
    return [
        rule
        for rule in config.rules
        if (storage := config.storage(rule.storage)) is None or storage.type != "local"
    ]


def _rule_database(route: dict[str, Any]) -> str:
    """The database name of the rule a route came from (SHOW DATABASES lists rules)."""
    return str(route.get("rule_database", route["database"]))


def _rule_user(route: dict[str, Any]) -> str:
    return str(route.get("rule_user", route["user"]))


def show_databases(config: Any, routes: list[dict[str, Any]], paused: set[str] | bool) -> Result:
    rows = []
    seen: dict[str, tuple[Any, ...]] = {}
    for rule in _route_rules(config):
        name = rule.db_name
        if name in seen:
            continue
        storage = config.storage(rule.storage)
        members = [r for r in routes if _rule_database(r) == name and not r.get("obsolete")]
        servers = sum(r["sv_active"] + r["sv_idle"] + r["sv_login"] for r in members)
        clients = sum(r["clients"] for r in members)
        host = storage.host if storage is not None else None
        port = storage.endpoints[0].port if storage is not None and storage.endpoints else 0
        multi = storage is not None and len(storage.endpoints) > 1
        is_paused = paused is True or (isinstance(paused, set) and name in paused)
        seen[name] = (
            name,
            host,
            port,
            rule.storage_db or rule.database or name,
            rule.storage_user,
            rule.pool_size,
            rule.min_pool_size,
            0,
            rule.server_lifetime,
            rule.pool,
            storage.balancing_method if multi and storage is not None else None,
            rule.pool_size,
            servers,
            rule.client_max or 0,
            clients,
            int(is_paused),
            0,
        )
    rows = list(seen.values())
    return _result(
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


def show_users(config: Any, routes: list[dict[str, Any]]) -> Result:
    seen: dict[str, tuple[Any, ...]] = {}
    for rule in _route_rules(config):
        name = rule.user_name
        if name in seen:
            continue
        members = [r for r in routes if _rule_user(r) == name and not r.get("obsolete")]
        seen[name] = (
            name,
            f"{rule.pool_size:9d}",
            "",
            rule.pool,
            rule.pool_size,
            sum(r["sv_active"] + r["sv_idle"] + r["sv_login"] for r in members),
            rule.client_max or 0,
            sum(r["clients"] for r in members),
        )
    return _result(
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


def show_lists(
    config: Any, routes: list[dict[str, Any]], snapshots: list[dict[str, Any]]
) -> Result:
    rules = _route_rules(config)
    clients = sum(s.get("clients", 0) for s in snapshots)
    login = sum(s.get("login_clients", 0) for s in snapshots)
    servers = sum(r["sv_active"] + r["sv_idle"] + r["sv_login"] for r in routes)
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
    return _result("si", ["list", "items"], rows)


def version_string() -> str:
    return f"pooler {__version__}"


def show_version() -> Result:
    return _result("s", ["version"], [(version_string(),)])


def show_state(paused: bool) -> Result:
    rows = [("active", "no" if paused else "yes"), ("paused", "yes" if paused else "no")]
    rows.append(("suspended", "no"))
    return _result("ss", ["key", "value"], rows)


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
    return _result("ssss", ["key", "value", "default", "changeable"], rows)


def show_rules(config: Any, old_rules: list[Any] | None = None) -> Result:
    rows = []
    for rule, obsolete in [(r, False) for r in config.rules] + [
        (r, True) for r in (old_rules or [])
    ]:
        rows.append(
            (
                rule.database if rule.database is not None else "<default>",
                rule.user_name if rule.user is not None else "<default>",
                rule.address if rule.address is not None else "<default>",
                "all" if rule.conn_type == "default" else rule.conn_type,
                obsolete,
            )
        )
    return _result("ssssb", ["database", "user", "address", "connection_type", "obsolete"], rows)


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


def error_counts(routes: list[dict[str, Any]], snapshots: list[dict[str, Any]]) -> dict[str, int]:
    counts = dict.fromkeys(ODYSSEY_ERRORS, 0)
    sources = [r.get("errors", {}) for r in routes] + [s.get("errors", {}) for s in snapshots]
    for errors in sources:
        for kind, n in errors.items():
            name = ERROR_NAMES.get(kind, kind)
            counts[name] = counts.get(name, 0) + n
    return counts


def show_errors(routes: list[dict[str, Any]], snapshots: list[dict[str, Any]]) -> Result:
    rows = list(error_counts(routes, snapshots).items())
    return _result("sq", ["error_type", "count"], rows)


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
    return _result(
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
    return _result(
        "sisssss",
        ["host", "port", "tls", "tls_cert_file", "tls_key_file", "tls_ca_file", "tls_protocols"],
        rows,
    )


HELP = """Console usage
\tSHOW HELP|CONFIG|DATABASES|POOLS|POOLS_EXTENDED|CLIENTS|SERVERS|USERS|VERSION
\tSHOW STATS|STATS_TOTALS|STATS_AVERAGES|LISTS|STATE|RULES|ERRORS|STORAGES|LISTEN
\tRELOAD
\tPAUSE [<db>]
\tRESUME [<db>]
\tRECONNECT [<db>]
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


# --- window helpers for the supervisor -------------------------------------------------


def window_histograms(
    routes: list[dict[str, Any]], previous: dict[Any, dict[str, Any]]
) -> dict[Any, dict[str, dict[int, int]]]:
    """Histogram deltas per route since `previous` (for windowed quantiles)."""
    out = {}
    for route in routes:
        old = previous.get(route["key"], {})
        out[route["key"]] = {
            h: subtract_histogram(route.get(h, {}), old.get(h, {}))
            for h in ("xact_hist", "query_hist", "wait_hist")
        }
    return out
