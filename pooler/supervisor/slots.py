"""Global pool_size: the supervisor's ledger of server-connection slots (sans-I/O).

Every server connection of a route with `pool_size > 0` holds one slot. Workers ask for a
slot only when they have a waiting client and no idle server; they keep at most one request
per route outstanding. The broker grants while slots are free and queues requests first
come, first served. When a worker holding fewer slots than its fair share
(pool_size // workers that want the route) is queued, the broker asks the worker holding the
most slots above its share to *shed* one: that worker closes an idle server now, or the
next one it releases, instead of handing it to a local waiter, and returns the slot. So no
worker starves, and under even load nothing churns: a worker at its fair share just waits
for its own servers.

Methods return the actions to perform (`Grant` / `Shed` messages to workers); the
supervisor sends them. Tested without processes.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

RouteKey = tuple[Any, ...]  # (birth generation, rule identity, db, user) or ("clients", ...)


@dataclass(frozen=True, slots=True)
class Grant:
    worker: int
    key: RouteKey


@dataclass(frozen=True, slots=True)
class Shed:
    worker: int
    key: RouteKey


Action = Grant | Shed


@dataclass(slots=True)
class _Route:
    limit: int
    held: Counter[int] = field(default_factory=Counter)
    queue: deque[int] = field(default_factory=deque)  # workers, FIFO, at most once each
    shedding: Counter[int] = field(default_factory=Counter)  # sheds asked, not yet done

    @property
    def used(self) -> int:
        return sum(self.held.values())


class SlotBroker:
    """Counts slots per route over all workers; never grants beyond the limit."""

    def __init__(self) -> None:
        self._routes: dict[RouteKey, _Route] = {}

    def route_keys(self) -> list[RouteKey]:
        return list(self._routes)

    def held(self, key: RouteKey, worker: int | None = None) -> int:
        route = self._routes.get(key)
        if route is None:
            return 0
        return route.used if worker is None else route.held[worker]

    def acquire(self, worker: int, key: RouteKey, limit: int) -> list[Action]:
        """A worker wants one more slot for `key` (limit = the route's pool_size)."""
        route = self._routes.get(key)
        if route is None:
            route = self._routes[key] = _Route(limit)
        route.limit = limit
        if route.used < limit and not route.queue:
            route.held[worker] += 1
            return [Grant(worker, key)]
        if worker not in route.queue:
            route.queue.append(worker)
        return self._balance(key, route)

    def try_acquire(self, worker: int, key: RouteKey, limit: int) -> bool:
        """A slot now or never (client_max counts clients this way): no queueing."""
        route = self._routes.get(key)
        if route is None:
            route = self._routes[key] = _Route(limit)
        route.limit = limit
        if route.used >= limit:
            return False
        route.held[worker] += 1
        return True

    def cancel(self, worker: int, key: RouteKey) -> list[Action]:
        """The worker no longer needs the slot it asked for."""
        route = self._routes.get(key)
        if route is not None and worker in route.queue:
            route.queue.remove(worker)
        return []

    def release(self, worker: int, key: RouteKey) -> list[Action]:
        """A server of `worker` closed: its slot is free again."""
        route = self._routes.get(key)
        if route is None or route.held[worker] <= 0:
            return []
        route.held[worker] -= 1
        if route.shedding[worker] > 0:
            route.shedding[worker] -= 1
        return self._grant_queued(key, route)

    def set_limit(self, key: RouteKey, limit: int) -> list[Action]:
        """pool_size changed (reload): grant newly free slots, or shed the excess."""
        route = self._routes.get(key)
        if route is None:
            return []
        route.limit = limit
        actions = self._grant_queued(key, route)
        excess = route.used - sum(route.shedding.values()) - limit
        while excess > 0:
            victim = max(route.held, key=lambda w: route.held[w] - route.shedding[w])
            route.shedding[victim] += 1
            actions.append(Shed(victim, key))
            excess -= 1
        return actions

    def worker_gone(self, worker: int) -> list[Action]:
        """A worker died: everything it held or asked for is returned."""
        actions: list[Action] = []
        for key, route in self._routes.items():
            route.held.pop(worker, None)
            route.shedding.pop(worker, None)
            if worker in route.queue:
                route.queue.remove(worker)
            actions += self._grant_queued(key, route)
        return actions

    def _grant_queued(self, key: RouteKey, route: _Route) -> list[Action]:
        actions: list[Action] = []
        while route.queue and route.used < route.limit:
            worker = route.queue.popleft()
            route.held[worker] += 1
            actions.append(Grant(worker, key))
        if route.queue:
            actions += self._balance(key, route)
        return actions

    def _balance(self, key: RouteKey, route: _Route) -> list[Action]:
        """Ask the richest worker to shed a slot for the first starved queued worker."""
        wanting = {w for w, n in route.held.items() if n > 0} | set(route.queue)
        fair = max(1, route.limit // max(1, len(wanting)))
        for worker in route.queue:
            if route.held[worker] >= fair:
                continue
            outstanding = sum(route.shedding.values())
            if outstanding >= len([w for w in route.queue if route.held[w] < fair]):
                return []  # enough sheds already on their way
            richest = max(route.held, key=lambda w: route.held[w] - route.shedding[w])
            if route.held[richest] - route.shedding[richest] <= fair:
                return []
            route.shedding[richest] += 1
            return [Shed(richest, key)]
        return []
