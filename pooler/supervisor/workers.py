"""The worker processes: their life cycle and the channel to each.

Start a worker on its inherited listen sockets, watch it, restart it when it dies (its
server connections cancelled and its slots returned first), retire or add workers when
`workers` changes, steer new connections to the serving ones; take every message a worker
sends (slots, cancels, snapshots, console queries, answers) and ask workers things. The
`Supervisor` (pooler/supervisor/main.py) composes this with its other concerns and sets the
state declared here.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from pooler.cancel import key_owner, send_cancel
from pooler.config import Config, Endpoint
from pooler.control import schema
from pooler.ipc import (
    AcquireSlot,
    Answer,
    Applied,
    Ask,
    BackendClosed,
    BackendOpened,
    CancelQuery,
    CancelSlot,
    Channel,
    ClientSlot,
    ConfigMessage,
    ConsoleQuery,
    Message,
    PauseState,
    ReleaseSlot,
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
from pooler.snapshot import WorkerSnapshot
from pooler.supervisor.listen import Bound, bind_listeners, queued, steer
from pooler.supervisor.notify import notify
from pooler.supervisor.reload import Reloader
from pooler.supervisor.slots import Action, Grant, Shed, SlotBroker

RESTART_DELAY = 0.2  # seconds before a dead worker is started again
CANCEL_TIMEOUT = 2.0  # seconds for a CancelRequest to a dead worker's server (no cancel_timeout_ms)
BACKEND_EXIT_GRACE = 0.5  # seconds for a cancelled backend to find its client gone and exit


@dataclass
class WorkerHandle:
    index: int
    process: asyncio.subprocess.Process | None = None
    channel: Channel | None = None
    started_at: float = 0.0
    restarts: int = 0
    snapshot: WorkerSnapshot | None = None
    retiring: bool = False
    fresh: asyncio.Future[None] | None = None  # resolved by the next "stats" message
    cpu_ticks: tuple[float, int] | None = None  # (monotonic time, utime+stime ticks)
    cpu_percent: float = 0.0
    paused_at_start: PauseState = field(default_factory=PauseState)  # sent with its config
    generation: int | None = None  # the config generation it serves (None: still starting)
    # its logged-in server connections, (route key, pid) -> (endpoint, secret): when it dies,
    # the supervisor cancels and waits them out before their slots count as free
    backends: dict[tuple[Any, int], tuple[Endpoint, int]] = field(default_factory=dict)


def _proc_stat(pid: int) -> tuple[int, int] | None:
    """(utime+stime clock ticks, rss bytes) of a process, from /proc (Linux)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields_ = f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields_[11]) + int(fields_[12]), int(fields_[21]) * os.sysconf("SC_PAGE_SIZE")


class WorkerProcesses:
    """The workers and the channel to each (state set by `Supervisor.__init__`)."""

    config: Config
    sockets: list[Bound]  # per worker index
    broker: SlotBroker
    workers: dict[int, WorkerHandle]
    stopping: bool
    reloader: Reloader
    pause: PauseState
    _tasks: set[asyncio.Task[Any]]
    _done: asyncio.Event | None
    _asks: dict[int, asyncio.Future[Any]]
    _next_ask: int
    _ready: asyncio.Event | None
    _resizing: asyncio.Lock
    _steer_failed: bool
    _reloading: int | None

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
        handle.snapshot = None
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
            await asyncio.gather(
                *(send_cancel(e, pid, secret, timeout) for e, pid, secret in backends)
            )
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
            case CancelSlot(key):
                self._deliver(self.broker.cancel(index, key))
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
            case CancelQuery(pid):
                owner = key_owner(pid)
                for other, each in self.workers.items():  # the owner, or every other worker
                    if (
                        other == owner or (owner < 0 and other != index)
                    ) and each.channel is not None:
                        each.channel.send(message)
            case Applied(generation):  # it serves this generation (started or reloaded)
                if handle.generation is None:
                    handle.generation = generation
                    self._steer()  # it serves: new connections may come to it
                handle.generation = generation
                self._check_ready()
            case Stats(snapshot):
                if handle.snapshot is None and handle.paused_at_start != self.pause:
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
        """A console query from worker `index`: answered by the Supervisor (main.py)."""
        raise NotImplementedError

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

    def snapshots(self) -> list[WorkerSnapshot]:
        return [h.snapshot for h in self.workers.values() if h.snapshot is not None]

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
        handles = [
            h for h in self.workers.values() if h.channel is not None and h.snapshot is not None
        ]
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

    async def _catch_up_pause(self, handle: WorkerHandle) -> None:
        await self.ask(handle, "pause", self.pause, timeout=3600)

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
            snapshot = handle.snapshot
            out.append(
                schema.WorkerInfo(
                    index=handle.index,
                    pid=pid,
                    state=state,
                    clients=snapshot.clients if snapshot else 0,
                    servers=snapshot.servers if snapshot else 0,
                    restarts=handle.restarts,
                    cpu_percent=handle.cpu_percent,
                    rss_bytes=rss,
                    started_at=handle.started_at,
                )
            )
        return out

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
        if self.stopping:  # (after an online restart's hand-over the program is the new one's)
            return
        serving = [
            i for i, h in self.workers.items() if h.generation is not None and not h.retiring
        ]
        if not serving:  # none up yet (or all restarting): they queue for the wanted ones
            serving = [i for i in range(min(self.config.workers, len(self.sockets)))]
        if not steer(self.sockets, serving) and not self._steer_failed:
            self._steer_failed = True  # connections are spread over every socket, as before
            log.error("supervisor", "cannot steer new connections (SO_ATTACH_REUSEPORT_CBPF)")

    def _kill_all(self) -> None:
        for handle in self.workers.values():
            if handle.process is not None:
                handle.process.kill()
