"""Prometheus text at /metrics (`promhttp_server_port`), served by the supervisor.

Metric names follow odyssey's Go exporter (`odyssey_*`, odyssey.md §4) where it has one, so
existing dashboards keep working; what it lacks is `pooler_*` (latency quantiles per route
from our histograms, workers). Values are collected on each scrape from the workers' latest
snapshots (aggregated) and the last stats window; a tiny asyncio HTTP server in the
supervisor's loop answers GET and HEAD, so no thread touches supervisor state.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from pooler import __version__
from pooler.histogram import quantile
from pooler.logs import log
from pooler.snapshot import RouteSnapshot, WorkerSnapshot
from pooler.supervisor import aggregate, odyssey_views, views

if TYPE_CHECKING:
    from pooler.config import Config
    from pooler.control import schema


class Supervisor(Protocol):
    """What /metrics reads of the supervisor (pooler.supervisor.main.Supervisor), which
    imports this module, not the other way round."""

    @property
    def config(self) -> Config: ...
    @property
    def db_rates(self) -> dict[str, aggregate.Rates]: ...
    def snapshots(self) -> list[WorkerSnapshot]: ...
    def paused_state(self) -> set[str] | bool: ...
    def worker_infos(self) -> list[schema.WorkerInfo]: ...


QUANTILES = (0.5, 0.95, 0.99)


class SupervisorCollector:
    def __init__(self, sup: Supervisor) -> None:
        self.sup = sup

    def collect(self) -> Iterator[Metric]:
        sup = self.sup
        snapshots = sup.snapshots()
        routes = aggregate.merge_routes(snapshots)
        g = GaugeMetricFamily
        version = g("odyssey_version_info", "pooler version", labels=["version"])
        version.add_metric([views.version_string()], 1)
        yield version
        yield g("odyssey_exporter_up", "the pooler answers", value=1)
        yield g("odyssey_is_paused", "PAUSE in effect", value=int(sup.paused_state() is True))

        per_db = [
            ("avg_tx_per_second", "transactions/s", lambda r: r.xact_per_sec),
            ("avg_query_per_second", "queries/s", lambda r: r.query_per_sec),
            ("avg_recv_bytes_per_second", "bytes/s from clients", lambda r: r.recv_per_sec),
            ("avg_sent_bytes_per_second", "bytes/s to clients", lambda r: r.sent_per_sec),
            ("avg_xact_time_seconds", "avg transaction time", lambda r: r.avg_xact_time_us / 1e6),
            ("avg_query_time_seconds", "avg query time", lambda r: r.avg_query_time_us / 1e6),
            ("avg_wait_time_seconds", "avg wait for a server", lambda r: r.avg_wait_time_us / 1e6),
        ]
        for name, help_, get in per_db:
            fam = g(
                f"odyssey_database_{name}",
                f"{help_} over the last stats window",
                labels=["database"],
            )
            for db, rate in sorted(sup.db_rates.items()):
                fam.add_metric([db], get(rate))
            yield fam

        # a route is named by what its clients ask for; its backend, rule and generation
        # keep every series' labels unique (aggregate.route_extra)
        labels = ["user", "database", *aggregate.ROUTE_EXTRA_NAMES]

        def who(r: RouteSnapshot) -> list[str]:
            return [r.user, r.database, *(str(v) for v in aggregate.route_extra(r))]

        def route_gauge(name: str, help_: str, get: Any) -> GaugeMetricFamily:
            fam = g(name, help_, labels=labels)
            for r in routes:
                fam.add_metric(who(r), get(r))
            return fam

        yield route_gauge(
            "odyssey_client_pool_active_route", "clients with a server", lambda r: r.cl_active
        )
        yield route_gauge(
            "odyssey_client_pool_waiting_route", "clients waiting", lambda r: r.cl_waiting
        )
        yield route_gauge(
            "odyssey_client_pool_maxwait_seconds_route",
            "oldest wait",
            lambda r: r.wait_us / 1e6,
        )
        yield route_gauge(
            "odyssey_server_pool_capacity_configured_route", "pool_size", lambda r: r.pool_size
        )
        state = g("odyssey_server_pool_state_route", "servers by state", labels=[*labels, "state"])
        mode = g("odyssey_route_pool_mode_info", "pool mode", labels=[*labels, "mode"])
        for r in routes:
            for s, count in (("active", r.sv_active), ("idle", r.sv_idle), ("login", r.sv_login)):
                state.add_metric([*who(r), s], count)
            mode.add_metric([*who(r), r.mode], 1)
        yield state
        yield mode
        c = CounterMetricFamily
        for name, help_, count_of in (
            ("odyssey_route_bytes_received", "bytes received", lambda k: k.bytes_received),
            ("odyssey_route_bytes_sent", "bytes sent", lambda k: k.bytes_sent),
            ("odyssey_route_tcp_connections", "server connects", lambda k: k.server_connects),
            ("pooler_route_transactions", "xact count", lambda k: k.xact_count),
            ("pooler_route_queries", "query count", lambda k: k.query_count),
        ):
            counter = c(name, help_, labels=labels)
            for r in routes:
                counter.add_metric(who(r), count_of(r.counters))
            yield counter
        for name, hist_name, hist in (
            ("odyssey_route_query_duration_seconds", "query_hist", lambda k: k.query_hist),
            ("odyssey_route_transaction_duration_seconds", "xact_hist", lambda k: k.xact_hist),
            ("pooler_route_wait_duration_seconds", "wait_hist", lambda k: k.wait_hist),
        ):
            fam = g(name, f"{hist_name} quantiles since start", labels=[*labels, "quantile"])
            for r in routes:
                for q in QUANTILES:
                    fam.add_metric([*who(r), f"{q:g}"], quantile(hist(r.counters), q) / 1e6)
            yield fam
        errors = c("odyssey_errors", "errors by kind", labels=["type"])
        for kind, count in odyssey_views.error_counts(routes, snapshots).items():
            errors.add_metric([kind], count)
        yield errors
        lists = views.show_lists(sup.config, routes, snapshots)
        names = {"dns_names": "cached_dns_names", "dns_zones": "cached_dns_zones"}
        names["dns_queries"] = "in_flight_dns_queries"
        for list_name, items in lists.rows:
            if list_name in ("peers", "peer_pools", "dns_pending"):
                continue
            yield g(f"odyssey_lists_{names.get(list_name, list_name)}", list_name, value=items)
        workers = {
            "clients": g("pooler_worker_clients", "clients", labels=["worker"]),
            "servers": g("pooler_worker_servers", "server connections", labels=["worker"]),
            "restarts": g("pooler_worker_restarts", "restarts", labels=["worker"]),
            "cpu_percent": g("pooler_worker_cpu_percent", "cpu %", labels=["worker"]),
            "rss_bytes": g("pooler_worker_rss_bytes", "resident memory", labels=["worker"]),
        }
        for info in sup.worker_infos():
            for attr, fam in workers.items():
                fam.add_metric([str(info.index)], getattr(info, attr))
        yield from workers.values()
        held: list[tuple[GaugeMetricFamily, Callable[[WorkerSnapshot], int]]] = [
            (
                g(
                    "pooler_worker_auth_cache_entries",
                    "auth_query answers cached",
                    labels=["worker"],
                ),
                lambda s: s.auth_cache_entries,
            ),
            (
                g(
                    "pooler_worker_auth_cache_bytes",
                    "memory of the auth_query cache",
                    labels=["worker"],
                ),
                lambda s: s.auth_cache_bytes,
            ),
            (
                g(
                    "pooler_worker_client_buffer_bytes",
                    "bytes held for clients (partial messages, queued input)",
                    labels=["worker"],
                ),
                lambda s: s.client_buffer_bytes,
            ),
        ]
        for snapshot in snapshots:
            for fam, value in held:
                fam.add_metric([str(snapshot.index)], value(snapshot))
        yield from (fam for fam, _ in held)


def render(sup: Supervisor) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SupervisorCollector(sup))
    return generate_latest(registry)


def metrics_hosts(config: Any) -> list[str] | None:
    """Where /metrics listens: `promhttp_server_host` (comma-separated, "*" = every
    interface), else the TCP listen addresses (so a pooler listening on 127.0.0.1 does not
    publish its metrics to the network), else 127.0.0.1. None means every interface."""
    if config.promhttp_server_host is not None:
        hosts = [h.strip() for h in config.promhttp_server_host.split(",") if h.strip()]
    else:
        hosts = [listen.host for listen in config.listens if listen.host is not None]
    if "*" in hosts:
        return None
    return list(dict.fromkeys(hosts)) or ["127.0.0.1"]


MAX_CONNECTIONS = 64  # at once: more are closed unanswered (each holds a supervisor fd)
REQUEST_TIMEOUT = 10  # seconds for the request's head


async def serve_metrics(sup: Supervisor, port: int) -> asyncio.AbstractServer:
    open_now = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal open_now
        if open_now >= MAX_CONNECTIONS:  # thousands of silent connections would take every
            writer.close()  # file descriptor of the supervisor (worker restarts need some)
            return
        open_now += 1
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT)
            method, path, *_ = request.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
            if path.split("?")[0] not in ("/metrics", "/"):
                status, body, ctype = "404 Not Found", b"not found\n", "text/plain"
            elif method not in ("GET", "HEAD"):
                status, body, ctype = "405 Method Not Allowed", b"", "text/plain"
            else:
                status, body, ctype = "200 OK", render(sup), CONTENT_TYPE_LATEST
            head = (
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            ).encode()
            writer.write(head if method == "HEAD" else head + body)
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError):
            pass
        except (ConnectionError, OSError):
            pass
        finally:
            open_now -= 1
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    hosts = metrics_hosts(sup.config)
    # SO_REUSEPORT: the new process of an online restart binds it while the old one serves
    server = await asyncio.start_server(
        handle, host=hosts, port=port, reuse_address=True, reuse_port=True
    )
    where = ", ".join(_address(sock.getsockname()) for sock in server.sockets)
    log.info("metrics", f"serving /metrics on {where}")
    return server


def _address(name: Any) -> str:
    host, port = name[0], name[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


__all__ = ["__version__", "render", "serve_metrics"]
