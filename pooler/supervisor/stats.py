"""The stats window: every `stats_interval` the workers' snapshots are collected, rates
computed against the previous window, odyssey's stats lines logged (`log_stats`) and the
event pushed to control-socket subscribers; `pool_infos` reads the pools with those rates.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from pooler.control import schema
from pooler.control.server import ControlServer
from pooler.histogram import quantile
from pooler.logs import log
from pooler.snapshot import RouteSnapshot
from pooler.supervisor import aggregate, odyssey_views
from pooler.supervisor.workers import WorkerProcesses


class StatsWindow(WorkerProcesses):
    """The window's state is set by `Supervisor.__init__`."""

    control: ControlServer | None
    # previous merged routes and when they were taken
    stats_prev: dict[Any, RouteSnapshot]
    stats_prev_at: float
    route_rates: dict[Any, aggregate.Rates]
    db_rates: dict[str, aggregate.Rates]
    last_stats: schema.StatsEvent | None

    async def _stats_loop(self) -> None:
        while True:
            interval = max(1, self.config.stats_interval or 1)
            await asyncio.sleep(interval - (time.monotonic() - self.stats_prev_at) % interval)
            if self.stopping:
                continue
            try:
                await self.stats_tick()
            except Exception as exc:  # never let the stats loop die
                log.error("stats", f"stats failed: {exc!r}")

    async def stats_tick(self) -> schema.StatsEvent:
        await self.collect()
        now = time.monotonic()
        seconds = now - self.stats_prev_at
        snapshots = self.snapshots()
        routes = aggregate.merge_routes(snapshots)
        self.route_rates = {
            r.key: aggregate.route_rates(r, self.stats_prev.get(r.key), seconds) for r in routes
        }
        db_rates = {}
        for db, members in aggregate.by_database(routes).items():
            new = aggregate.sum_counters(members)
            old = aggregate.sum_counters(
                [self.stats_prev[m.key] for m in members if m.key in self.stats_prev]
            )
            db_rates[db] = aggregate.rates(new, old, seconds)
        self.db_rates = db_rates
        clients = sum(s.clients for s in snapshots)
        lines = odyssey_views.stats_lines(routes, self.stats_prev, seconds, clients)
        self.stats_prev = {r.key: r for r in routes}
        self.stats_prev_at = now
        if self.config.log_stats:
            for line in lines:
                log.info("stats", line)
        event = schema.StatsEvent(time.time(), seconds, self.pool_infos(routes), lines)
        self.last_stats = event
        if self.control is not None:
            self.control.publish("stats", event)
        return event

    def pool_infos(self, routes: list[RouteSnapshot] | None = None) -> list[schema.PoolInfo]:
        if routes is None:
            routes = aggregate.merge_routes(self.snapshots())
        out = []
        for r in routes:
            rate = self.route_rates.get(r.key, aggregate.Rates())
            out.append(
                schema.PoolInfo(
                    database=r.database,
                    user=r.user,
                    backend_db=r.backend_db,
                    backend_user=r.backend_user,
                    rule=r.rule,
                    generation=r.generation,
                    mode=r.mode,
                    pool_size=r.pool_size,
                    shared_pool=r.shared_pool,
                    obsolete=r.obsolete,
                    clients=r.clients,
                    cl_active=r.cl_active,
                    cl_waiting=r.cl_waiting,
                    sv_active=r.sv_active,
                    sv_idle=r.sv_idle,
                    sv_login=r.sv_login,
                    maxwait_us=r.wait_us,
                    xact_count=r.counters.xact_count,
                    query_count=r.counters.query_count,
                    bytes_received=r.counters.bytes_received,
                    bytes_sent=r.counters.bytes_sent,
                    tps=round(rate.xact_per_sec, 2),
                    qps=round(rate.query_per_sec, 2),
                    avg_xact_us=round(rate.avg_xact_time_us, 1),
                    avg_query_us=round(rate.avg_query_time_us, 1),
                    avg_wait_us=round(rate.avg_wait_time_us, 1),
                    p50_xact_us=quantile(r.counters.xact_hist, 0.5),
                    p95_xact_us=quantile(r.counters.xact_hist, 0.95),
                    p99_xact_us=quantile(r.counters.xact_hist, 0.99),
                    p99_query_us=quantile(r.counters.query_hist, 0.99),
                    p99_wait_us=quantile(r.counters.wait_hist, 0.99),
                )
            )
        return out
