"""A `shared_pool`: one pool_size for the routes of every rule that names it (worker side).

odyssey: `shared_pool "name" { pool_size N }` and a rule's `shared_pool "name"` cap the
servers of all those rules together. In pooler the cap is global over the workers, like a
route's own pool_size: every server of a member route holds a slot of the supervisor's
broker under the key `("shared_pool", name)` instead of its route's key, so the broker's
policy between workers (grants, sheds, lends: pooler/supervisor/slots.py) applies to the
pool as a whole, and this object shares the slots of one worker between its member routes.

Between the routes of one worker, as odyssey replaces another route's idle server by one for
the client that waits (`pool_next_idle_shared_locked`):

* a grant goes to the member route with a waiting client holding the fewest servers, the one
  that asked first among equals;
* when this worker holds every slot of the pool (no grant can come before one of its servers
  closes) and a member route's clients wait, an idle server of a member route whose clients
  do not wait is closed at once, as many as clients wait; when there is none, the member
  route holding the most closes its next released server instead of pooling it (one such
  debt per waiting client): the slot goes to the waiting route, so servers move from a route
  with room to spare to one whose clients wait, and no route keeps the pool to itself;
* otherwise (other workers hold slots: the broker's grant may come first, and no server is
  closed for nothing) the worker's cron closes, every second, idle servers of member routes
  without waiting clients that have been idle `LEND_IDLE` (1 s), and a route whose clients
  have waited a second holding no server at all is owed the richest member's next release.

A shed asked by the broker (another worker is owed a slot) closes an idle server of any
member route now, or the next one any member route releases; a lend, a server of any member
route idle `LEND_IDLE`.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import TYPE_CHECKING, Protocol

from pooler.config import Config

if TYPE_CHECKING:
    from pooler.server.slots import SupervisorSlots

LEND_IDLE = 1.0  # as pooler.server.pool.LEND_IDLE


class Route(Protocol):
    """What a shared pool uses of its member routes (pooler.server.pool.Route)."""

    shed_pending: int  # the flag Route.release checks: ask `take_shed`

    @property
    def size(self) -> int: ...
    def has_waiters(self) -> bool: ...
    def waiting_count(self) -> int: ...
    def hand_slot(self) -> bool: ...
    def close_idle(self, min_idle: float, now: float | None = None) -> bool: ...


def shared_key(name: str) -> tuple[str, str]:
    """The broker's key of a shared pool's slots."""
    return ("shared_pool", name)


class SharedPool:
    """The member routes of one shared pool in one worker, and their slot requests."""

    def __init__(self, name: str, slots: SupervisorSlots, limit: int) -> None:
        self.name = name
        self.key = shared_key(name)
        self.limit = limit  # pool_size (a reload updates it: `configure`)
        self._slots = slots
        self.routes: list[Route] = []
        self.requested = False  # one request at a time goes to the supervisor
        self.asking: list[Route] = []  # member routes with clients waiting, first asked first
        self.shed_pending = 0  # broker sheds: the next release of any member route closes
        self.owed: Counter[Route] = Counter()  # releases to close for a starving member
        self.lending = 0  # broker lends: a member server idle LEND_IDLE closes
        self._stalled: set[Route] = set()  # waiting at the last tick already

    def configure(self, config: Config) -> None:
        pool = config.shared_pool(self.name)
        if pool is not None:
            self.limit = pool.pool_size

    def join(self, route: Route) -> None:
        self.routes.append(route)

    def leave(self, route: Route) -> None:
        if route in self.routes:
            self.routes.remove(route)
        if route in self.asking:
            self.asking.remove(route)
        self.owed.pop(route, None)
        self._stalled.discard(route)

    @property
    def empty(self) -> bool:
        return not self.routes

    # --- slots ----------------------------------------------------------------------

    def want(self, route: Route) -> None:
        """A member route's client waits for a new server."""
        self.lending = 0  # our clients wait: we lend nothing (the broker forgets it too)
        if route not in self.asking:
            self.asking.append(route)
        if not self.requested:
            self.requested = True
            self._slots.request(self.key, self.limit)
        if self._full_here():  # no grant can come before one of ours closes
            if not self._close_idle_siblings(time.monotonic(), 0.0):
                self._owe(route)
            self._flag()

    def _full_here(self) -> bool:
        return sum(r.size for r in self.routes) >= self.limit

    def _owe(self, route: Route) -> None:
        """The pool is full here and `route`'s clients wait: the member route holding the
        most (not counting what it already owes) closes its next released server, one debt
        per waiting client at most."""
        waiting = sum(r.waiting_count() for r in self.asking)
        if sum(self.owed.values()) >= waiting:
            return
        richest = max(
            (r for r in self.routes if r is not route),
            key=lambda r: r.size - self.owed[r],
            default=None,
        )
        if richest is not None and richest.size - self.owed[richest] > 0:
            self.owed[richest] += 1

    def on_grant(self) -> None:
        """A slot for this worker: to the asking route holding fewest servers."""
        self.requested = False
        self.asking = [r for r in self.asking if r.has_waiters()]
        while self.asking:
            route = min(self.asking, key=lambda r: r.size)
            self.asking.remove(route)
            if route.hand_slot():
                if route.has_waiters():
                    self.asking.append(route)
                break
        else:
            self._slots.release(self.key)
            return
        if self.asking:
            self.requested = True
            self._slots.request(self.key, self.limit)

    def on_shed(self, spare: bool) -> None:
        """The broker wants a slot back for another worker (see module doc)."""
        if spare:
            self.lending += 1
            self._lend_idle(time.monotonic())
            return
        for route in self.routes:
            if route.close_idle(0.0):
                return
        self.shed_pending += 1
        self._flag()

    def take_shed(self, route: Route) -> bool:
        """Should `route` close the server it releases (a shed or a debt)? (Route.release)"""
        if self.shed_pending:
            self.shed_pending -= 1
        elif self.owed[route]:
            self.owed[route] -= 1
        else:
            route.shed_pending = 0
            return False
        self._flag()
        return True

    def _flag(self) -> None:
        """Route.shed_pending is the cheap flag its release checks: set where a close is due."""
        for route in self.routes:
            route.shed_pending = 1 if (self.shed_pending or self.owed[route]) else 0

    # --- making room between member routes ----------------------------------------------

    def tick(self, now: float) -> None:
        """Once a second (the worker's cron): lends, idle siblings, starving members."""
        self._lend_idle(now)
        waiting = {r for r in self.routes if r.has_waiters()}
        self.asking = [r for r in self.asking if r in waiting]
        if not waiting:
            self._stalled.clear()
            return
        for route in waiting:
            if route not in self.asking:
                self.asking.append(route)
        if not self.requested:  # (e.g. a member left while it asked)
            self.requested = True
            self._slots.request(self.key, self.limit)
        self._close_idle_siblings(now, 0.0 if self._full_here() else LEND_IDLE)
        stalled = waiting & self._stalled  # waited a second at least
        self._stalled = waiting
        if not stalled:
            self._flag()
            return
        starving = [r for r in stalled if r.size == 0]
        debts = sum(self.owed.values())
        for _route in starving[debts:]:
            richest = max(
                (r for r in self.routes if r not in waiting or r.size > 1),
                key=lambda r: r.size - self.owed[r],
                default=None,
            )
            if richest is None or richest.size - self.owed[richest] <= 0:
                break
            self.owed[richest] += 1
        self._flag()

    def _close_idle_siblings(self, now: float, min_idle: float) -> bool:
        """Close servers left idle `min_idle` seconds by member routes whose clients do not
        wait, one per waiting client: their slots go to the waiting clients. Any closed?"""
        wanted = sum(r.waiting_count() for r in self.asking)
        if not wanted:
            return False
        closed = False
        for route in self.routes:
            if route.has_waiters():
                continue
            while wanted and route.close_idle(min_idle, now):
                wanted -= 1
                closed = True
        return closed

    def _lend_idle(self, now: float) -> None:
        for route in self.routes:
            while self.lending and route.close_idle(LEND_IDLE, now):
                self.lending -= 1
