"""`pooler serve`: the supervisor process.

It parses the config, binds the listen sockets (so a taken port is a start-up failure, exit
3), starts `workers` worker processes that inherit those sockets, and then:
- keeps the global pool_size ledger (`SlotBroker`) and relays grants and sheds;
- forwards CancelRequests to the worker that owns the client (its index is in the key);
- restarts a worker that dies (its slots are returned first) and counts the restarts;
- collects each worker's counters every second, and every `stats_interval` computes rates,
  logs odyssey's stats lines (`log_stats`) and pushes them to control-socket subscribers;
- answers console commands for the workers (pooler/supervisor/console.py renders them from
  all workers' snapshots), serves the control socket and, with `promhttp_server_port`,
  Prometheus text at /metrics;
- handles signals: SIGHUP reload, SIGTERM/SIGINT graceful shutdown, SIGQUIT immediate,
  SIGUSR1 reopen the log file, SIGUSR2 odyssey's online restart (see `_online_restart`).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvloop

from pooler import __version__, logs
from pooler.config import Config, ConfigError, Diagnostic, Endpoint, load
from pooler.config.files import write_atomically
from pooler.config.model import redacted
from pooler.control import schema
from pooler.control.client import default_control_path
from pooler.control.server import Connection, ControlServer
from pooler.histogram import quantile
from pooler.ipc import (
    AcquireSlot,
    Answer,
    Applied,
    Ask,
    BackendClosed,
    BackendOpened,
    CancelQuery,
    Channel,
    ClientSlot,
    ConfigMessage,
    ConsoleQuery,
    Message,
    PauseState,
    ReleaseSlot,
    ReopenLog,
    Reply,
    Retire,
    ShedSlot,
    Shutdown,
    SlotGranted,
    Stats,
    StatsRequest,
    Stay,
    ToWorker,
)
from pooler.logs import log
from pooler.protocol import build
from pooler.supervisor import aggregate, odyssey_views, views
from pooler.supervisor.listen import Bound, bind_listeners, describe, queued, steer
from pooler.supervisor.notify import notify, reloading
from pooler.supervisor.reload import Outcome, Reloader, file_hash
from pooler.supervisor.slots import Action, Grant, Shed, SlotBroker
from pooler.supervisor.unimplemented import unimplemented

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_STARTUP_FAILED = 3
RESTART_DELAY = 0.2  # seconds before a dead worker is started again
KILL_GRACE = 5.0  # seconds past graceful_shutdown_timeout_ms before workers are killed
CANCEL_TIMEOUT = 2.0  # seconds for a CancelRequest to a dead worker's server (no cancel_timeout_ms)
BACKEND_EXIT_GRACE = 0.5  # seconds for a cancelled backend to find its client gone and exit


@dataclass
class WorkerHandle:
    index: int
    process: asyncio.subprocess.Process | None = None
    channel: Channel | None = None
    started_at: float = 0.0
    restarts: int = 0
    snapshot: dict[str, Any] = field(default_factory=dict)
    retiring: bool = False
    fresh: asyncio.Future[None] | None = None  # resolved by the next "stats" message
    cpu_ticks: tuple[float, int] | None = None  # (monotonic time, utime+stime ticks)
    cpu_percent: float = 0.0
    paused_at_start: PauseState = field(default_factory=PauseState)  # sent with its config
    generation: int | None = None  # the config generation it serves (None: still starting)
    # its logged-in server connections, (route key, pid) -> (endpoint, secret): when it dies,
    # the supervisor cancels and waits them out before their slots count as free
    backends: dict[tuple[Any, int], tuple[Endpoint, int]] = field(default_factory=dict)


async def _cancel(endpoint: Endpoint, pid: int, secret: int, timeout: float) -> None:
    """A CancelRequest to one server; PostgreSQL closes the connection once it signalled."""
    try:
        async with asyncio.timeout(timeout):
            if endpoint.unix_socket_path:
                reader, writer = await asyncio.open_unix_connection(endpoint.unix_socket_path)
            else:
                reader, writer = await asyncio.open_connection(endpoint.host, endpoint.port)
            writer.write(build.cancel_request(pid, secret))
            await reader.read()
            writer.close()
    except (OSError, TimeoutError) as exc:
        log.error("cancel", f"cancel request to server pid {pid} failed: {exc!r}")


def _proc_stat(pid: int) -> tuple[int, int] | None:
    """(utime+stime clock ticks, rss bytes) of a process, from /proc (Linux)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields_ = f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields_[11]) + int(fields_[12]), int(fields_[21]) * os.sysconf("SC_PAGE_SIZE")


