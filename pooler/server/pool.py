"""Routes and their pools of server connections.

A route is one rule of one config generation seen from one backend identity (storage_db /
storage_user or the client's own). It owns the idle servers, counts the busy ones and queues
clients waiting for a server, first come first served. `pool_size` 0 means unlimited.

Over 500 lines for a reason: `Route` is one object whose concerns share its lists. The hand-over
of a released server to a waiter (`release`), the global slots (asking, grants, sheds, lends),
the hosts a new server is tried on (balancing, fallback storages, target_session_attrs
steering: `connect`, `_acquire_steered`) and the idle expiry all read and change the same
idle list, busy set and waiter queue, and the relay's fast path calls into it; opening one
connection, which needs none of that, is connect.py's.
"""

from __future__ import annotations

import asyncio
import contextlib
import select
import time
from collections import deque
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Protocol

from pooler.config import Endpoint, Listen, Rule, Storage
from pooler.config.diff import RuleIdentity
from pooler.logs import log
from pooler.protocol import build
from pooler.server.backend import (
    SMART_DISCARD,
    ServerConnection,
)
from pooler.server.connect import (
    TOO_MANY_CONNECTIONS,
    ConnectFailed,
    ConnectWorker,
    Secret,
    connect_to,
    kind_fits,
)
from pooler.server.lifecycle import ServerState
from pooler.server.prepared import KnownStatements
from pooler.server.slots import SupervisorSlots
from pooler.server.stats import RouteStats

RouteKey = tuple[int, RuleIdentity, str, str]  # (birth generation, rule, backend db, user)

if TYPE_CHECKING:
    from pooler.server.shared_pool import SharedPool


class PoolWorker(ConnectWorker, Protocol):
    """What a route, its servers (`backend.ServerWorker`) and its connects
    (`connect.ConnectWorker`) use of its worker (`worker.Worker`)."""

    slots: SupervisorSlots

    def storage_password(self, rule: Rule) -> str | None: ...
    def servers_per_endpoint(self) -> dict[Endpoint, int]: ...
    def known_recovery(self, endpoint: Endpoint) -> bool | None: ...
    async def in_recovery(self, server: ServerConnection, storage: Storage) -> bool | None: ...


LEND_IDLE = 1.0  # seconds a server stays idle before it is lent to another worker (spare shed)


class PoolTimeout(Exception):
    """No server became free within pool_timeout."""


class Waiter(Protocol):
    """What `Route.waiters` holds: a Future (a task in `acquire`) or a `HandOff`."""

    def done(self) -> bool: ...
    def set_result(self, result: ServerConnection | None, /) -> None: ...


class HandOff:
    """A client waiting for a server without a task of its own.

    `release` calls `deliver` with the server in its own callback, so the client relays its
    queued bytes at once (no task wakes up a loop iteration later); the server was unlinked
    just before, so its `released_at` is the time it was handed over. A granted slot is
    delivered as None and the client then starts a task that connects. `expire` is called
    when the wait outlasts pool_timeout (the route's one timer, `Route._expire_waits`).

    A client keeps one for all its waits (`Route.wait` queues it again): a HandOff is in
    `Route.waiters` exactly while it is not `settled`, as whatever settles it (`release`,
    `hand_slot`, `stop_waiting`) also takes it out of the line.
    """

    __slots__ = ("deliver", "expire", "settled", "started")

    def __init__(
        self,
        deliver: Callable[[ServerConnection | None], None],
        expire: Callable[[], None],
    ) -> None:
        self.deliver = deliver
        self.expire = expire
        self.settled = True  # not in line: delivered, timed out, its client left, not queued
        self.started = 0.0  # when the wait began (monotonic)

    def done(self) -> bool:
        return self.settled

    def set_result(self, result: ServerConnection | None, /) -> None:
        self.settled = True
        self.deliver(result)


_IDLE, _TAKEN = ServerState.IDLE, ServerState.TAKEN

_TIMER_RESOLUTION = 0.001  # s: uvloop's timers count milliseconds

_GONE = select.POLLHUP | select.POLLERR | getattr(select, "POLLRDHUP", 0)


def poller_of(server: ServerConnection) -> select.poll | None:
    """A poll object holding the server's socket (registering makes no system call), or
    None when its transport has no socket to poll."""
    transport = server.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None:
        return None
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN | _GONE)
    return poller


