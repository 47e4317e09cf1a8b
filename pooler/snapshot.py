"""What a worker reports of itself to the supervisor (the `Stats` IPC message): typed, so
that mypy catches a field the supervisor reads but no worker produces.

`Worker.snapshot()` builds a `WorkerSnapshot` (one `RouteSnapshot` per route, each with its
cumulative `RouteCounters`); the supervisor merges the routes of all workers
(`pooler.supervisor.aggregate.merge_routes`, with `RouteSnapshot.plus`) and reads them by
attribute for the console, the stats lines, /metrics and the control API (which sends its
own `pooler.control.schema` types, not these).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from pooler.histogram import merge_histograms


def _add(a: dict[Any, int], b: dict[Any, int]) -> dict[Any, int]:
    out = dict(a)
    for k, n in b.items():
        out[k] = out.get(k, 0) + n
    return out


@dataclass(frozen=True, slots=True)
class RouteCounters:
    """Cumulative counters of a route (pgbouncer's SHOW STATS names); histograms of
    durations in µs (`pooler.histogram` buckets)."""

    xact_count: int = 0
    query_count: int = 0
    bytes_received: int = 0  # from clients
    bytes_sent: int = 0  # to clients
    xact_time_us: int = 0
    query_time_us: int = 0
    wait_time_us: int = 0
    max_wait_us: int = 0
    server_connects: int = 0
    assignments: int = 0  # a client got a server
    client_parses: int = 0
    server_parses: int = 0
    binds: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    xact_hist: dict[int, int] = field(default_factory=dict)
    query_hist: dict[int, int] = field(default_factory=dict)
    wait_hist: dict[int, int] = field(default_factory=dict)

    def plus(self, other: RouteCounters) -> RouteCounters:
        """Both summed (the longest wait is the larger one)."""
        return RouteCounters(
            xact_count=self.xact_count + other.xact_count,
            query_count=self.query_count + other.query_count,
            bytes_received=self.bytes_received + other.bytes_received,
            bytes_sent=self.bytes_sent + other.bytes_sent,
            xact_time_us=self.xact_time_us + other.xact_time_us,
            query_time_us=self.query_time_us + other.query_time_us,
            wait_time_us=self.wait_time_us + other.wait_time_us,
            max_wait_us=max(self.max_wait_us, other.max_wait_us),
            server_connects=self.server_connects + other.server_connects,
            assignments=self.assignments + other.assignments,
            client_parses=self.client_parses + other.client_parses,
            server_parses=self.server_parses + other.server_parses,
            binds=self.binds + other.binds,
            errors=_add(self.errors, other.errors),
            xact_hist=merge_histograms((self.xact_hist, other.xact_hist)),
            query_hist=merge_histograms((self.query_hist, other.query_hist)),
            wait_hist=merge_histograms((self.wait_hist, other.wait_hist)),
        )


@dataclass(frozen=True, slots=True)
class RouteSnapshot:
    """One route of a worker (or, merged, of all workers: `workers` of them)."""

    key: tuple[Any, ...]  # pooler.server.pool.RouteKey: (birth generation, rule, db, user)
    database: str  # what its clients ask for (pooler.server.stats.route_names)
    user: str
    rule: str  # `db.user selector`
    rule_database: str  # the rule's names (SHOW DATABASES/USERS count routes by rule)
    rule_user: str
    generation: int  # the rule's birth generation (key[0])
    backend_db: str
    backend_user: str
    mode: str  # the rule's pool mode
    pool_size: int  # the servers it may have: its shared_pool's size when it names one
    obsolete: bool  # of an older config generation
    clients: int
    cl_active: int  # clients with a server
    cl_waiting: int  # clients waiting for one
    sv_active: int
    sv_idle: int
    sv_login: int
    maxwait_us: int  # the longest waiting client's wait so far
    load_balance_hosts: str | None  # NULL unless the storage has several hosts
    counters: RouteCounters = field(default_factory=RouteCounters)
    workers: int = 1
    shared_pool: str | None = None  # the shared pool pool_size is of (shared with its rules)

    @property
    def servers(self) -> int:
        return self.sv_active + self.sv_idle + self.sv_login

    @property
    def wait_us(self) -> int:
        """The longest current wait, 0 when nobody waits."""
        return self.maxwait_us if self.cl_waiting else 0

    def plus(self, other: RouteSnapshot) -> RouteSnapshot:
        """The same route on another worker added (gauges and counters summed)."""
        return replace(
            self,
            obsolete=self.obsolete or other.obsolete,
            clients=self.clients + other.clients,
            cl_active=self.cl_active + other.cl_active,
            cl_waiting=self.cl_waiting + other.cl_waiting,
            sv_active=self.sv_active + other.sv_active,
            sv_idle=self.sv_idle + other.sv_idle,
            sv_login=self.sv_login + other.sv_login,
            maxwait_us=max(self.maxwait_us, other.maxwait_us),
            counters=self.counters.plus(other.counters),
            workers=self.workers + other.workers,
        )


@dataclass(frozen=True, slots=True)
class WorkerSnapshot:
    """Gauges and counters of one worker process."""

    index: int
    pid: int
    generation: int  # the config generation it serves
    clients: int
    login_clients: int  # clients not logged in yet
    servers: int
    routes: tuple[RouteSnapshot, ...] = ()
    errors: dict[str, int] = field(default_factory=dict)  # not of a route
    auth_cache_entries: int = 0
    auth_cache_bytes: int = 0
    client_buffer_bytes: int = 0  # held for clients: partial messages, queued input