class Supervisor:
    def __init__(
        self,
        config: Config,
        path: Path,
        sockets: list[Bound],
        control_path: Path | None = None,
        *,
        strict: bool = False,
    ) -> None:
        self.config = config
        self.path = path
        self.sockets = sockets  # per worker index
        self.broker = SlotBroker()
        self.workers: dict[int, WorkerHandle] = {}
        self.stopping = False
        self.terminations = 0  # SIGTERM/SIGINT received (max_sigterms_to_die)
        self.exit_code = EXIT_OK
        self.started_at = time.time()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._done: asyncio.Event | None = None
        self.control_path = control_path or default_control_path(path)
        self.control: ControlServer | None = None
        self.reloader = Reloader(path, config, strict=strict)
        self.old_configs: dict[int, Config] = {}
        self.pause = PauseState()  # the PAUSE in force, sent whole to the workers
        self._asks: dict[int, asyncio.Future[Any]] = {}
        self._next_ask = 0
        # stats window (every stats_interval): previous merged routes and when they were taken
        self.stats_prev: dict[Any, dict[str, Any]] = {}
        self.stats_prev_at = time.monotonic()
        self.route_rates: dict[Any, aggregate.Rates] = {}
        self.db_rates: dict[str, aggregate.Rates] = {}
        self.last_stats: schema.StatsEvent | None = None
        self._metrics_server: asyncio.AbstractServer | None = None
        self._ready: asyncio.Event | None = None  # set once every worker serves
        self._resizing = asyncio.Lock()  # one change of `workers` at a time
        self._steer_failed = False
        self._reloading: int | None = None  # generation whose application systemd awaits

    # --- workers ----------------------------------------------------------------------

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def start_worker(self, index: int) -> None:
        handle = self.workers.setdefault(index, WorkerHandle(index))
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        bound = self.sockets[index]
        fds = [sock.fileno() for _, sock in bound]
        listens = [listen for listen, _ in bound]  # as bound at start: listen needs a restart
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "pooler.server.worker_main",
            str(index),
            str(child.fileno()),
            ",".join(map(str, fds)),
            pass_fds=[child.fileno(), *fds],
        )
        child.close()
        loop = asyncio.get_running_loop()
        channel = Channel(lambda message: self._on_message(index, message), lambda: None)
        await loop.create_unix_connection(lambda: channel, sock=parent)
        # a PAUSE in force holds a (re)started worker too, from its first client on
        handle.paused_at_start = self.pause
        channel.send(ConfigMessage(self.config, self.reloader.births, self.pause, listens))
        handle.process, handle.channel = process, channel
        if handle.retiring:
            channel.send(Retire())
        handle.generation = None
        handle.started_at = time.time()
        log.info("supervisor", f"worker {index} started, pid {process.pid}")
        if self.stopping:  # the shutdown began while it started (a reload raised `workers`)
            channel.send(Shutdown(True))
        self._spawn(self._watch(handle, process), f"watch worker {index}")

    async def _watch(self, handle: WorkerHandle, process: asyncio.subprocess.Process) -> None:
        code = await process.wait()
        if handle.process is not process:
            return
        handle.process = None
        handle.generation = None
        if handle.channel is not None:
            handle.channel.close()
            handle.channel = None
        self._steer()  # while it is down, its socket receives nothing new
        ghost = ("exited", handle.index, process.pid)
        self._deliver(self.broker.worker_gone(handle.index, ghost))
        backends, handle.backends = handle.backends, {}
        self._spawn(
            self._end_backends(
                ghost, [(e, pid, secret) for (_, pid), (e, secret) in backends.items()]
            ),
            f"drain worker {handle.index}",
        )
        if self.stopping or (handle.retiring and not queued(self.sockets[handle.index])):
            self.workers.pop(handle.index, None)
            if not self.workers and self._done is not None:
                self._done.set()
            return
        handle.restarts += 1
        handle.snapshot = {}
        if handle.retiring:  # (killed) with logins queued in its socket: one to accept them
            log.error(
                "supervisor", f"retiring worker {handle.index} exited with {code}, restarting"
            )
        else:
            log.error("supervisor", f"worker {handle.index} exited with {code}, restarting")
        await asyncio.sleep(RESTART_DELAY)
        if not self.stopping:
            await self.start_worker(handle.index)

    async def _end_backends(self, ghost: Any, backends: list[tuple[Endpoint, int, int]]) -> None:
        """A worker exited: PostgreSQL runs its server connections on until they notice
        (an idle one at once, a busy one when its query ends). Cancel their queries so they
        notice now; their slots stay counted until then (pool_size holds in PostgreSQL)."""
        if backends:
            timeout = self.config.cancel_timeout_ms / 1000 or CANCEL_TIMEOUT
            await asyncio.gather(*(_cancel(e, pid, secret, timeout) for e, pid, secret in backends))
            log.info(
                "supervisor",
                f"cancelled {len(backends)} server connections of {ghost[0]} worker {ghost[1]}",
            )
        await asyncio.sleep(BACKEND_EXIT_GRACE)  # they exit at their next read of the socket
        self._deliver(self.broker.worker_drained(ghost))

    # --- messages from workers ----------------------------------------------------------

    def _on_message(self, index: int, message: Message) -> None:
        handle = self.workers.get(index)
        if handle is None:
            return
        match message:
            case AcquireSlot(key, limit, since):
                self._deliver(self.broker.acquire(index, key, limit, since))
            case ReleaseSlot(key):
                self._deliver(self.broker.release(index, key))
            case BackendOpened(key, endpoint, pid, secret):
                handle.backends[key, pid] = (endpoint, secret)
            case BackendClosed(key, pid, holds_slot):
                handle.backends.pop((key, pid), None)
                if holds_slot:
                    self._deliver(self.broker.release(index, key))
            case ClientSlot(key, limit, request_id):  # client_max over all workers
                if handle.channel is not None:
                    granted = self.broker.try_acquire(index, key, limit)
                    handle.channel.send(Reply(request_id, granted))
            case CancelQuery(pid, _secret):
                owner = self.workers.get((pid >> 24) - 1)
                if owner is not None and owner.channel is not None:
                    owner.channel.send(message)
            case Applied(generation):  # it serves this generation (started or reloaded)
                if handle.generation is None:
                    handle.generation = generation
                    self._steer()  # it serves: new connections may come to it
                handle.generation = generation
                self._check_ready()
            case Stats(snapshot):
                if not handle.snapshot and handle.paused_at_start != self.pause:
                    # PAUSE/RESUME came while it started (ask_all skipped it): catch up
                    self._spawn(self._catch_up_pause(handle), "pause state")
                handle.snapshot = snapshot
                if handle.fresh is not None and not handle.fresh.done():
                    handle.fresh.set_result(None)
            case ConsoleQuery(role, text, client_id, request_id):
                self._spawn(
                    self._console(index, request_id, role, text, client_id), "console command"
                )
            case Answer(ask_id, payload):
                future = self._asks.pop(ask_id, None)
                if future is not None and not future.done():
                    future.set_result(payload)
            case _:
                log.error("supervisor", f"unexpected message from worker {index}: {message!r}")

    async def _console(self, index: int, request_id: int, role: str, text: str, cid: str) -> None:
        from pooler.supervisor.console import execute

        try:
            items = await execute(self, role, text, cid)
        except Exception as exc:
            log.error("console", f"console command failed: {exc!r}")
            items = [("error", "XX000", f"console command failed: {exc}")]
        handle = self.workers.get(index)
        if handle is not None and handle.channel is not None:
            handle.channel.send(Reply(request_id, items))

    def _check_ready(self) -> None:
        """Readiness: every worker has applied the config (at start, and after a reload)."""
        live = [h for h in self.workers.values() if not h.retiring]
        if len(live) < self.config.workers:
            return
        generation = self.config.generation
        if any(h.generation is None or h.generation < generation for h in live):
            return
        if self._ready is not None and not self._ready.is_set():
            self._ready.set()
        elif self._reloading is not None and self._reloading <= generation:
            self._reloading = None
            notify("READY=1", f"STATUS=serving generation {generation}")

    # --- asking workers -----------------------------------------------------------------

    def snapshots(self) -> list[dict[str, Any]]:
        return [h.snapshot for h in self.workers.values() if h.snapshot]

    async def ask(self, handle: WorkerHandle, what: str, *args: Any, timeout: float = 5.0) -> Any:
        if handle.channel is None:
            return None
        self._next_ask += 1
        ask_id = self._next_ask
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._asks[ask_id] = future
        handle.channel.send(Ask(ask_id, what, args))
        try:
            status, payload = await asyncio.wait_for(future, timeout)
        finally:
            self._asks.pop(ask_id, None)
        if status != "ok":
            raise RuntimeError(f"worker {handle.index}: {payload}")
        return payload

    async def ask_all(self, what: str, *args: Any, timeout: float = 5.0) -> list[Any]:
        # only workers that are serving (they report a snapshot once started); one that is
        # still starting has nothing to show and would drop the request
        handles = [h for h in self.workers.values() if h.channel is not None and h.snapshot]
        results = await asyncio.gather(
            *(self.ask(h, what, *args, timeout=timeout) for h in handles), return_exceptions=True
        )
        out = []
        for handle, result in zip(handles, results, strict=True):
            if isinstance(result, BaseException):
                log.error("supervisor", f"worker {handle.index} did not answer {what}: {result!r}")
            else:
                out.append(result)
        return out

    async def gather(self, what: str) -> list[Any]:
        """Rows of every worker for SHOW CLIENTS / SHOW SERVERS."""
        rows: list[Any] = []
        for part in await self.ask_all(what):
            rows.extend(part or ())
        return rows

    async def collect(self, timeout: float = 0.5) -> None:
        """Ask every worker for a snapshot now and wait (bounded) until they arrive."""
        loop = asyncio.get_running_loop()
        waits = []
        for handle in self.workers.values():
            if handle.channel is None:
                continue
            handle.fresh = loop.create_future()
            waits.append(handle.fresh)
            handle.channel.send(StatsRequest())
        if waits:
            await asyncio.wait(waits, timeout=timeout)

    async def admin_action(self, verb: str, db: str | None) -> None:
        """PAUSE/RESUME change the one PauseState in force, sent whole to every worker
        (PAUSE returns once their paused routes hold no server)."""
        if verb == "pause":
            self.pause = self.pause.paused(db)
            await self.ask_all("pause", self.pause, timeout=3600)
        elif verb == "resume":
            self.pause = self.pause.resumed(db)
            await self.ask_all("resume", self.pause)
        elif verb == "reconnect":
            await self.ask_all("reconnect", db)

    async def _catch_up_pause(self, handle: WorkerHandle) -> None:
        await self.ask(handle, "pause", self.pause, timeout=3600)

    @property
    def paused_all(self) -> bool:
        return self.pause.everything

    def paused_state(self) -> set[str] | bool:
        return True if self.pause.everything else set(self.pause.databases)

    async def kill_client(self, client_id: str) -> bool:
        return any(await self.ask_all("kill_client", client_id))

    def shutdown_soon(self, graceful: bool) -> None:
        asyncio.get_running_loop().call_later(0.1, self.shutdown, graceful)

    def quantiles(self) -> tuple[float, ...]:
        for rule in self.config.rules:
            storage = self.config.storage(rule.storage or "")
            if storage is not None and storage.type == "local" and rule.quantiles:
                return odyssey_views.parse_quantiles(rule.quantiles)
        return odyssey_views.DEFAULT_QUANTILES

    def obsolete_rules(self) -> list[Any]:
        wanted = {
            (r["key"][0], r["key"][1])
            for r in aggregate.merge_routes(self.snapshots())
            if r.get("obsolete")
        }
        out = []
        for _birth, identity in sorted(wanted, key=repr):
            for generation in sorted(self.old_configs, reverse=True):  # its last version
                found = [r for r in self.old_configs[generation].rules if r.identity == identity]
                if found:
                    out.extend(found)
                    break
        return out

    # --- stats window ---------------------------------------------------------------------

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
            r["key"]: aggregate.rates(r, self.stats_prev.get(r["key"]), seconds) for r in routes
        }
        db_rates = {}
        for db, members in aggregate.by_database(routes).items():
            new = aggregate.sum_counters(members)
            old = aggregate.sum_counters(
                [self.stats_prev[m["key"]] for m in members if m["key"] in self.stats_prev]
            )
            db_rates[db] = aggregate.rates(new, old, seconds)
        self.db_rates = db_rates
        clients = sum(s.get("clients", 0) for s in snapshots)
        lines = odyssey_views.stats_lines(routes, self.stats_prev, seconds, clients)
        self.stats_prev = {r["key"]: r for r in routes}
        self.stats_prev_at = now
        if self.config.log_stats:
            for line in lines:
                log.info("stats", line)
        event = schema.StatsEvent(time.time(), seconds, self.pool_infos(routes), lines)
        self.last_stats = event
        if self.control is not None:
            self.control.publish("stats", event)
        return event

    def pool_infos(self, routes: list[dict[str, Any]] | None = None) -> list[schema.PoolInfo]:
        if routes is None:
            routes = aggregate.merge_routes(self.snapshots())
        out = []
        for r in routes:
            rate = self.route_rates.get(r["key"], aggregate.Rates())
            out.append(
                schema.PoolInfo(
                    database=r["database"],
                    user=r["user"],
                    backend_db=r["backend_db"],
                    backend_user=r["backend_user"],
                    rule=r.get("rule", ""),
                    generation=aggregate.route_extra(r)[3],
                    mode=r["mode"],
                    pool_size=r["pool_size"],
                    obsolete=bool(r.get("obsolete")),
                    clients=r["clients"],
                    cl_active=r["cl_active"],
                    cl_waiting=r["cl_waiting"],
                    sv_active=r["sv_active"],
                    sv_idle=r["sv_idle"],
                    sv_login=r["sv_login"],
                    maxwait_us=r.get("maxwait_us", 0) if r["cl_waiting"] else 0,
                    xact_count=r.get("xact_count", 0),
                    query_count=r.get("query_count", 0),
                    bytes_received=r.get("bytes_received", 0),
                    bytes_sent=r.get("bytes_sent", 0),
                    tps=round(rate.xact_per_sec, 2),
                    qps=round(rate.query_per_sec, 2),
                    avg_xact_us=round(rate.avg_xact_time_us, 1),
                    avg_query_us=round(rate.avg_query_time_us, 1),
                    avg_wait_us=round(rate.avg_wait_time_us, 1),
                    p50_xact_us=quantile(r.get("xact_hist", {}), 0.5),
                    p95_xact_us=quantile(r.get("xact_hist", {}), 0.95),
                    p99_xact_us=quantile(r.get("xact_hist", {}), 0.99),
                    p99_query_us=quantile(r.get("query_hist", {}), 0.99),
                    p99_wait_us=quantile(r.get("wait_hist", {}), 0.99),
                )
            )
        return out

    def worker_infos(self) -> list[schema.WorkerInfo]:
        now = time.monotonic()
        out = []
        for handle in sorted(self.workers.values(), key=lambda h: h.index):
            pid = handle.process.pid if handle.process is not None else None
            rss = 0
            if pid is not None:
                stat = _proc_stat(pid)
                if stat is not None:
                    ticks, rss = stat
                    if handle.cpu_ticks is not None and now > handle.cpu_ticks[0]:
                        elapsed = now - handle.cpu_ticks[0]
                        used = (ticks - handle.cpu_ticks[1]) / os.sysconf("SC_CLK_TCK")
                        handle.cpu_percent = round(100 * used / elapsed, 1)
                    handle.cpu_ticks = (now, ticks)
            state = "retiring" if handle.retiring else "running" if pid else "restarting"
            out.append(
                schema.WorkerInfo(
                    index=handle.index,
                    pid=pid,
                    state=state,
                    clients=handle.snapshot.get("clients", 0),
                    servers=handle.snapshot.get("servers", 0),
                    restarts=handle.restarts,
                    cpu_percent=handle.cpu_percent,
                    rss_bytes=rss,
                    started_at=handle.started_at,
                )
            )
        return out

    # --- control socket -------------------------------------------------------------------

    async def control_request(self, request: schema.Request, conn: Connection) -> tuple[str, Any]:
        kind = request.type
        if kind == "status":
            snaps = self.snapshots()
            return kind, schema.Status(
                version=__version__,
                pid=os.getpid(),
                uptime=round(time.time() - self.started_at, 3),
                config_path=str(self.path),
                generation=self.config.generation,
                workers=len(self.workers),
                clients=sum(s.get("clients", 0) for s in snaps),
                servers=sum(s.get("servers", 0) for s in snaps),
                paused=self.paused_all,
                last_reload=self.last_reload,
            )
        if kind == "workers":
            return kind, self.worker_infos()
        if kind == "pools":
            return kind, self.pool_infos()
        if kind in ("clients", "servers"):
            names = [name for name, _ in views.SOCKET_COLUMNS]
            rows = await self.gather(kind)
            return kind, [dict(zip(names, row, strict=True)) for row in rows]
        if kind == "stats":
            event = self.last_stats or schema.StatsEvent(time.time(), 0.0, self.pool_infos(), [])
            return kind, event
        if kind == "subscribe":
            conn.topics.update(request.topics)  # type: ignore[attr-defined]
            return kind, sorted(conn.topics)
        if kind == "unsubscribe":
            conn.topics.difference_update(request.topics)  # type: ignore[attr-defined]
            return kind, sorted(conn.topics)
        if kind == "config_get":
            try:
                text = self.path.read_text()
            except OSError:
                text = ""
            model = redacted(self.config)
            return kind, schema.ConfigInfo(
                str(self.path), self.config.generation, text, model, file_hash(self.path)
            )
        if kind == "reload":
            return kind, self.reload("control")
        if kind == "config_validate":
            return kind, self.validate(request.text)  # type: ignore[attr-defined]
        if kind == "config_apply":
            return kind, self.apply(request.text, request.hash)  # type: ignore[attr-defined]
        if kind == "reloads":
            return kind, [_reload_result(o) for o in self.reloader.history]
        if kind in ("pause", "resume", "reconnect"):
            await self.admin_action(kind, request.database)  # type: ignore[attr-defined]
            return kind, {"database": request.database}  # type: ignore[attr-defined]
        if kind == "kill_client":
            client_id = request.client_id  # type: ignore[attr-defined]
            if not client_id or not await self.kill_client(client_id):
                raise schema.ProtocolError("not_found", f"client '{client_id}' not found")
            return kind, {"client_id": client_id}
        raise schema.ProtocolError("unknown_type", f"unknown request type {kind!r}")

    async def start_metrics(self, port: int) -> None:
        from pooler.supervisor.metrics import serve_metrics

        self._metrics_server = await serve_metrics(self, port)

    def _deliver(self, actions: list[Action]) -> None:
        for action in actions:
            handle = self.workers.get(action.worker)
            if handle is None or handle.channel is None:
                continue
            if isinstance(action, Grant):
                handle.channel.send(SlotGranted(action.key))
            elif isinstance(action, Shed):
                handle.channel.send(ShedSlot(action.key, action.spare))

    def broadcast(self, message: ToWorker) -> None:
        for handle in self.workers.values():
            if handle.channel is not None:
                handle.channel.send(message)

    # --- signals ------------------------------------------------------------------------

    @property
    def last_reload(self) -> schema.ReloadResult | None:
        last = self.reloader.last
        return None if last is None else _reload_result(last)

    def reload(self, trigger: str = "SIGHUP", text: str | None = None) -> schema.ReloadResult:
        """Parse, validate, diff; on success apply to every worker, else change nothing.

        `text` is a proposed config (control `config apply` writes it first)."""
        log.info("config", f"importing changes from '{self.path}' ({trigger})")
        running = self.config
        told_systemd = self._ready is not None and self._ready.is_set() and reloading()
        try:
            plan = self.reloader.plan(running, text)
        except ConfigError as exc:
            if told_systemd:
                notify("READY=1", f"STATUS=reload failed, serving generation {running.generation}")
            outcome = self.reloader.record_failure(running, trigger, exc)
            for error in outcome.error_lines:
                log.error("config", f"reload failed: {error}")
            return _reload_result(outcome)
        new = plan.config
        self.old_configs[running.generation] = running
        self.config = new
        self.broadcast(ConfigMessage(new, plan.births, self.pause))
        self._apply_pool_sizes(new, plan.births)
        if plan.workers_changed:
            self._spawn(self._resize(), "resize workers")
        outcome = self.reloader.record_success(plan, trigger)
        for change in plan.changes:
            log.info("config", change)
        if new.log_config:
            _log_config(new)
        for change in plan.restart_required:
            log.error("config", f"restart required: {change}")
        log.info("config", f"reloaded, generation {new.generation}")
        if told_systemd:  # READY=1 again once every worker has applied it
            self._reloading = new.generation
            self._check_ready()
        return _reload_result(outcome)

    def _apply_pool_sizes(self, config: Config, births: dict[Any, int]) -> None:
        """pool_size of surviving routes applies live: more slots are granted at once, a
        smaller limit has the excess shed as servers come back idle."""
        rules = {rule.identity: rule for rule in config.rules}
        for key in self.broker.route_keys():
            if len(key) != 4 or key[0] == "clients":
                continue
            birth, identity = key[0], key[1]
            rule = rules.get(identity)
            if rule is not None and births.get(identity) == birth and rule.pool_size > 0:
                self._deliver(self.broker.set_limit(key, rule.pool_size))

    async def _resize(self) -> None:
        """`workers` changed: start the missing workers, retire the extra ones. A retiring
        worker is steered around first (its socket receives no new connection), accepts what
        was queued, serves its clients until they leave (see Worker.retire) and exits; one
        still retiring when `workers` grows again just stays."""
        async with self._resizing:
            wanted = self.config.workers
            for index, handle in sorted(self.workers.items()):
                if index >= wanted and not handle.retiring:
                    handle.retiring = True
                elif index < wanted and handle.retiring and handle.channel is not None:
                    handle.retiring = False
                    handle.channel.send(Stay())
            self._steer()
            for handle in self.workers.values():
                if handle.retiring and handle.channel is not None:
                    handle.channel.send(Retire())
            for index in range(wanted):
                if index not in self.workers:
                    if index >= len(self.sockets):
                        more = index + 1 - len(self.sockets)
                        self.sockets.extend(bind_listeners(self.config, more))
                    await self.start_worker(index)

    def _steer(self) -> None:
        """New connections go to the sockets of serving workers that are not retiring."""
        serving = [
            i for i, h in self.workers.items() if h.generation is not None and not h.retiring
        ]
        if not serving:  # none up yet (or all restarting): they queue for the wanted ones
            serving = [i for i in range(min(self.config.workers, len(self.sockets)))]
        if not steer(self.sockets, serving) and not self._steer_failed:
            self._steer_failed = True  # connections are spread over every socket, as before
            log.error("supervisor", "cannot steer new connections (SO_ATTACH_REUSEPORT_CBPF)")

    def validate(self, text: str) -> dict[str, Any]:
        """Control `config validate`: the errors with positions, or the diff it would apply."""
        try:
            plan = self.reloader.plan(self.config, text)
        except ConfigError as exc:
            return {"ok": False, "errors": [_position(d) for d in exc.diagnostics], "changes": []}
        return {
            "ok": True,
            "errors": [],
            "changes": plan.changes,
            "restart_required": plan.restart_required,
        }

    def apply(self, text: str, expected_hash: str) -> dict[str, Any]:
        """Control `config apply`: validate, write the file atomically, reload. Refused when
        the file changed on disk since the editor read it (its hash differs)."""
        if file_hash(self.path) != expected_hash:
            raise schema.ProtocolError(
                "conflict", f"{self.path} changed on disk since it was read; reload it first"
            )
        check = self.validate(text)
        if not check["ok"]:
            return {**check, "generation": self.config.generation}
        write_atomically(self.path, text)
        result = self.reload("control", text)
        return {
            "ok": result.ok,
            "generation": result.generation,
            "errors": result.errors,
            "changes": result.changes,
            "restart_required": result.restart_required,
        }

    def shutdown(self, graceful: bool) -> None:
        if self.stopping and graceful:
            return
        self.stopping = True
        notify("STOPPING=1")
        log.info("supervisor", "termination signal received, shutting down")
        self.broadcast(Shutdown(graceful))
        if not graceful:
            for handle in self.workers.values():
                if handle.process is not None:
                    handle.process.kill()
        timeout = self.config.graceful_shutdown_timeout_ms / 1000
        if timeout:
            asyncio.get_running_loop().call_later(timeout + KILL_GRACE, self._kill_all)

    def _terminate(self) -> None:
        """SIGTERM/SIGINT: a graceful shutdown; the max_sigterms_to_die-th one ends the
        pooler at once with exit code 1 (odyssey), its workers killed."""
        self.terminations += 1
        limit = self.config.max_sigterms_to_die
        if limit > 0 and self.terminations >= limit:
            log.error(
                "supervisor",
                f"termination signal received {self.terminations} times "
                f"(max_sigterms_to_die {limit}): exiting at once",
            )
            self.stopping = True
            self.exit_code = 1
            self._kill_all()
            if self._done is not None:
                self._done.set()
            return
        self.shutdown(True)

    def _kill_all(self) -> None:
        for handle in self.workers.values():
            if handle.process is not None:
                handle.process.kill()

    async def serve(self) -> int:
        loop = asyncio.get_running_loop()
        self._done = asyncio.Event()
        self._ready = asyncio.Event()
        # Signals first: the listen sockets are open already, so clients (and operators)
        # may be acting on the pooler while its workers start.
        loop.add_signal_handler(signal.SIGTERM, self._terminate)
        loop.add_signal_handler(signal.SIGINT, self._terminate)
        loop.add_signal_handler(signal.SIGQUIT, self.shutdown, False)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        loop.add_signal_handler(signal.SIGUSR1, self._reopen_logs)
        loop.add_signal_handler(signal.SIGUSR2, self._online_restart)
        for index in range(self.config.workers):
            await self.start_worker(index)
        self._watch_stop = asyncio.Event()
        self._spawn(
            self.reloader.watch(lambda: self.config, self._file_changed, self._watch_stop),
            "config watcher",
        )
        self.control = ControlServer(self.control_path, self.control_request)
        try:
            await self.control.start()
        except OSError as exc:
            log.error("control", f"cannot create control socket {self.control_path}: {exc}")
            self.control = None
        if self.config.promhttp_server_port:
            try:
                await self.start_metrics(self.config.promhttp_server_port)
            except OSError as exc:
                log.error("metrics", f"cannot serve /metrics: {exc}")
        self._spawn(self._stats_loop(), "stats")
        # ready means every worker has applied the config and accepts on its socket
        ready, done = (
            asyncio.ensure_future(self._ready.wait()),
            asyncio.ensure_future(self._done.wait()),
        )
        await asyncio.wait([ready, done], return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        if self._ready.is_set() and not self.stopping:
            log.info(
                "supervisor",
                f"pooler ready, {self.config.workers} workers, listening on {describe(self.config)}",
            )
            notify("READY=1", f"STATUS=serving generation {self.config.generation}")
        await done
        self._watch_stop.set()
        if self.control is not None:
            await self.control.close()
        if self._metrics_server is not None:
            self._metrics_server.close()
        return self.exit_code

    async def _file_changed(self) -> None:
        self.reload("file")

    def _online_restart(self) -> None:
        """SIGUSR2, odyssey's online restart. Without `enable_online_restart` odyssey ignores
        it; with it, the old process drains and exits once its successor listens. We start
        no successor (not implemented), so only the old process's part happens: a graceful
        shutdown."""
        log.info("online-restart", "online restart signal received")
        if not self.config.enable_online_restart:
            log.error(
                "online-restart", "online restart signal ignored - feature is disabled in config"
            )
            return
        log.error(
            "online-restart",
            "online restart is not implemented (no new process is started): shutting down "
            "gracefully",
        )
        self.shutdown(True)

    def _reopen_logs(self) -> None:
        try:
            log.reopen()
        except OSError as exc:  # keep writing where we did
            log.error("supervisor", f"failed to reopen log file '{self.config.log_file}': {exc}")
        self.broadcast(ReopenLog())


def _reload_result(outcome: Outcome) -> schema.ReloadResult:
    return schema.ReloadResult(
        ok=outcome.ok,
        generation=outcome.generation,
        errors=outcome.error_lines,
        changes=list(outcome.changes),
        at=outcome.at,
        trigger=outcome.trigger,
        restart_required=list(outcome.restart_required),
    )


def _position(diagnostic: Diagnostic) -> dict[str, Any]:
    pos = diagnostic.pos
    return {
        "file": pos.file if pos else getattr(diagnostic, "file", None),
        "line": pos.line if pos else None,
        "column": pos.column if pos else None,
        "message": diagnostic.message,
        "text": str(diagnostic),
    }


def _log_config(config: Config) -> None:
    """log_config: the parsed config as the pooler understood it (passwords left out)."""
    for listen in config.listens:
        log.info("config", f"listen {listen.host or 'unix'}:{listen.port} tls {listen.tls}")
    for storage in config.storages:
        hosts = ", ".join(str(e) for e in storage.endpoints) or storage.type
        log.info("config", f"storage '{storage.name}' {storage.type} {hosts} tls {storage.tls}")
    for rule in config.rules:
        log.info(
            "config",
            f"rule {rule.name} {rule.selector}: authentication {rule.authentication}, "
            f"storage {rule.storage}, pool {rule.pool}, pool_size {rule.pool_size}",
        )
    log.info("config", f"workers {config.workers}, generation {config.generation}")


def _daemonize() -> None:
    """Detach from the terminal (double fork); logs go to log_file only from here on."""
    if os.fork() > 0:
        os._exit(0)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)