class Route:
    """Servers of one (rule, backend database, backend user)."""

    def __init__(
        self,
        worker: PoolWorker,
        key: RouteKey,
        rule: Rule,
        storage: Storage,
        backend_db: str,
        backend_user: str,
        shared: SharedPool | None = None,
    ) -> None:
        self.worker = worker
        self.key = key
        # a `shared_pool` rule's servers hold slots of the pool, not of the route
        self.shared = shared
        self.slot_key: Hashable = key if shared is None else shared.key
        self.rule = rule
        # servers count against a pool_size (global, or a shared pool's): clients may wait
        self.limited = rule.pool_size > 0 or shared is not None
        self.storage = storage
        self.backend_db = backend_db
        self.backend_user = backend_user
        self.obsolete = False
        self.idle: deque[ServerConnection] = deque()
        self.busy: set[ServerConnection] = set()
        self.connecting = 0
        self.waiters: deque[Waiter] = deque()
        self._expiry: asyncio.TimerHandle | None = None  # pool_timeout of the HandOffs
        self._releasing = False  # a release is handing a server over (see `release`)
        self.slot_requested = False  # one slot request at a time goes to the supervisor
        self._pollers: dict[ServerConnection, select.poll | None] = {}  # pool_attach_check
        self.opened: set[ServerConnection] = set()  # logged-in servers the supervisor knows
        self._resumed: asyncio.Event | None = None  # while PAUSEd: set by RESUME
        self.paused = False  # (`_resumed` is not None: read per waiting transaction)
        self.shed_pending = 0  # slots the supervisor asked us to give back
        self.shed_spare = 0  # ... lent: servers left idle LEND_IDLE seconds
        self.clients = 0
        self.stats = RouteStats()
        # a login's ParameterStatus set; replaced, never changed in place (login.py keeps
        # what logins report per dict: `_report`)
        self.server_params: dict[str, str] | None = None
        self._next_endpoint = 0  # round robin start
        self.mode = rule.pool
        self.reset_query = self._reset_query()
        # Named prepared statements are renamed and shared (transaction/statement pools).
        self.shares_statements = self.mode != "session" and rule.pool_reserve_prepared_statement
        self.kinds: dict[ServerConnection, bool] = {}  # a standby's server: True (when asked)
        self.foreign: set[ServerConnection] = set()  # steered to a kind the rule does not take
        self.plan_epoch = 0  # bumped by "cached plan must not change result type"
        self.known_statements = KnownStatements()

    def _reset_query(self) -> str:
        rule = self.rule
        parts: list[str] = []
        if self.mode == "session":
            # A session pool is invisible: the next client gets a fresh session (odyssey
            # runs DISCARD ALL on detach, pgbouncer's server_reset_query is DISCARD ALL).
            # Nothing shares prepared statements here, so the smart list drops them too.
            if rule.pool_discard:
                parts.append("DISCARD ALL;")
            elif rule.pool_smart_discard:
                parts.append(SMART_DISCARD + "DEALLOCATE ALL;")
        else:
            if rule.pool_discard and not rule.pool_reserve_prepared_statement:
                parts.append("DISCARD ALL;")
            elif rule.pool_discard or rule.pool_smart_discard:
                parts.append(SMART_DISCARD)
        if rule.pool_discard_query:
            parts.append(rule.pool_discard_query)
        return "".join(parts)

    def update_rule(self, rule: Rule, storage: Storage) -> None:
        """A reload changed live settings of this route (pool_size, timeouts, ...). A smaller
        pool_size is enforced by the supervisor, which has the excess shed as servers come
        back; nothing in flight is interrupted."""
        self.rule = rule
        self.storage = storage
        self.reset_query = self._reset_query()
        self.limited = rule.pool_size > 0 or self.shared is not None

    def pause(self) -> None:
        """PAUSE: no server is lent until `resume` (acquire waits; clients take the task
        path); idle servers close now, busy ones as they come back (console.py)."""
        if self._resumed is None:
            self._resumed = asyncio.Event()
            self.paused = True
        self.close_all()

    def resume(self) -> None:
        resumed, self._resumed = self._resumed, None
        self.paused = False
        if resumed is not None:
            resumed.set()

    @property
    def name(self) -> str:
        return self.rule.name

    @property
    def slot_limit(self) -> int:
        return self.rule.pool_size if self.shared is None else self.shared.limit

    @property
    def size(self) -> int:
        return len(self.idle) + len(self.busy) + self.connecting

    async def acquire(
        self, password: Secret, listen: Listen | None = None, steer: str | None = None
    ) -> ServerConnection:
        """A logged-in server for a client: idle, new, or the next one released.

        With a pool_size, a new server needs a slot from the supervisor (global limit over
        all workers); meanwhile a server released in this worker serves the waiter too.
        `listen`: the client's listen block (its fallback storages, its balancing_method).
        `steer`: the client's own target_session_attrs where it differs from the rule's
        (`SET odyssey.target_session_attrs`, its listen's): only a server of a host of that
        kind serves it (see `_acquire_steered`).
        """
        if steer is not None:
            return await self._acquire_steered(password, listen, steer)
        started, deadline = await self._after_pause()
        try:
            while True:
                server = self.next_idle()
                if server is not None:
                    self.idle.pop()
                    server.taken()
                    self.busy.add(server)
                    return server
                if not self.limited:
                    try:
                        return await self.connect(password, listen)
                    except ConnectFailed as exc:
                        await self._login_retry(exc, deadline)
                        continue
                handed = await self._wait_in_line(deadline)
                if handed is None:  # a slot was granted to us
                    try:
                        return await self.connect(password, listen)
                    except ConnectFailed as exc:
                        await self._login_retry(exc, deadline)
                        continue
                return handed  # handed over by release(), already counted busy
        finally:
            self.record_wait(started)

    async def _after_pause(self) -> tuple[float, float | None]:
        """PAUSE: nothing is lent until RESUME. Then: when the wait for a server started, and
        its pool_timeout deadline (None: no limit)."""
        while self._resumed is not None:
            await self._resumed.wait()
        started = time.monotonic()
        timeout_ms = self.rule.pool_timeout
        return started, started + timeout_ms / 1000 if timeout_ms else None

    async def _wait_in_line(self, deadline: float | None) -> ServerConnection | None:
        """Queue for the next server released here or a slot granted (None): PoolTimeout
        past `deadline`. A server handed over just as the wait ends is not lost."""
        waiter: asyncio.Future[ServerConnection | None] = asyncio.get_running_loop().create_future()
        self.waiters.append(waiter)
        self._want_slot()
        try:
            if deadline is None:
                return await waiter
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            return await asyncio.wait_for(waiter, remaining)
        except (TimeoutError, asyncio.CancelledError) as exc:
            if waiter in self.waiters:
                self.waiters.remove(waiter)
                if self.slot_requested and not self.has_waiters():
                    self._cancel_request()
            elif waiter.done() and not waiter.cancelled():
                self._unused(waiter.result())  # handed to us as we gave up
            if isinstance(exc, TimeoutError):
                raise PoolTimeout from None
            raise

    async def _acquire_steered(
        self, password: Secret, listen: Listen | None, steer: str
    ) -> ServerConnection:
        """`acquire` for a client steered to a kind of host (odyssey's virtual
        target_session_attrs): an idle server of a host known to be of that kind, else a new
        one on such a host (the storage's hosts of that kind first; `prefer-standby` takes a
        primary when no standby can be had), else, with a pool_size, the next one released
        that fits (one that does not goes on to the next waiter; an idle one that does not
        fit is closed to make room). A server whose kind the rule itself would not take is
        closed when it comes back (`foreign`), so the rule's other clients never get it."""
        started, deadline = await self._after_pause()
        try:
            while True:
                server = self._idle_of_kind(steer)
                if server is not None:
                    return server
                if not self.limited:
                    try:
                        return await self.connect(password, listen, steer)
                    except ConnectFailed as exc:
                        await self._login_retry(exc, deadline)
                        continue
                if self.idle:  # none fits: make room for one that does
                    self.close_idle(0.0)
                handed = await self._wait_in_line(deadline)
                if handed is None:
                    try:
                        return await self.connect(password, listen, steer)
                    except ConnectFailed as exc:
                        await self._login_retry(exc, deadline)
                        continue
                if kind_fits(self.kinds.get(handed), steer, strict=True):
                    return handed
                self.release(handed)  # to the next waiter, or idle
        finally:
            self.record_wait(started)

    def _idle_of_kind(self, steer: str) -> ServerConnection | None:
        """The newest idle server of a host known to be of the kind `steer` asks for."""
        for server in reversed(self.idle):
            if not server.closed and kind_fits(self.kinds.get(server), steer, strict=True):
                self.idle.remove(server)
                server.taken()
                self.busy.add(server)
                return server
        return None

    async def _login_retry(self, failure: ConnectFailed, deadline: float | None) -> None:
        """PostgreSQL refused a login for too many connections (53300): with a pool_timeout,
        wait server_login_retry ms and try again for an idle or a new server, until the
        pool_timeout (odyssey). Anything else, or no time left, is raised."""
        delay = self.worker.config.server_login_retry / 1000
        if (
            failure.fields.get("C") != TOO_MANY_CONNECTIONS
            or deadline is None
            or time.monotonic() + delay >= deadline
        ):
            raise failure
        log.info("server", f"{failure}: retrying in {delay * 1000:g} ms (server_login_retry)")
        await asyncio.sleep(delay)

    def next_idle(self) -> ServerConnection | None:
        """The idle server to use next (the last released; left in `idle`), if any. With
        `pool_attach_check` (the default, as odyssey) a server whose connection PostgreSQL
        closed since (terminated, restarted) though the loop has not read that yet is closed
        and the next one looked at, so no client is given a dead server: one poll(2) with no
        wait on a poll object kept per server until `forget` (0.4 µs a transaction against
        1.0 for a socket object and a register/unregister each time)."""
        idle = self.idle
        while idle:
            server = idle[-1]
            if server.closed:
                idle.pop()
                continue
            if not self.rule.pool_attach_check:
                return server
            try:
                poller = self._pollers[server]
            except KeyError:
                poller = self._pollers[server] = poller_of(server)
            if poller is not None:
                ready = poller.poll(0)  # (the one system call)
                if not ready or not ready[0][1] & _GONE:
                    return server
            elif server.transport is None or not server.transport.is_closing():
                return server  # (nothing to poll: `closed` says the rest)
            idle.pop()
            log.info("server", f"{server.endpoint}: server disconnected, closed before use")
            server.close()
        return None

    def wait(self, handoff: HandOff, started: float) -> None:
        """Queue a task-free waiter, `handoff` (settled: not in line), that found no idle
        server at monotonic time `started`: see `HandOff`."""
        handoff.settled = False
        handoff.started = started
        self.waiters.append(handoff)
        self.shed_spare = 0  # (`_want_slot`, inline: the common case asked already)
        if not self.slot_requested:
            self._want_slot()
        if self._expiry is None and self.rule.pool_timeout:
            self._arm_expiry(started)

    def _arm_expiry(self, started: float) -> None:
        """pool_timeout for the task-free waiters: one timer per route, due when the wait
        of the oldest (begun at monotonic `started`) is over. (A timer per wait cost a
        `call_later` and a `cancel` per waiting transaction: 1.8 µs with uvloop.)"""
        delay = started + self.rule.pool_timeout / 1000 - time.monotonic()
        self._expiry = asyncio.get_running_loop().call_later(max(delay, 0), self._expire_waits)

    def _expire_waits(self) -> None:
        """The route's pool_timeout timer: every task-free waiter whose wait is over
        (within uvloop's timer resolution, 1 ms) is told so, in the order they came; the
        timer is armed again for the oldest of the rest."""
        self._expiry = None
        timeout = self.rule.pool_timeout / 1000  # (a reload may have changed it)
        if not timeout:
            return
        due = time.monotonic() + _TIMER_RESOLUTION - timeout
        expired: list[HandOff] = []
        oldest: float | None = None
        for waiter in self.waiters:
            if type(waiter) is not HandOff or waiter.settled:
                continue  # (a task's wait has its own deadline: `acquire`)
            if waiter.started <= due:
                expired.append(waiter)
            elif oldest is None or waiter.started < oldest:
                oldest = waiter.started
        for handoff in expired:
            if not handoff.settled:
                handoff.expire()
        if oldest is not None and self._expiry is None:
            self._arm_expiry(oldest)

    def stop_waiting(self, handoff: HandOff) -> None:
        handoff.settled = True
        with contextlib.suppress(ValueError):
            self.waiters.remove(handoff)
        if self.slot_requested and not self.has_waiters():
            self._cancel_request()

    def record_wait(self, started: float, now: float | None = None) -> None:
        """A client got a server (or gave up) after waiting since `started` (monotonic),
        until `now` (None: now)."""
        waited = int(((time.monotonic() if now is None else now) - started) * 1e6)
        stats = self.stats
        stats.record_wait(waited)
        if waited > stats.max_wait_us:
            stats.max_wait_us = waited

    def _unused(self, server: ServerConnection | None) -> None:
        if server is None:
            self.worker.slots.release(self.slot_key)
        else:
            self.release(server)

    def _want_slot(self) -> None:
        if self.shared is not None:
            self.shared.want(self)
            return
        self.shed_spare = 0  # our clients wait: we lend nothing (the broker forgets it too)
        if not self.slot_requested:
            self.slot_requested = True
            self.worker.slots.request(self.key, self.rule.pool_size)

    def _cancel_request(self) -> None:
        """No client of ours waits any more (served by servers released here, or gone):
        the slot asked for is not needed. Left queued in the broker, this worker would
        never lend its idle servers and another worker's waiter would time out beside
        them (a grant already on its way is released as unused by `on_grant`)."""
        if self.shared is None:
            self.slot_requested = False
            self.worker.slots.cancel(self.key)

    def on_grant(self) -> None:
        """The supervisor granted the slot we asked for: the first waiter connects."""
        self.slot_requested = False
        if self.hand_slot():
            if self.waiters:
                self._want_slot()
        else:
            self.worker.slots.release(self.key)

    def hand_slot(self) -> bool:
        """A granted slot to the first waiter (it connects): False when none waits."""
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return True
        return False

    def has_waiters(self) -> bool:
        for waiter in self.waiters:  # (the first one answers, as a rule)
            if not (waiter.settled if type(waiter) is HandOff else waiter.done()):
                return True
        return False

    def waiting_count(self) -> int:
        return sum(not waiter.done() for waiter in self.waiters)

    def close_idle(self, min_idle: float, now: float | None = None) -> bool:
        """Close the oldest idle server if it has been idle `min_idle` seconds (a shared
        pool making room for another route, a shed): False when there is none."""
        if now is None:
            now = time.monotonic()
        while self.idle:
            server = self.idle[0]  # (idle servers are taken from the right: oldest first)
            if not server.closed and now - server.released_at < min_idle:
                return False
            self.idle.popleft()
            if not server.closed:
                server.close()
                return True
        return False

    def on_shed(self, spare: bool = False) -> None:
        """The supervisor wants a slot back for another worker: close an idle server now,
        or the next one released. `spare` (a lend: we asked for no more slots): a server
        idle for LEND_IDLE seconds, now or when there is one (`expire_idle`); a server only
        idle between two transactions stays, or slots would go back and forth between busy
        workers. Its connection_lost returns the slot."""
        if self.shared is not None:
            self.shared.on_shed(spare)
            return
        if spare:
            self.shed_spare += 1
            self._lend_idle(time.monotonic())
            return
        while self.idle:
            server = self.idle.popleft()
            if not server.closed:
                server.close()
                return
        self.shed_pending += 1

    def _lend_idle(self, now: float) -> None:
        """Close servers idle LEND_IDLE seconds or more for the lends asked."""
        while self.shed_spare and self.idle:
            server = self.idle[0]  # (idle servers are taken from the right: oldest first)
            if not server.closed and now - server.released_at < LEND_IDLE:
                return
            self.idle.popleft()
            if not server.closed:
                self.shed_spare -= 1
                server.close()

    async def connect(
        self, password: Secret, listen: Listen | None = None, steer: str | None = None
    ) -> ServerConnection:
        """A new logged-in server, on a slot the caller holds (a route without pool_size, or
        one granted to `acquire` or to a `HandOff`): the storage's hosts are tried in turn
        (round robin start), skipping hosts down or not of the wanted kind
        (target_session_attrs), then the hosts of the storages the client's `listen` names.
        `steer` (see `acquire`) replaces the rule's target_session_attrs: hosts known to be
        of that kind are tried first; `prefer-standby` takes a primary only when no standby
        answers."""
        self.connecting += 1
        failure: ConnectFailed | None = None
        server: ServerConnection | None = None
        candidate: ServerConnection | None = None
        primary: ServerConnection | None = None  # prefer-standby's fallback
        wanted = steer or self.rule.target_session_attrs
        method = listen.balancing_method if listen is not None else None
        tried = [(self.storage, endpoint) for endpoint in self._endpoint_order(method)]
        for fallback in self._fallbacks(listen):
            tried.extend((fallback, endpoint) for endpoint in fallback.endpoints)
        if steer is not None:  # hosts known to be of the kind first
            known = self.worker.known_recovery
            tried.sort(key=lambda t: not kind_fits(known(t[1]), steer, strict=True))
        try:
            previous = self.storage
            for storage, endpoint in tried:
                if storage is not previous:
                    log.info("server", f"trying fallback storage '{storage.name}'")
                    previous = storage
                try:
                    candidate = await connect_to(self, endpoint, password, storage)
                except ConnectFailed as exc:
                    failure = exc
                    if exc.fields:  # the server refused us (auth...): another host won't help
                        break
                    continue
                if await self._fits(candidate, wanted, strict=steer is not None):
                    server = candidate
                    break
                if wanted == "prefer-standby" and primary is None:
                    primary, candidate = candidate, None  # kept should no standby answer
                    continue
                candidate.close()
                failure = ConnectFailed(f"no server of storage '{self.storage.name}' is {wanted}")
            if server is None and primary is not None:
                server, primary = primary, None
        except asyncio.CancelledError:  # the client left while we connected: no leak
            for unused in (candidate, primary):
                if unused is not None:
                    unused.close()
            if self.limited:
                self.worker.slots.release(self.slot_key)
            raise
        finally:
            self.connecting -= 1
            if primary is not None:
                primary.close()
        if server is None or server.closed:
            if self.limited:
                self.worker.slots.release(self.slot_key)
            raise failure or ConnectFailed(f"storage '{self.storage.name}' has no hosts")
        server.holds_slot = self.limited  # from now on, closing returns the slot
        if self.storage.show_notice_messages:  # storage balancing { show_notice_messages yes }
            chosen = (method or self.storage.balancing_method).lower()
            server.login_notices.append(
                build.notice_response(
                    "NOTICE", "00000", f"balancing ({chosen}): connected to {server.endpoint}"
                )
            )
        if steer is not None and not kind_fits(
            self.kinds.get(server), self.rule.target_session_attrs
        ):
            self.foreign.add(server)  # not for the rule's other clients
        self.opened.add(server)
        self.worker.slots.opened(self.slot_key, server.endpoint, *server.backend_key)
        self.stats.server_connects += 1
        if self.server_params is None:
            self.server_params = dict(server.params)
        self.busy.add(server)
        return server

    def _fallbacks(self, listen: Listen | None) -> list[Storage]:
        """The listen's `storage` list: storages tried in order when the rule's own cannot be
        reached (odyssey master; one of another type than the rule's is skipped)."""
        if listen is None or not listen.storage:
            return []
        found = (self.worker.config.storage(name) for name in listen.storage)
        return [
            s
            for s in found
            if s is not None and s.type == self.storage.type and s.name != self.storage.name
        ]

    def _endpoint_order(self, method: str | None = None) -> list[Endpoint]:
        """The storage's hosts in the order to try them (odyssey's balancing): round robin,
        or with `balancing { method "leastconn" {} }` (or the client's listen
        `balancing_method`, which wins) the host with the fewest servers of this worker first
        (ties in round-robin order); hosts in the pooler's `availability_zone` before the
        others unless `az_aware no`."""
        storage = self.storage
        endpoints = list(storage.endpoints)
        if not endpoints:
            return endpoints
        start = self._next_endpoint % len(endpoints)
        self._next_endpoint += 1
        endpoints = endpoints[start:] + endpoints[:start]
        if (method or storage.balancing_method).lower() == "leastconn" and len(endpoints) > 1:
            counts = self.worker.servers_per_endpoint()
            endpoints.sort(key=lambda endpoint: counts.get(endpoint, 0))
        zone = self.worker.config.availability_zone
        if zone and storage.balancing_az_aware:
            endpoints.sort(key=lambda endpoint: endpoint.availability_zone != zone)
        return endpoints

    async def _fits(self, server: ServerConnection, wanted: str | None, strict: bool) -> bool:
        """Does the server's host suit target_session_attrs `wanted` (the rule's, or the
        client's own)? Its kind is asked with pg_is_in_recovery(), cached per host for the
        storage's endpoints_status_poll_interval, and remembered for the server (`kinds`).
        A prefer-standby rule takes a primary when it is what we reached; `strict` (a client's
        own) tries the other hosts first."""
        if wanted in (None, "any"):
            return True
        in_recovery = await self.worker.in_recovery(server, self.storage)
        if in_recovery is not None:
            self.kinds[server] = in_recovery
        return kind_fits(in_recovery, wanted, strict)

    def release(self, server: ServerConnection) -> None:
        """Give a clean server back: to the first waiter (it stays busy), else to idle."""
        server.unlink()
        lifetime = self.rule.server_lifetime  # (`_expired`, spelled out: once a transaction)
        if (
            server.closed
            or server.desynced
            or (lifetime and server.released_at - server.created > lifetime)
            or (self.obsolete and not self.waiters)
            or (self.shed_pending and self._shed())
            or (self.foreign and server in self.foreign)
        ):
            self.discard(server)
            return
        if self._releasing:
            # Handed to a waiter inside another release (its client sent only unanswered
            # messages and gave the server straight back): finish the outer one first, so a
            # chain of such clients cannot recurse without bound.
            asyncio.get_running_loop().call_soon(self.release, server)
            return
        waiters = self.waiters
        while waiters:
            waiter = waiters.popleft()
            if type(waiter) is HandOff:  # (most waiters: its set_result, without two calls)
                if waiter.settled:
                    continue
                waiter.settled = True
                deliver = waiter.deliver
            elif waiter.done():
                continue
            else:
                deliver = waiter.set_result
            self._releasing = True
            try:
                deliver(server)
            finally:
                self._releasing = False
            if self.slot_requested:  # (`has_waiters`' common answer, inline: the next waits)
                head = waiters[0] if waiters else None
                if not (type(head) is HandOff and not head.settled) and not self.has_waiters():
                    self._cancel_request()
            return
        self.busy.discard(server)
        if server.state is _TAKEN and not log.debug_enabled:
            server.state = _IDLE  # (`pooled`, inline: `become`'s check on the hot path)
        else:
            server.pooled()
        self.idle.append(server)

    def _shed(self) -> bool:
        """Close a released server for a shed the supervisor asked for?"""
        if self.shared is not None:
            return self.shared.take_shed(self)
        if self.shed_pending:
            self.shed_pending -= 1
            return True
        return False

    def discard(self, server: ServerConnection) -> None:
        """Close a server that cannot be reused (its slot is returned when it is gone)."""
        self.busy.discard(server)
        server.unlink()
        server.close()

    def forget(self, server: ServerConnection) -> None:
        """A server's connection is gone (called from connection_lost)."""
        self.busy.discard(server)
        self._pollers.pop(server, None)
        with contextlib.suppress(ValueError):
            self.idle.remove(server)
        if self.kinds:
            self.kinds.pop(server, None)
            self.foreign.discard(server)
        if server in self.opened:
            self.opened.discard(server)
            self.worker.slots.closed(self.slot_key, server.backend_key[0], server.holds_slot)
        if server.holds_slot:
            server.holds_slot = False
            if self.waiters and not self.idle:  # (it was shed): the waiters need another
                self._want_slot()

    def _expired(self, server: ServerConnection, now: float) -> bool:
        if self.obsolete and not self.waiters:
            return True  # an old config's route: its servers close as they come back
        lifetime = self.rule.server_lifetime
        return bool(lifetime) and now - server.created > lifetime

    def expire_idle(self) -> None:
        """Close idle servers past pool_ttl or server_lifetime (called once a second)."""
        now = time.monotonic()
        ttl = self.rule.pool_ttl
        for server in list(self.idle):
            if server.closed:
                continue
            if (ttl and now - server.released_at > ttl) or self._expired(server, now):
                server.close()
        self._lend_idle(now)

    async def fill_min_pool(self, want: int) -> None:
        """Open servers until the route has `want` of them (its worker's part of min_pool_size),
        then leave them idle."""
        held: list[ServerConnection] = []
        try:
            async with asyncio.timeout(5):
                while self.size < want or len(held) < min(want, self.size):
                    if self.waiters or len(held) >= want:
                        break
                    held.append(await self.acquire(self.worker.storage_password(self.rule)))
        except (ConnectFailed, PoolTimeout, TimeoutError):
            pass
        finally:
            for server in held:
                self.release(server)

    def close_all(self) -> None:
        for server in list(self.idle):
            server.close()
