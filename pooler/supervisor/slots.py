"""Global pool_size: the supervisor's ledger of server-connection slots (sans-I/O).

Every server connection of a route with `pool_size > 0` holds one slot. Workers ask for a
slot only when they have a waiting client and no idle server; they keep at most one request
per route outstanding, stamped with when its client began to wait (CLOCK_MONOTONIC is one
clock for every process of the host). The broker grants while slots are free; a freed slot
goes to the queued worker holding the fewest slots, the longest waiting first.

When every slot is taken, a queued worker is *owed* one when it holds none at all (pool_size
smaller than the number of workers is ordinary: `workers "auto"` on a big host) or fewer
than its fair share (pool_size // workers that want the route, rounded down). The broker
then asks the richest other worker holding at least two more (any holder, for a worker
holding none; the one granted longest ago among equals) to *shed* one: it closes an idle
server now, or the next one it releases, instead of handing it to a local waiter, and
returns the slot, which goes to the owed worker. Otherwise a worker that asked for no more
slots *lends* one (`spare`), one lend at a time per route: it closes a server once one has
been idle a while (`LEND_IDLE` in the worker), never one merely between two transactions,
and forgets the lend when a client of its waits (it asks for a slot then).
A shed costs PostgreSQL a backend start: lending any server released with no client
waiting swapped slots back and forth between evenly busy workers. So slots take turns
between workers when they are scarcer than workers, no waiting client starves whichever
worker it landed on, idle servers move to where clients wait, and under even or nearly even
load nothing churns: a worker at its fair share just waits for its own servers.

A worker that dies keeps its slots counted (`draining`) until the supervisor has ended its
server connections (`worker_drained`): PostgreSQL still runs them until they notice.

Methods return the actions to perform (`Grant` / `Shed` messages to workers); the
supervisor sends them. Tested without processes.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

RouteKey = tuple[Any, ...]  # a route key, or ("clients", ...) for client_max


@dataclass(frozen=True, slots=True)
class Grant:
    worker: int
    key: RouteKey


@dataclass(frozen=True, slots=True)
class Shed:
    """Give a slot back: close an idle server now, or the next one released. `spare` (a
    lend: the worker asked for no more slots): only a server left idle a while, whenever
    there is one."""

    worker: int
    key: RouteKey
    spare: bool = False


Action = Grant | Shed


@dataclass(slots=True)
class _Route:
    limit: int
    held: Counter[int] = field(default_factory=Counter)
    queue: dict[int, float] = field(default_factory=dict)  # worker -> its client waits since
    shedding: Counter[int] = field(default_factory=Counter)  # sheds asked, not yet done
    lending: Counter[int] = field(default_factory=Counter)  # spare sheds asked, not yet done
    granted: dict[int, int] = field(default_factory=dict)  # worker -> sequence of last grant
    draining: Counter[object] = field(default_factory=Counter)  # dead workers' slots

    @property
    def used(self) -> int:
        return sum(self.held.values()) + sum(self.draining.values())


class SlotBroker:
    """Counts slots per route over all workers; never grants beyond the limit."""

    def __init__(self) -> None:
        self._routes: dict[RouteKey, _Route] = {}
        self._sequence = itertools.count()

    def route_keys(self) -> list[RouteKey]:
        return list(self._routes)

    def held(self, key: RouteKey, worker: int | None = None) -> int:
        route = self._routes.get(key)
        if route is None:
            return 0
        return route.used if worker is None else route.held[worker]

    def queued(self, key: RouteKey) -> list[int]:
        route = self._routes.get(key)
        return [] if route is None else list(route.queue)

    def acquire(
        self, worker: int, key: RouteKey, limit: int, since: float | None = None
    ) -> list[Action]:
        """A worker wants one more slot for `key` (limit = the route's pool_size) for a
        client waiting since `since` (monotonic; None: now, after every earlier request)."""
        route = self._route(key, limit)
        route.lending.pop(worker, None)  # its clients wait: it lends nothing now
        if route.used < limit and not route.queue:
            return [self._grant(route, worker, key)]
        if worker not in route.queue:
            route.queue[worker] = next(self._sequence) if since is None else since
        return self._grant_queued(key, route)

    def try_acquire(self, worker: int, key: RouteKey, limit: int) -> bool:
        """A slot now or never (client_max counts clients this way): no queueing."""
        route = self._route(key, limit)
        if route.used >= limit:
            return False
        route.held[worker] += 1
        return True

    def cancel(self, worker: int, key: RouteKey) -> list[Action]:
        """The worker no longer needs the slot it asked for."""
        route = self._routes.get(key)
        if route is not None:
            route.queue.pop(worker, None)
        return []

    def release(self, worker: int, key: RouteKey) -> list[Action]:
        """A server of `worker` closed: its slot is free again."""
        route = self._routes.get(key)
        if route is None or route.held[worker] <= 0:
            return []
        route.held[worker] -= 1
        if route.shedding[worker] > 0:  # it was shed for another worker: not back to it
            route.shedding[worker] -= 1
            return self._grant_queued(key, route, shed_by=worker)
        if route.lending[worker] > 0:  # lent
            route.lending[worker] -= 1
            return self._grant_queued(key, route, shed_by=worker)
        return self._grant_queued(key, route)

    def set_limit(self, key: RouteKey, limit: int) -> list[Action]:
        """pool_size changed (reload): grant newly free slots, or shed the excess."""
        route = self._routes.get(key)
        if route is None:
            return []
        route.limit = limit
        actions = self._grant_queued(key, route)
        excess = route.used - sum(route.shedding.values()) - limit
        while excess > 0 and any(self._keeps(route, w) > 0 for w in route.held):
            victim = max(route.held, key=lambda w: self._keeps(route, w))
            route.shedding[victim] += 1
            actions.append(Shed(victim, key))
            excess -= 1
        return actions

    def worker_gone(self, worker: int, ghost: object) -> list[Action]:
        """A worker died. Its requests and sheds are void; the slots it held stay counted
        under `ghost` until `worker_drained(ghost)` (its servers may still be running)."""
        actions: list[Action] = []
        for key, route in self._routes.items():
            if route.held[worker] > 0:
                route.draining[ghost] += route.held[worker]
            route.held.pop(worker, None)
            route.shedding.pop(worker, None)
            route.lending.pop(worker, None)
            route.granted.pop(worker, None)
            route.queue.pop(worker, None)
            actions += self._grant_queued(key, route)
        return actions

    def worker_drained(self, ghost: object) -> list[Action]:
        """The dead worker's servers are gone: its slots are free."""
        actions: list[Action] = []
        for key, route in self._routes.items():
            if route.draining.pop(ghost, 0):
                actions += self._grant_queued(key, route)
        return actions

    # --- policy -------------------------------------------------------------------------

    def _route(self, key: RouteKey, limit: int) -> _Route:
        route = self._routes.get(key)
        if route is None:
            route = self._routes[key] = _Route(limit)
        route.limit = limit
        return route

    def _grant(self, route: _Route, worker: int, key: RouteKey) -> Grant:
        route.held[worker] += 1
        route.granted[worker] = next(self._sequence)
        return Grant(worker, key)

    @staticmethod
    def _keeps(route: _Route, worker: int) -> int:
        """Slots the worker holds and has not been asked to give back."""
        return route.held[worker] - route.shedding[worker]

    def _grant_queued(
        self, key: RouteKey, route: _Route, shed_by: int | None = None
    ) -> list[Action]:
        """Free slots to the queued workers holding fewest, longest waiting first (a slot
        just shed goes to another worker than the one that shed it); then make room for the
        owed ones."""
        actions: list[Action] = []
        granted: set[int] = set()
        while route.queue and route.used < route.limit:
            others = [w for w in route.queue if w != shed_by] or list(route.queue)
            worker = min(others, key=lambda w: (route.held[w], route.queue[w]))
            del route.queue[worker]
            granted.add(worker)
            actions.append(self._grant(route, worker, key))
        if route.queue:
            actions += self._balance(key, route, granted)
        return actions

    def _balance(self, key: RouteKey, route: _Route, granted: Collection[int] = ()) -> list[Action]:
        """Every slot is taken and workers queue: make room, one shed per queued worker.
        A queued worker holding none, or fewer than its fair share, is owed one: the richest
        other worker holding at least two more sheds (any when it holds none). Each such
        move evens the split, so under even or nearly even load the moves stop instead of
        handing slots back and forth (a shed costs PostgreSQL a backend start). Otherwise a
        worker that asked for no more slots lends one, a server it left idle a while: one
        lend at a time per route."""
        wanting = {w for w, n in route.held.items() if n > 0} | set(route.queue)
        fair = max(1, route.limit // max(1, len(wanting)))
        actions: list[Action] = []
        queued = sorted(route.queue, key=lambda w: (route.held[w], route.queue[w]))
        for worker in queued[sum(route.shedding.values()) :]:
            has = route.held[worker]
            least = has + 2 if has else 1
            owed = [v for v in route.held if v != worker and self._keeps(route, v) >= least]
            if has >= fair:
                owed = []
            if owed:
                victim = max(owed, key=lambda v: (self._keeps(route, v), -route.granted.get(v, 0)))
                route.shedding[victim] += 1
                actions.append(Shed(victim, key))
                continue
            # (a worker granted just now has a client waiting: not spare)
            spare = [
                v
                for v in route.held
                if v not in route.queue and v not in granted and self._keeps(route, v) > 0
            ]
            if spare and not sum(route.lending.values()):
                victim = max(spare, key=lambda v: (self._keeps(route, v), -route.granted.get(v, 0)))
                route.lending[victim] += 1
                actions.append(Shed(victim, key, spare=True))
            break
        return actions
