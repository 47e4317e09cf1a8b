"""The admin console session in a worker, and the worker's side of console/control actions.

A client whose rule's storage has `type "local"` ends its login here. The session speaks the
simple query protocol only; every statement of a Query goes to the supervisor, which renders
the answer from all workers' snapshots (so values are global), and comes back as typed result
sets. The supervisor in turn asks each worker for its client and server lists, and orders
kills (KILL_CLIENT, KILL), pauses and reconnects; those requests are answered by `handle_ask` below.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from pooler import __version__
from pooler.config import Config, Rule
from pooler.ipc import ConsoleQuery, PauseState
from pooler.logs import log
from pooler.protocol import ProtocolError, build
from pooler.server.client import ClientConnection
from pooler.server.lifecycle import ClientState
from pooler.server.link import Supervisor
from pooler.server.login import Login
from pooler.server.pool import Route, RouteKey
from pooler.snapshot import WorkerSnapshot

Q, X, S, F = ord("Q"), ord("X"), ord("S"), ord("F")
EXTENDED = frozenset(b"PBDEC")  # extended protocol: an error, then skipped until Sync
IGNORED = frozenset(b"Hdcf")  # Flush; CopyData/CopyDone/CopyFail outside COPY


def _unsupported(msg_type: int) -> bytes:
    return build.error_response("ERROR", "0A000", f"unsupported request '{chr(msg_type)}'")


CONSOLE_PARAMS = {
    "server_version": __version__,
    "server_encoding": "UTF8",
    "client_encoding": "UTF8",
    "DateStyle": "ISO",
    "TimeZone": "GMT",
    "standard_conforming_strings": "on",
    "integer_datetimes": "on",
}


class ConsoleWorker(Protocol):
    """What the console and the worker's answers to the supervisor use of the worker
    (`worker.Worker`)."""

    config: Config
    link: Supervisor
    clients: set[ClientConnection]
    routes: dict[RouteKey, Route]

    def register_cancel_key(self, client: ClientConnection) -> tuple[int, int]: ...
    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]: ...
    def set_pause(self, pause: PauseState) -> None: ...
    def snapshot(self) -> WorkerSnapshot: ...


class ConsoleSession:
    """One console client, after authentication (runs in the client's login task)."""

    def __init__(self, worker: ConsoleWorker, login: Login, rule: Rule) -> None:
        self.worker = worker
        self.login = login  # the console reads the client's requests through it
        self.client = login.client
        self.rule = rule
        self.role = rule.role or "stat"  # odyssey forces a local rule without role to stat

    async def run(self) -> None:
        client = self.client
        self.login.stop_timer()
        client.become(ClientState.CONSOLE)
        out = [build.auth_ok()]
        out.extend(build.parameter_status(k, v) for k, v in CONSOLE_PARAMS.items())
        client.key = self.worker.register_cancel_key(client)
        out.append(build.backend_key_data(*client.key))
        out.append(build.ready_for_query("I"))
        await self._write(b"".join(out))
        failed = False  # inside a failed extended-protocol batch: wait for Sync
        while not client.closing:
            msg_type, body = await self.login.read_message()
            client.last_activity = time.monotonic()
            if msg_type == X:
                client.close()
                return
            if msg_type == Q:
                await self.query(body.rstrip(b"\0").decode("utf-8", "replace"))
            elif msg_type == S:
                failed = False
                await self._write(build.ready_for_query("I"))
            elif msg_type == F:  # a request of its own: answered with a ReadyForQuery
                await self._write(_unsupported(msg_type) + build.ready_for_query("I"))
            elif msg_type in EXTENDED:  # the rest of the batch is skipped up to its Sync
                if not failed:
                    failed = True
                    await self._write(_unsupported(msg_type))
            elif msg_type not in IGNORED:  # as PostgreSQL and pgbouncer: FATAL
                raise ProtocolError(f"invalid frontend message type {msg_type}", "08P01")

    async def query(self, text: str) -> None:
        client = self.client
        if self.worker.config.log_query:
            log.info("console", text, client.log_ctx)
        try:
            items = await self.worker.link.request(ConsoleQuery(self.role, text, client.id))
        except (ConnectionError, TimeoutError) as exc:
            items = [("error", "58000", f"console command failed: {exc}")]
        out: list[bytes] = []
        for item in items:
            kind = item[0]
            if kind == "result":
                result = item[1]  # a pooler.supervisor.result.Result
                out.append(
                    build.result_set(result.columns, result.rows, result.tag, result.notices)
                )
            elif kind == "empty":
                out.append(build.empty_query_response())
            else:
                out.append(build.error_response("ERROR", item[1], item[2]))
                break
        out.append(build.ready_for_query("I"))
        await self._write(b"".join(out))

    async def _write(self, data: bytes) -> None:
        """Answer the client; while it does not read, read no more of its requests (its
        answers would pile up in the worker's memory)."""
        client = self.client
        if client.closing:
            return
        client.transport.write(data)
        await self.login.drained()


# --- the worker's answers to the supervisor -----------------------------------------------


def _wall(monotonic_at: float, now_mono: float, now_wall: float) -> float:
    return now_wall - (now_mono - monotonic_at)


def _sock(transport: Any, which: str) -> tuple[str, int]:
    info = transport.get_extra_info(which) if transport is not None else None
    if isinstance(info, tuple) and len(info) >= 2:
        return str(info[0]), int(info[1])
    return "unix", 0


def client_rows(worker: ConsoleWorker) -> list[tuple[Any, ...]]:
    """SHOW CLIENTS rows (peers.md §2.1 SOCKET columns) of this worker's logged-in clients."""
    now_mono, now_wall = time.monotonic(), time.time()
    rows = []
    for c in worker.clients:
        since = c.waiting_since  # (a login waiting for a server is listed too)
        if not c.logged_in and since is None:  # (closed, or its login is under way)
            continue
        server = c.server
        state = "active" if server is not None or c.state is ClientState.CONSOLE else "idle"
        if since is not None:
            state = "waiting"
        waited = now_mono - since if since is not None else 0.0
        addr, port = c.peer if c.peer else ("unix", 0)
        local_addr, local_port = _sock(c.transport, "sockname")
        rows.append(
            (
                "C",
                c.user,
                c.database,
                "none",
                state,
                addr,
                port,
                local_addr,
                local_port,
                _stamp(timestamp, c.connected_at, now_mono, now_wall),
                _stamp(timestamp, c.last_activity, now_mono, now_wall),
                int(waited),
                int((waited % 1) * 1e6),
                0,
                c.id,
                server.id if server is not None else "",
                0,
                "",
                c.params.get("application_name", ""),
                0,
                c.id,
            )
        )
    return rows


def timestamp(epoch: float | None) -> str | None:
    """timestamptz text as PostgreSQL prints it with DateStyle ISO (UTC)."""
    if epoch is None:
        return None
    return time.strftime("%Y-%m-%d %H:%M:%S+00", time.gmtime(epoch))


def _stamp(
    fmt: Callable[[float], str | None], mono: float, now_mono: float, now_wall: float
) -> str | None:
    return fmt(_wall(mono, now_mono, now_wall))


def server_rows(worker: ConsoleWorker) -> list[tuple[Any, ...]]:
    """SHOW SERVERS rows: busy servers `active` (linked) or `used` (resetting), idle `idle`."""
    now_mono, now_wall = time.monotonic(), time.time()
    rows = []
    for route in worker.routes.values():
        servers = [(s, "idle") for s in route.idle] + [
            (s, "active" if s.client is not None else "used") for s in route.busy
        ]
        for server, state in servers:
            if server.closed:
                continue
            endpoint = server.endpoint
            addr = endpoint.host if endpoint.host is not None else "unix"
            local_addr, local_port = _sock(server.transport, "sockname")
            client = server.client
            rows.append(
                (
                    "S",
                    route.backend_user,
                    route.backend_db,
                    "none",
                    state,
                    addr,
                    endpoint.port,
                    local_addr,
                    local_port,
                    _stamp(timestamp, server.created, now_mono, now_wall),
                    _stamp(timestamp, server.released_at, now_mono, now_wall),
                    0,
                    0,
                    int(route.obsolete),
                    server.id,
                    client.id if client is not None else "",
                    server.backend_key[0],
                    "",
                    server.params.get("application_name", ""),
                    0,
                    server.id,
                )
            )
    return rows


def kill_client(worker: ConsoleWorker, client_id: str) -> bool:
    for client in list(worker.clients):
        if client.id == client_id:
            client.fatal("08006", "client was killed by the console (KILL_CLIENT)")
            return True
    return False


def _matches(route: Route, db: str | None) -> bool:
    return db is None or route.backend_db == db or route.rule.db_name == db


KILLED = "database removed"  # pgbouncer's text for KILL (FATAL 08P01, as 1.25.2 sends it)


class AdminState:
    """PAUSE/RESUME/RECONNECT of one worker. The PAUSE in force is one `PauseState` the
    supervisor sends whole; `Worker.set_pause` pauses the routes it covers (`Route.pause`:
    acquire waits for RESUME, idle servers close) and new routes are paused as they are
    made. PAUSE returns once the paused routes hold no server: busy ones close as they come
    back idle (checked every 50 ms while a pause or reconnect is pending). Nothing here runs
    per message."""

    def __init__(self, worker: ConsoleWorker) -> None:
        self.worker = worker
        self.doomed: set[str] = set()  # server ids to close when idle (RECONNECT)
        self._sweeper: asyncio.Task[None] | None = None

    async def pause(self, state: PauseState) -> int:
        self.worker.set_pause(state)
        # wait until the paused routes hold no server (pgbouncer's PAUSE returns then)
        return await self._until_paused_routes_hold_no_server()

    async def _until_paused_routes_hold_no_server(self) -> int:
        while True:
            left = 0
            for route in self.worker.routes.values():
                if route.paused:
                    route.close_all()
                    left += len(route.idle) + len(route.busy) + route.connecting
            if left == 0:
                return 0
            await asyncio.sleep(0.05)

    def resume(self, state: PauseState) -> None:
        self.worker.set_pause(state)

    def kill(self, state: PauseState, db: str | None) -> int:
        """KILL [db], as pgbouncer: the database (every one, without db) is paused with the
        rest of `state` (new clients wait for RESUME), and every client and server of its
        routes is closed at once, a client with FATAL 08P01 "database removed" (whether
        idle, waiting or inside a transaction), a server whatever it runs. Servers still
        logging in close as they come back (the PAUSE sweep). Returns the clients closed."""
        worker = self.worker
        worker.set_pause(state)
        killed = 0
        for client in list(worker.clients):
            route = client.route
            if route is not None and not client.closing and _matches(route, db):
                client.fatal("08P01", KILLED)
                killed += 1
        for route in worker.routes.values():
            if _matches(route, db):
                for server in [*route.idle, *route.busy]:
                    server.close()
        worker.spawn(self._until_paused_routes_hold_no_server(), "kill sweeper")
        return killed

    def reconnect(self, db: str | None) -> int:
        count = 0
        for route in self.worker.routes.values():
            if not _matches(route, db):
                continue
            for server in list(route.idle):
                server.close()
                count += 1
            for server in route.busy:
                self.doomed.add(server.id)
                count += 1
        if self.doomed and self._sweeper is None:
            self._sweeper = self.worker.spawn(self._sweep(), "reconnect sweeper")
        return count

    async def _sweep(self) -> None:
        try:
            while self.doomed:
                await asyncio.sleep(0.05)
                alive: set[str] = set()
                for route in self.worker.routes.values():
                    for server in list(route.idle):
                        if server.id in self.doomed:
                            server.close()
                    alive.update(s.id for s in route.busy if s.id in self.doomed)
                self.doomed &= alive
        finally:
            self._sweeper = None


def admin_state(worker: ConsoleWorker) -> AdminState:
    state = getattr(worker, "_admin_state", None)
    if state is None:
        state = AdminState(worker)
        worker._admin_state = state  # type: ignore[attr-defined]
    return state


async def handle_ask(worker: ConsoleWorker, what: str, args: tuple[Any, ...]) -> Any:
    """A request from the supervisor; the return value goes back as the answer."""
    if what == "clients":
        return client_rows(worker)
    if what == "servers":
        return server_rows(worker)
    if what == "kill_client":
        return kill_client(worker, args[0])
    if what == "pause":  # args[0]: the whole PauseState in force
        return await admin_state(worker).pause(args[0])
    if what == "resume":
        admin_state(worker).resume(args[0])
        return True
    if what == "kill":  # args: the whole PauseState in force, the database (None: all)
        return admin_state(worker).kill(args[0], args[1])
    if what == "reconnect":
        return admin_state(worker).reconnect(args[0])
    if what == "snapshot":
        return worker.snapshot()
    raise ValueError(f"unknown request {what!r}")