def run(config_path: Path, *, strict: bool = False, control: Path | None = None) -> int:
    for early in (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):  # until the loop handles them
        signal.signal(early, signal.SIG_IGN)
    try:
        config = load(config_path, strict=strict)
    except ConfigError as exc:
        for diagnostic in exc.diagnostics:
            print(diagnostic, file=sys.stderr)
        return EXIT_INVALID
    try:
        logs.configure_from(config)
    except OSError as exc:  # odyssey: `failed to open log file 'x'`, and it does not start
        log.error("init", f"failed to open log file '{config.log_file}': {exc.strerror or exc}")
        return EXIT_STARTUP_FAILED
    for warning in config.warnings:
        log.info("config", str(warning))
    if config.log_config:
        _log_config(config)
    missing = unimplemented(config)
    if missing:
        log.info("config", f"accepted, not implemented: {', '.join(missing)}")
    try:
        sockets = bind_listeners(config, config.workers)
    except OSError as exc:
        log.error("supervisor", f"cannot listen: {exc}")
        return EXIT_STARTUP_FAILED
    try:
        from setproctitle import setproctitle

        setproctitle("pooler: supervisor")
    except ImportError:
        pass
    if config.priority:  # odyssey: setpriority(); the workers inherit it
        try:
            os.setpriority(os.PRIO_PROCESS, 0, config.priority)
        except OSError as exc:
            log.error("supervisor", f"cannot set priority {config.priority}: {exc}")
    if config.daemonize:
        _daemonize()
    if config.pid_file:
        Path(config.pid_file).write_text(f"{os.getpid()}\n")
    try:
        return uvloop.run(Supervisor(config, config_path, sockets, control, strict=strict).serve())
    finally:
        if config.pid_file:
            Path(config.pid_file).unlink(missing_ok=True)
