"""One worker: its listeners, its clients, its routes and servers, and a 1-second cron."""

from __future__ import annotations

import asyncio
import functools
import select
import socket
import time
from collections.abc import Coroutine, Hashable
from typing import Any

from pooler.config import Config, Endpoint, Listen, Rule, Storage
from pooler.config.diff import RuleIdentity
from pooler.ipc import ClientSlot, PauseState
from pooler.logs import log
from pooler.server import sockopts
from pooler.server.auth_cache import AuthQueryCache
from pooler.server.backend import (
    BackendError,
    ServerConnection,
    ServerGone,
)
from pooler.server.cancels import Cancels
from pooler.server.client import ClientConnection
from pooler.server.console import ConsoleSession
from pooler.server.dns import DnsCache
from pooler.server.drain import RESTART_MESSAGE, SHUTDOWN_MESSAGE, Drain
from pooler.server.groups import GroupChecker
from pooler.server.idle import between_transactions, check_client_timeouts
from pooler.server.lifecycle import ClientState
from pooler.server.link import Supervisor
from pooler.server.login import Login, LoginDeadlines
from pooler.server.memory import Trimmer
from pooler.server.pool import Route, RouteKey
from pooler.server.report import worker_snapshot
from pooler.server.router import ClientKey, Router
from pooler.server.shared_pool import SharedPool, shared_key
from pooler.server.sockopts import TcpOptions
from pooler.server.watchdog import LagWatchdog
from pooler.snapshot import WorkerSnapshot


class _Gate(asyncio.Semaphore):
    """A semaphore that remembers its size (a reload may change it: a new one is made)."""

    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self.limit = limit


