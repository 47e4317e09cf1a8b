"""`pooler serve`: the supervisor process.

It parses the config, binds the listen sockets (so a taken port is a start-up failure, exit
3), starts `workers` worker processes that inherit those sockets, and then:
- keeps the global pool_size ledger (`SlotBroker`) and relays grants and sheds;
- forwards CancelRequests to the worker that owns the client (its index is in the key);
- restarts a worker that dies (its slots are returned first) and counts the restarts;
- collects each worker's counters every second;
- handles signals: SIGHUP reload, SIGTERM/SIGINT graceful shutdown, SIGQUIT immediate,
  SIGUSR1 reopen the log file.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import uvloop

from pooler import logs
from pooler.config import Config, ConfigError, load
from pooler.ipc import Channel, Message
from pooler.logs import log
from pooler.supervisor.listen import Bound, bind_listeners, describe
from pooler.supervisor.slots import Action, Grant, Shed, SlotBroker

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_STARTUP_FAILED = 3
RESTART_DELAY = 0.2  # seconds before a dead worker is started again
KILL_GRACE = 5.0  # seconds past graceful_shutdown_timeout_ms before workers are killed


@dataclass
class WorkerHandle:
    index: int
    process: asyncio.subprocess.Process | None = None
    channel: Channel | None = None
    started_at: float = 0.0
    restarts: int = 0
    snapshot: dict[str, Any] = field(default_factory=dict)
    retiring: bool = False


class Supervisor:
    def __init__(self, config: Config, path: Path, sockets: list[Bound]) -> None:
        self.config = config
        self.path = path
        self.sockets = sockets  # per worker index
        self.broker = SlotBroker()
        self.workers: dict[int, WorkerHandle] = {}
        self.stopping = False
        self.started_at = time.time()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._done: asyncio.Event | None = None

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
        listen_indexes = [self.config.listens.index(listen) for listen, _ in bound]
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
        channel.send("config", self.config, listen_indexes)
        handle.process, handle.channel = process, channel
        handle.started_at = time.time()
        log.info("supervisor", f"worker {index} started, pid {process.pid}")
        self._spawn(self._watch(handle, process), f"watch worker {index}")

    async def _watch(self, handle: WorkerHandle, process: asyncio.subprocess.Process) -> None:
        code = await process.wait()
        if handle.process is not process:
            return
        handle.process = None
        if handle.channel is not None:
            handle.channel.close()
            handle.channel = None
        self._deliver(self.broker.worker_gone(handle.index))
        if self.stopping or handle.retiring:
            self.workers.pop(handle.index, None)
            if not self.workers and self._done is not None:
                self._done.set()
            return
        handle.restarts += 1
        handle.snapshot = {}
        log.error("supervisor", f"worker {handle.index} exited with {code}, restarting")
        await asyncio.sleep(RESTART_DELAY)
        if not self.stopping:
            await self.start_worker(handle.index)

    # --- messages from workers ----------------------------------------------------------

    def _on_message(self, index: int, message: Message) -> None:
        kind, *args = message
        if kind == "acquire":
            self._deliver(self.broker.acquire(index, args[0], args[1]))
        elif kind == "release":
            self._deliver(self.broker.release(index, args[0]))
        elif kind == "cancel":
            pid, secret = args
            owner = self.workers.get((pid >> 24) - 1)
            if owner is not None and owner.channel is not None:
                owner.channel.send("cancel", pid, secret)
        elif kind == "stats":
            handle = self.workers.get(index)
            if handle is not None:
                handle.snapshot = args[0]

    def _deliver(self, actions: list[Action]) -> None:
        for action in actions:
            handle = self.workers.get(action.worker)
            if handle is None or handle.channel is None:
                continue
            if isinstance(action, Grant):
                handle.channel.send("grant", action.key)
            elif isinstance(action, Shed):
                handle.channel.send("shed", action.key)

    def broadcast(self, *message: Any) -> None:
        for handle in self.workers.values():
            if handle.channel is not None:
                handle.channel.send(*message)

    # --- signals ------------------------------------------------------------------------

    def reload(self) -> None:
        """Re-read the config; on success every worker gets the new generation."""
        log.info("config", f"importing changes from '{self.path}'")
        try:
            new = load(self.path)
        except ConfigError as exc:
            for diagnostic in exc.diagnostics:
                log.error("config", f"reload failed: {diagnostic}")
            return
        new = replace(new, generation=self.config.generation + 1)
        self.config = new
        self.broadcast("config", new, None)
        log.info("config", f"reloaded, generation {new.generation}")

    def shutdown(self, graceful: bool) -> None:
        if self.stopping and graceful:
            return
        self.stopping = True
        log.info("supervisor", "termination signal received, shutting down")
        self.broadcast("shutdown", graceful)
        if not graceful:
            for handle in self.workers.values():
                if handle.process is not None:
                    handle.process.kill()
        timeout = self.config.graceful_shutdown_timeout_ms / 1000
        if timeout:
            asyncio.get_running_loop().call_later(timeout + KILL_GRACE, self._kill_all)

    def _kill_all(self) -> None:
        for handle in self.workers.values():
            if handle.process is not None:
                handle.process.kill()

    async def serve(self) -> int:
        loop = asyncio.get_running_loop()
        self._done = asyncio.Event()
        for index in range(self.config.workers):
            await self.start_worker(index)
        loop.add_signal_handler(signal.SIGTERM, self.shutdown, True)
        loop.add_signal_handler(signal.SIGINT, self.shutdown, True)
        loop.add_signal_handler(signal.SIGQUIT, self.shutdown, False)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        loop.add_signal_handler(signal.SIGUSR1, self._reopen_logs)
        log.info(
            "supervisor",
            f"pooler ready, {self.config.workers} workers, listening on {describe(self.config)}",
        )
        await self._done.wait()
        return EXIT_OK

    def _reopen_logs(self) -> None:
        log.reopen()
        self.broadcast("reopen_log")


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


def run(config_path: Path, *, strict: bool = False) -> int:
    try:
        config = load(config_path, strict=strict)
    except ConfigError as exc:
        for diagnostic in exc.diagnostics:
            print(diagnostic, file=sys.stderr)
        return EXIT_INVALID
    logs.configure_from(config)
    for warning in config.warnings:
        log.info("config", str(warning))
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
    if config.daemonize:
        _daemonize()
    if config.pid_file:
        Path(config.pid_file).write_text(f"{os.getpid()}\n")
    try:
        return uvloop.run(Supervisor(config, config_path, sockets).serve())
    finally:
        if config.pid_file:
            Path(config.pid_file).unlink(missing_ok=True)
