"""`pooler serve`: the supervisor process.

It parses the config, binds the listen sockets (so a taken port is a start-up failure, exit
3), starts `workers` worker processes that inherit those sockets, and then `Supervisor`
composes one concern per module:
- workers.py: the worker processes' life cycle (start, watch, restart a dead one after
  cancelling its server connections and returning its slots, retire, steer), the global
  pool_size ledger (`SlotBroker`) relayed to them, CancelRequests forwarded to the worker
  that owns the client (its index is in the key), every message from a worker;
- stats.py: each worker's counters collected every second, and every `stats_interval` the
  rates, odyssey's stats lines (`log_stats`) and the event for control-socket subscribers;
- pause.py: PAUSE/RESUME (the one PauseState in force), RECONNECT, KILL_CLIENT;
- reloading.py: reload, control `config validate` / `config apply`;
- signals.py: SIGTERM/SIGINT graceful shutdown, SIGQUIT immediate, SIGUSR1 reopen the log
  file, SIGUSR2 odyssey's online restart (restart.py: the hand-over to a new process);
  SIGHUP is `reload`;
- control_api.py: the control socket's requests; console.py: console commands for the
  workers (rendered from all workers' snapshots); metrics.py: with `promhttp_server_port`,
  Prometheus text at /metrics.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import uvloop

from pooler import __version__, logs
from pooler.compiled import build
from pooler.config import Config, ConfigError, load
from pooler.control import schema
from pooler.control.client import default_control_path
from pooler.control.server import Connection, ControlServer
from pooler.ipc import PauseState, Reply
from pooler.logs import log
from pooler.snapshot import RouteSnapshot
from pooler.supervisor import aggregate, control_api
from pooler.supervisor.host_watcher import HostWatcher
from pooler.supervisor.listen import Bound, bind_listeners, describe
from pooler.supervisor.notify import notify
from pooler.supervisor.pause import PauseControl
from pooler.supervisor.reload import Reloader
from pooler.supervisor.reloading import Reloading, _log_config
from pooler.supervisor.restart import Inherited, adopt_listeners, inherited
from pooler.supervisor.signals import Signals
from pooler.supervisor.slots import SlotBroker
from pooler.supervisor.soft_oom import SoftOomChecker
from pooler.supervisor.stats import StatsWindow
from pooler.supervisor.unimplemented import unimplemented
from pooler.supervisor.workers import WorkerHandle

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_STARTUP_FAILED = 3


class Supervisor(Reloading, StatsWindow, PauseControl, Signals):
    """The composition of the concerns above (each base is one module); it owns their state."""

    def __init__(
        self,
        config: Config,
        path: Path,
        sockets: list[Bound],
        control_path: Path | None = None,
        *,
        strict: bool = False,
        handed: Inherited | None = None,
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
        self.stats_prev: dict[Any, RouteSnapshot] = {}
        self.stats_prev_at = time.monotonic()
        self.route_rates: dict[Any, aggregate.Rates] = {}
        self.db_rates: dict[str, aggregate.Rates] = {}
        self.last_stats: schema.StatsEvent | None = None
        self._metrics_server: asyncio.AbstractServer | None = None
        self._ready: asyncio.Event | None = None  # set once every worker serves
        self._watch_stop = asyncio.Event()  # stops the config watcher
        self._resizing = asyncio.Lock()  # one change of `workers` at a time
        self._steer_failed = False
        self._reloading: int | None = None  # generation whose application systemd awaits
        self.handed = handed  # started by an online restart: the old process awaits `ready`
        self.restarting = False  # SIGUSR2: a new process is starting
        self.successor: int | None = None  # handed over to this pid: draining
        # enable_host_watcher: the host's CPU and memory use (SHOW HOST_UTILIZATION)
        self.host_watcher = HostWatcher() if config.enable_host_watcher else None

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

    async def control_request(self, request: schema.Request, conn: Connection) -> tuple[str, Any]:
        return await control_api.control_request(self, request, conn)

    async def start_metrics(self, port: int) -> None:
        from pooler.supervisor.metrics import serve_metrics

        self._metrics_server = await serve_metrics(self, port)

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
        if self.host_watcher is not None:  # (start-up only, as in odyssey)
            self._spawn(self.host_watcher.run(), "host watcher")
        if self.config.soft_oom is not None:  # (start-up only, as in odyssey)
            self._spawn(SoftOomChecker(self, self.config.soft_oom).run(), "soft_oom")
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
            if self.handed is not None:  # the old process tells systemd (MAINPID) and drains
                self.handed.report(f"ready {os.getpid()}")
            else:
                notify("READY=1", f"STATUS=serving generation {self.config.generation}")
        await done
        await self.close_endpoints()
        return self.exit_code

    async def close_endpoints(self) -> None:
        self._watch_stop.set()
        if self.control is not None:
            control, self.control = self.control, None
            await control.close()
        if self._metrics_server is not None:
            self._metrics_server.close()
            self._metrics_server = None


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
    handed = inherited()  # started by an online restart: it reports to the old process
    try:
        config = load(config_path, strict=strict)
    except ConfigError as exc:
        for diagnostic in exc.diagnostics:
            print(diagnostic, file=sys.stderr)
        if handed is not None:
            first = exc.diagnostics[0] if exc.diagnostics else exc
            handed.report(f"failed invalid config: {first}")
        return EXIT_INVALID
    try:
        logs.configure_from(config)
    except OSError as exc:  # odyssey: `failed to open log file 'x'`, and it does not start
        why = f"failed to open log file '{config.log_file}': {exc.strerror or exc}"
        log.error("init", why)
        if handed is not None:
            handed.report(f"failed {why}")
        return EXIT_STARTUP_FAILED
    log.info("supervisor", f"pooler {__version__} ({build()})")
    for warning in config.warnings:
        log.info("config", str(warning))
    if config.log_config:
        _log_config(config)
    missing = unimplemented(config)
    if missing:
        log.info("config", f"accepted, not implemented: {', '.join(missing)}")
    try:
        if handed is not None:
            sockets = adopt_listeners(config, handed)
        else:
            sockets = bind_listeners(config, config.workers)
    except OSError as exc:
        log.error("supervisor", f"cannot listen: {exc}")
        if handed is not None:
            handed.report(f"failed cannot listen: {exc}")
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
    supervisor = Supervisor(config, config_path, sockets, control, strict=strict, handed=handed)
    try:
        return uvloop.run(supervisor.serve())
    finally:
        if handed is not None:
            handed.report("failed it stopped before it was ready")  # (nothing once reported)
        if config.pid_file:
            _remove_pid_file(Path(config.pid_file))


def _remove_pid_file(path: Path) -> None:
    """Unless it names another process: the successor of an online restart wrote its own."""
    try:
        if path.read_text().strip() == str(os.getpid()):
            path.unlink()
    except OSError:
        pass