class Worker:
    """Owns the clients and server connections of one process."""

    def __init__(
        self,
        config: Config,
        index: int,
        link: Supervisor,
        births: dict[RuleIdentity, int] | None = None,
    ) -> None:
        self.index = index
        self.config = config
        self.births = births or {}  # per rule: the generation whose pools it uses
        self.link = link
        self.slots = link.slots
        self.groups = GroupChecker(self)  # the group rules' members (group_query)
        self.router = Router(config.rules, config.sequential_routing, self.groups.members)
        self.tcp_options = TcpOptions.of(config)  # of every client and server socket
        self.accepted_tcp_options = False  # the listening sockets give them to their clients
        self._server_routing: dict[str, _Gate] = {}  # per storage: server_max_routing
        self.dns = DnsCache()  # storage host names (dns_cache_ttl)
        # client_max_routing, this worker's share (sized at start, as in odyssey); unset (0):
        # no limit (odyssey's 64 per worker would let stalled logins hold up everyone's)
        routing = config.client_max_routing
        self.routing_gate = (
            asyncio.Semaphore(max(1, routing // max(1, config.workers))) if routing > 0 else None
        )
        self.login_deadlines = LoginDeadlines()  # client_login_timeout, one timer for all
        self.routes: dict[RouteKey, Route] = {}
        self.shared_pools: dict[Hashable, SharedPool] = {}  # shared_pool slots by key
        self.soft_oom_usage: int | None = None  # soft_oom: bytes in use while over its limit
        self.clients: set[ClientConnection] = set()
        self.cancels = Cancels(self)  # BackendKeyData and CancelRequests
        self._tasks: set[asyncio.Task[Any]] = set()
        self._servers: list[asyncio.AbstractServer] = []
        self._cron: asyncio.Task[None] | None = None
        self.errors: dict[str, int] = {}  # login refusals by kind (SHOW ERRORS)
        self._recovery: dict[Endpoint, tuple[bool, float]] = {}
        self.auth_cache = AuthQueryCache()
        self.trimmer = Trimmer()  # freed buffers go back to the system (memory.py)
        self.stopping = False
        self.drain: Drain | None = None  # an online restart's drain (the new process serves)
        self._retiring: asyncio.Task[None] | None = None
        self.pause = PauseState()
        self._listening: list[socket.socket] = []
        self.watchdog = LagWatchdog(self)  # replica lag (storage watchdog, catchup_timeout)
        self._watchdog: asyncio.Task[None] | None = None
        self._groups: asyncio.Task[None] | None = None

    # --- tasks ------------------------------------------------------------------------

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Start a named task and keep a reference until it ends."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            log.error("worker", f"task {task.get_name()} failed: {exc!r}")

    # --- listening --------------------------------------------------------------------

    async def start(self, sockets: list[tuple[Listen, socket.socket]]) -> None:
        """Accept clients on the listen sockets inherited from the supervisor."""
        loop = asyncio.get_running_loop()
        self._listening = [sock for _, sock in sockets]
        self._set_listen_options()
        for listen, sock in sockets:
            unix = sock.family == socket.AF_UNIX
            server = await loop.create_server(
                functools.partial(ClientConnection, self, listen, unix),
                sock=sock,
                backlog=listen.backlog,
            )
            self._servers.append(server)
        self._cron = self.spawn(self._cron_loop(), "cron")
        self._watchdog = self.spawn(self.watchdog.run(), "watchdog")
        self._groups = self.spawn(self.groups.run(), "group checker")

    def _set_listen_options(self) -> None:
        """tcp_options on the TCP listening sockets: the sockets accepted there inherit them,
        so a client's needs none set of its own (sockopts.apply: 3.8 µs of each connection's
        CPU, five system calls)."""
        tcp = [s for s in self._listening if s.family in (socket.AF_INET, socket.AF_INET6)]
        options = self.tcp_options
        ok = all([sockopts.set_on_listener(sock, options) for sock in tcp])
        self.accepted_tcp_options = ok and sockopts.inherited(options)

    async def stop_accepting(self) -> None:
        for server in self._servers:
            server.close()
        self._servers.clear()
        self._listening = []  # (closed with their servers)

    def retire(self) -> None:
        """`workers` was lowered and this worker is one too many. The supervisor steers new
        connections to the other workers' sockets; this one accepts what was queued in its
        own, serves its clients until they leave (or, past graceful_shutdown_timeout_ms,
        closes them between transactions) and exits when it has none."""
        if self._retiring is None:
            log.info("supervisor", f"worker {self.index} retires: {len(self.clients)} clients")
            self._retiring = self.spawn(self._retire(), "retire")

    def stay(self) -> None:
        """`workers` grew again before this retiring worker was gone: it goes on serving
        (unless it stopped accepting already: it exits, and the supervisor starts another)."""
        if self._retiring is not None and self._servers:
            self._retiring.cancel()
            self._retiring = None
            log.info("supervisor", f"worker {self.index} stays")

    async def _retire(self) -> None:
        timeout_ms = self.config.graceful_shutdown_timeout_ms
        deadline = time.monotonic() + timeout_ms / 1000 if timeout_ms else None
        while True:
            while self.clients or self._connections_queued():
                await asyncio.sleep(0.05)
                if deadline is not None and time.monotonic() > deadline:
                    for client in list(self.clients):
                        if between_transactions(client):
                            client.fatal("08006", "pooler is shutting down")
            await self.stop_accepting()
            if not self.clients:
                break  # (one accepted meanwhile is served out too)
        log.info("supervisor", f"worker {self.index} retired")
        self.link.retired()

    def _connections_queued(self) -> bool:
        """Connections waiting in this worker's own (TCP) listen sockets."""
        socks = [s for s in self._listening if s.family != socket.AF_UNIX]
        return bool(socks and not self.stopping and select.select(socks, [], [], 0)[0])

    async def shutdown(self, timeout_ms: int, *, restart: bool = False) -> None:
        """Graceful: stop accepting, let transactions finish, drop the clients between
        transactions as `Drain` says (conn_drop_options): for an online restart (the new
        process accepts already) `Drain.choose`, for a shutdown `Drain.choose_between`, as
        odyssey; console sessions go at once."""
        self.stopping = True
        await self.stop_accepting()
        deadline = time.monotonic() + timeout_ms / 1000 if timeout_ms else None
        drain = Drain(self.config.conn_drop_options, time.monotonic())
        if restart:
            self.drain = drain  # (its transaction boundaries too: `transaction_ended`)
        log.info("worker", f"worker {self.index} drains {len(self.clients)} clients")
        choose = drain.choose if restart else drain.choose_between
        message = RESTART_MESSAGE if restart else SHUTDOWN_MESSAGE
        while self.clients:
            clients = [c for c in self.clients if not c.closing]
            for client in [c for c in clients if c.state is ClientState.CONSOLE]:
                client.fatal("08006", message)
            clients = [c for c in clients if c.state is not ClientState.CONSOLE]
            for client in choose(clients, time.monotonic(), between_transactions):
                client.fatal("08006", message)
            if deadline is not None and time.monotonic() > deadline:
                log.info(
                    "worker",
                    f"worker {self.index}: graceful_shutdown_timeout_ms passed, closing "
                    f"{len(self.clients)} clients",
                )
                break
            await asyncio.sleep(0.05)
        self.close_everything()

    def transaction_ended(self, client: ClientConnection) -> None:
        """A transaction-pool client's server went back: during an online restart's drain
        this is its boundary, where it is let go (`Drain.at_boundary`)."""
        if self.drain is not None and self.drain.at_boundary(client, between_transactions):
            client.fatal("08006", RESTART_MESSAGE)

    def close_everything(self) -> None:
        for client in list(self.clients):
            client.close()
        for route in self.routes.values():
            route.close_all()
            for server in list(route.busy):
                server.close()
        if self._cron is not None:
            self._cron.cancel()
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self._groups is not None:
            self._groups.cancel()

    def apply_config(self, config: Config, births: dict[RuleIdentity, int]) -> None:
        """A reload. New clients route by the new rules at once. A route whose rule kept its
        birth (same selector, same storage and pool-defining keys) takes the new settings
        live: pool_size, timeouts, limits... Any other route becomes obsolete: its clients
        go on as they are, its servers close as they come back. Nobody is disconnected."""
        self.config = config
        self.births = births
        self.router = Router(config.rules, config.sequential_routing, self.groups.members)
        self.groups.reloaded()
        self.tcp_options = TcpOptions.of(config)  # new sockets; open ones keep theirs
        self._set_listen_options()
        rules = {rule.identity: rule for rule in config.rules}
        for key, route in self.routes.items():
            birth, identity = key[0], key[1]
            rule = rules.get(identity)
            if rule is not None and births.get(identity) == birth and not route.obsolete:
                route.update_rule(rule, self.storage_of(rule))
            else:
                route.obsolete = True
        for shared in self.shared_pools.values():
            shared.configure(config)
        for client in self.clients:
            if client.route is not None and not client.route.obsolete:
                client.rule = client.route.rule
        log.info("config", f"worker {self.index} applied generation {config.generation}")

    # --- clients ----------------------------------------------------------------------

    def count_error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    def client_connected(self, client: ClientConnection) -> None:
        self.clients.add(client)

    async def client_slot(self, key: tuple[Any, ...], limit: int) -> bool:
        """Count a client against a client_max over all workers (the supervisor decides)."""
        return bool(await self.link.request(ClientSlot(key, limit)))

    def release_client_slot(self, key: tuple[Any, ...]) -> None:
        self.slots.release(key)

    def client_disconnected(self, client: ClientConnection) -> None:
        self.clients.discard(client)
        self.cancels.forget(client)

    def register_cancel_key(self, client: ClientConnection, server_pid: int = 0) -> tuple[int, int]:
        return self.cancels.register(client, server_pid)

    async def cancel(self, pid: int, secret: int, *, forwarded: bool = False) -> None:
        await self.cancels.cancel(pid, secret, forwarded=forwarded)

    async def cancel_backend(self, server: ServerConnection) -> None:
        await self.cancels.cancel_backend(server)

    def start_login(self, client: ClientConnection) -> Login:
        """A new client's login (pooler/server/login.py)."""
        return Login(self, client)

    async def console_login(self, login: Login, rule: Rule) -> None:
        """The admin console (a rule with a `local` storage): see pooler/server/console.py."""
        await ConsoleSession(self, login, rule).run()

    # --- routes -----------------------------------------------------------------------

    def storage_of(self, rule: Rule) -> Storage:
        storage = self.config.storage(rule.storage) if rule.storage is not None else None
        assert storage is not None, "validated config: every rule names a storage"
        return storage

    def storage_password(self, rule: Rule) -> str | None:
        return rule.storage_password or rule.password

    def route_for(
        self, rule: Rule, database: str, user: str, backend_user: str | None = None
    ) -> Route:
        """The route of a client of `rule`; `backend_user` (LDAP storage credentials) replaces
        the rule's storage_user or the client's user name on the server."""
        backend_db = rule.storage_db or database
        backend_user = backend_user or rule.storage_user or user
        identity = rule.identity
        key = (
            self.births.get(identity, self.config.generation),
            identity,
            backend_db,
            backend_user,
        )
        route = self.routes.get(key)
        if route is None:
            shared = self._shared_pool(rule)
            route = Route(self, key, rule, self.storage_of(rule), backend_db, backend_user, shared)
            self.routes[key] = route
            if shared is not None:
                shared.join(route)
            if self.pause.covers(route.backend_db, rule.db_name):
                route.pause()  # a PAUSE in force holds new routes too
        return route

    def _shared_pool(self, rule: Rule) -> SharedPool | None:
        """The worker's side of the rule's `shared_pool`, if it names one."""
        if rule.shared_pool is None:
            return None
        key = shared_key(rule.shared_pool)
        shared = self.shared_pools.get(key)
        if shared is None:
            pool = self.config.shared_pool(rule.shared_pool)
            limit = pool.pool_size if pool is not None else 1
            shared = self.shared_pools[key] = SharedPool(rule.shared_pool, self.slots, limit)
        return shared

    def server_routing_gate(self, storage: Storage) -> asyncio.Semaphore | None:
        """server_max_routing: server logins in progress at once to a storage, this worker's
        share; None when the storage does not set it (odyssey's default is one per worker:
        pooler does not serialise connects unless asked)."""
        limit = storage.server_max_routing
        if limit <= 0:
            return None
        share = max(1, limit // max(1, self.config.workers))
        gate = self._server_routing.get(storage.name)
        if gate is None or gate.limit != share:
            gate = self._server_routing[storage.name] = _Gate(share)
        return gate

    async def resolve(self, host: str, port: int) -> list[str]:
        return await self.dns.resolve(host, port, self.config.dns_cache_ttl)

    def servers_per_endpoint(self) -> dict[Endpoint, int]:
        """Open server connections of this worker by host (leastconn balancing)."""
        counts: dict[Endpoint, int] = {}
        for route in self.routes.values():
            for server in (*route.idle, *route.busy):
                counts[server.endpoint] = counts.get(server.endpoint, 0) + 1
        return counts

    def set_pause(self, pause: PauseState) -> None:
        """The PAUSE in force changed (or this worker starts under one): pause the routes it
        covers, resume the others."""
        self.pause = pause
        for route in self.routes.values():
            if pause.covers(route.backend_db, route.rule.db_name):
                route.pause()
            else:
                route.resume()

    def internal_rule(self, db: str, user: str) -> Rule | None:
        """The rule for the pooler's own connections as user@db (auth_query, group_query):
        an internal rule (`pool_routing "internal"`), else the one a local client would get."""
        internal = self.router.match(ClientKey(db, user, None, internal=True))
        if internal is None:
            internal = self.router.match(ClientKey(db, user, "127.0.0.1"))
        return internal

    async def auth_query_password(self, rule: Rule, user: str) -> str | None:
        """The password (or secret) of `user` as the rule's auth_query returns it, looked up
        through an internal connection as auth_query_user@auth_query_db; cached briefly."""
        key = (rule.auth_query, rule.auth_query_db, rule.auth_query_user, user)
        found, cached = self.auth_cache.get(key, time.monotonic())
        if found:
            return cached
        db, internal_user = rule.auth_query_db or "", rule.auth_query_user or ""
        internal = self.internal_rule(db, internal_user)
        if internal is None or self.storage_of(internal).type != "remote":
            log.error("auth_query", f"no route for auth_query user '{db}.{internal_user}'")
            return None
        route = self.route_for(internal, db, internal_user)
        sql = rule.auth_query or ""
        server = await route.acquire(self.storage_password(internal))
        try:  # the user name is bound as $1 (odyssey's placeholder), never put in the text
            row = await server.fetch_row(sql, (user,) if "$1" in sql else ())
        except (BackendError, ServerGone) as exc:
            log.error("auth_query", f"auth_query failed: {exc}")
            route.discard(server)
            return None
        route.release(server)
        password = row[1] if row is not None and len(row) > 1 else None
        self.auth_cache.put(key, password, time.monotonic())
        return password

    def known_recovery(self, endpoint: Endpoint) -> bool | None:
        """What `in_recovery` last learnt of a host (however old), without asking."""
        known = self._recovery.get(endpoint)
        return None if known is None else known[0]

    async def in_recovery(self, server: ServerConnection, storage: Storage) -> bool | None:
        """Is the server's host a standby? Asked with pg_is_in_recovery(), remembered per
        host for the storage's endpoints_status_poll_interval; None if it can't be told."""
        endpoint = server.endpoint
        now = time.monotonic()
        known = self._recovery.get(endpoint)
        if known is not None and now - known[1] < storage.endpoints_status_poll_interval / 1000:
            return known[0]
        try:
            row = await server.fetch_row("SELECT pg_is_in_recovery()")
        except (BackendError, ServerGone):
            return None
        in_recovery = row is not None and row[0] == "t"
        self._recovery[endpoint] = (in_recovery, now)
        return in_recovery

    def on_grant(self, key: Any) -> None:
        target: Route | SharedPool | None = self.shared_pools.get(key) or self.routes.get(key)
        if target is None:
            self.slots.release(key)
        else:
            target.on_grant()

    def on_shed(self, key: Any, spare: bool) -> None:
        target: Route | SharedPool | None = self.shared_pools.get(key) or self.routes.get(key)
        if target is not None:
            target.on_shed(spare)

    def give_back(
        self, server: ServerConnection, client_gone: bool = False, unusable: bool = False
    ) -> None:
        """The one way a server leaves its client (which has already let go of it): closed
        when `unusable` (it got half a message); straight back to the pool when it is
        reusable as it is and the route has no reset query; else through a reset, always
        when the client is gone (its answers may still be coming). `ClientConnection.
        server_ready` does the straight-back case inline, once a transaction, and calls this
        for every other. (`client_gone` and `unusable` are not keyword-only: CPython 3.11
        calls a function with keyword-only defaults through its slow path.)"""
        route = server.route
        if server.closed:  # closed under its client (a shutdown's end, RECONNECT...)
            route.discard(server)
        elif unusable:
            server.detach()
            route.discard(server)
        elif not client_gone and not route.reset_query and server.reusable:
            route.release(server)
        else:
            server.detach()  # at once: the reset starts on a later loop iteration
            self.spawn(self._reset_and_return(server, client_gone), f"reset {server.id}")

    async def _reset_and_return(self, server: ServerConnection, client_gone: bool) -> None:
        """Reset a server (bounded by pool_reset_timeout_ms) and return it, or close it."""
        route = server.route
        timeout = route.rule.pool_reset_timeout_ms / 1000 or None
        try:
            async with asyncio.timeout(timeout):
                ok = await server.reset(client_gone=client_gone)
        except (TimeoutError, BackendError, ServerGone) as exc:
            log.error("server", f"reset failed, closing server: {exc!r}", server.log_context())
            ok = False
        if ok:
            route.release(server)
        else:
            route.discard(server)

    # --- stats ------------------------------------------------------------------------

    def snapshot(self) -> WorkerSnapshot:
        """Gauges and counters of this worker, per route (sent to the supervisor)."""
        return worker_snapshot(self)

    # --- cron -------------------------------------------------------------------------

    def min_pool_share(self, rule: Rule) -> int:
        """This worker's part of the rule's min_pool_size (odyssey's pool is one for the whole
        process: the workers open min_pool_size servers between them, not each). None for a
        shared_pool rule, as odyssey ("preallocation doesn't work with shared_pools")."""
        if rule.shared_pool is not None:
            return 0
        workers = max(1, self.config.workers)
        share, extra = divmod(rule.min_pool_size, workers)
        return share + (self.index < extra)

    def _open_min_pools(self) -> None:
        """Routes of rules with a min_pool_size exist from the start (and from the reload that
        adds or raises one), without waiting for a first client, as in odyssey; the cron
        fills them. A rule whose backend database or user depends on the client (a `default`
        one without storage_db/storage_user) has no route until a client comes."""
        for rule in self.config.rules:
            if not self.min_pool_share(rule) or self.storage_of(rule).type != "remote":
                continue
            database = rule.storage_db or rule.database
            user = rule.storage_user or (None if rule.group else rule.user)
            if database is not None and user is not None:
                self.route_for(rule, database, user)

    async def _cron_loop(self) -> None:
        while True:
            self._open_min_pools()
            for route in self.routes.values():
                want = self.min_pool_share(route.rule)
                if want and not route.obsolete and route.size < want:
                    self.spawn(route.fill_min_pool(want), f"min_pool {route.name}")
            await asyncio.sleep(1)
            now = time.monotonic()
            self.auth_cache.expire(now)
            self.trimmer.tick()
            for key, route in list(self.routes.items()):
                route.expire_idle()
                if route.obsolete and route.clients == 0 and route.size == 0:
                    del self.routes[key]
                    if route.shared is not None:
                        route.shared.leave(route)
            for shared_key_, shared in list(self.shared_pools.items()):
                if shared.empty:
                    del self.shared_pools[shared_key_]
                else:
                    shared.tick(now)
            for client in list(self.clients):
                check_client_timeouts(client, now)
