"""Workers' snapshots merged: one dict per route with counters and gauges summed over the
workers, per-second rates over a stats window, and the names routes are shown by.

Pure functions of snapshot dicts (`Worker.snapshot()`), used by the console views, the
stats_interval lines, /metrics and the control API.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pooler.histogram import merge_histograms

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
