"""Workers' snapshots merged: one route per key with counters and gauges summed over the
workers, per-second rates over a stats window, and the names routes are shown by.

Pure functions of `pooler.snapshot` values (`Worker.snapshot()`), used by the console views,
the stats_interval lines, /metrics and the control API.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pooler.snapshot import RouteCounters, RouteSnapshot, WorkerSnapshot

# --- aggregation ----------------------------------------------------------------------


def merge_routes(snapshots: list[WorkerSnapshot]) -> list[RouteSnapshot]:
    """One route per route key, counters and gauges summed over the workers' snapshots."""
    merged: dict[Any, RouteSnapshot] = {}
    for snap in snapshots:
        for route in snap.routes:
            into = merged.get(route.key)
            merged[route.key] = route if into is None else into.plus(route)
    return sorted(merged.values(), key=lambda r: r.key)


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


def rates(new: RouteCounters, old: RouteCounters | None, seconds: float) -> Rates:
    """Rates from two cumulative counter sets `seconds` apart (old None = since zero)."""
    old = old or RouteCounters()
    if seconds <= 0:
        return Rates()
    xacts = max(0, new.xact_count - old.xact_count)
    queries = max(0, new.query_count - old.query_count)
    assigns = max(0, new.assignments - old.assignments)
    return Rates(
        xact_per_sec=xacts / seconds,
        query_per_sec=queries / seconds,
        recv_per_sec=max(0, new.bytes_received - old.bytes_received) / seconds,
        sent_per_sec=max(0, new.bytes_sent - old.bytes_sent) / seconds,
        assign_per_sec=assigns / seconds,
        avg_xact_time_us=max(0, new.xact_time_us - old.xact_time_us) / xacts if xacts else 0.0,
        avg_query_time_us=(
            max(0, new.query_time_us - old.query_time_us) / queries if queries else 0.0
        ),
        avg_wait_time_us=(
            max(0, new.wait_time_us - old.wait_time_us) / assigns if assigns else 0.0
        ),
        window=seconds,
    )


def route_rates(new: RouteSnapshot, old: RouteSnapshot | None, seconds: float) -> Rates:
    """A route's rates since its snapshot of the last window (None: since zero)."""
    return rates(new.counters, old.counters if old is not None else None, seconds)


def sum_counters(routes: list[RouteSnapshot]) -> RouteCounters:
    total = RouteCounters()
    for route in routes:
        total = total.plus(route.counters)
    return total


def by_database(routes: list[RouteSnapshot]) -> dict[str, list[RouteSnapshot]]:
    """Routes grouped by the database their clients ask for."""
    out: dict[str, list[RouteSnapshot]] = {}
    for route in routes:
        out.setdefault(route.database, []).append(route)
    return out


# --- route names ----------------------------------------------------------------------
#
# A route is called by the database and user its clients ask for (pgbouncer's `database`
# and `user`), everywhere: console rows, stats lines, metric labels, the dashboard. What it
# connects to and the rule it came from are extra columns/labels; with the generation the
# rule was born in (an obsolete route keeps its own) they make every route's identity unique.

ROUTE_EXTRA_NAMES = ["backend_database", "backend_user", "rule", "generation"]
ROUTE_EXTRA_TYPES = "sssi"


def route_extra(route: RouteSnapshot) -> tuple[str, str, str, int]:
    return (route.backend_db, route.backend_user, route.rule, route.generation)


def route_titles(routes: list[RouteSnapshot]) -> dict[Any, str]:
    """A unique display name per route key: `db.user`, `obsolete` for an old generation, and
    the rule (then the generation) only where routes would otherwise share a name."""
    titles = {}
    for r in routes:
        title = f"{r.database}.{r.user}"
        titles[r.key] = f"{title} obsolete" if r.obsolete else title
    for extra in ("rule", "generation"):
        seen: dict[str, int] = {}
        for title in titles.values():
            seen[title] = seen.get(title, 0) + 1
        for r in routes:
            if seen[titles[r.key]] > 1:
                value = r.rule if extra == "rule" else r.generation
                titles[r.key] += f" ({extra} {value})"
    return titles
