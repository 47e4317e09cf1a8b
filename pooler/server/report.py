"""What a worker reports of itself: its `WorkerSnapshot` (pooler/snapshot.py), built from its
clients and routes every second and whenever the supervisor asks."""

from __future__ import annotations

import os
import time
from typing import Protocol

from pooler.config import Config
from pooler.server.auth_cache import AuthQueryCache
from pooler.server.client import ClientConnection
from pooler.server.lifecycle import LOGGING_IN
from pooler.server.pool import Route, RouteKey
from pooler.server.stats import route_names, rule_label
from pooler.snapshot import RouteSnapshot, WorkerSnapshot


class Reported(Protocol):
    """What a snapshot reads of its worker (`worker.Worker`)."""

    index: int
    config: Config
    clients: set[ClientConnection]
    routes: dict[RouteKey, Route]
    errors: dict[str, int]
    auth_cache: AuthQueryCache


def worker_snapshot(worker: Reported) -> WorkerSnapshot:
    """Gauges and counters of this worker, per route (sent to the supervisor)."""
    now = time.monotonic()
    active: dict[RouteKey, int] = {}  # per route: clients with a server
    waiting: dict[RouteKey, int] = {}  # clients waiting for one
    oldest_wait: dict[RouteKey, float] = {}  # per route: the longest waiting client's ask
    held = 0  # bytes held for clients: partial messages, input queued for a server
    for client in worker.clients:
        held += client.splitter.pending + client.queued_bytes
        if client.login is not None:
            held += len(client.login.buf)
        route = client.route
        if route is None:
            continue
        since = client.waiting_since
        if client.server is not None:
            active[route.key] = active.get(route.key, 0) + 1
        elif since is not None:
            waiting[route.key] = waiting.get(route.key, 0) + 1
            oldest_wait[route.key] = min(oldest_wait.get(route.key, now), since)
    routes = []
    for key, route in worker.routes.items():
        oldest = oldest_wait.get(key, now)
        database, user = route_names(route.rule, route.backend_db, route.backend_user)
        storage = route.storage
        routes.append(
            RouteSnapshot(
                key=key,
                database=database,
                user=user,
                rule=rule_label(route.rule),
                rule_database=route.rule.db_name,
                rule_user=route.rule.user_name,
                generation=key[0],
                backend_db=route.backend_db,
                backend_user=route.backend_user,
                mode=route.mode or "",  # (always set in a validated config)
                pool_size=route.slot_limit,  # a shared_pool's when it names one
                shared_pool=route.rule.shared_pool,
                obsolete=route.obsolete,
                clients=route.clients,
                cl_active=active.get(key, 0),
                cl_waiting=waiting.get(key, 0),
                sv_active=len(route.busy),
                sv_idle=len(route.idle),
                sv_login=route.connecting,
                maxwait_us=int((now - oldest) * 1e6),
                load_balance_hosts=(
                    storage.balancing_method if len(storage.endpoints) > 1 else None
                ),
                counters=route.stats.counters(),
            )
        )
    return WorkerSnapshot(
        index=worker.index,
        pid=os.getpid(),
        generation=worker.config.generation,
        clients=len(worker.clients),
        login_clients=sum(c.state in LOGGING_IN for c in worker.clients),
        servers=sum(r.size for r in worker.routes.values()),
        routes=tuple(routes),
        errors=dict(worker.errors),
        auth_cache_entries=len(worker.auth_cache),
        auth_cache_bytes=worker.auth_cache.memory_bytes(),
        client_buffer_bytes=held,
    )
