"""A worker process: config and listen sockets come from the supervisor; serves on uvloop.

Started by the supervisor as `python -m pooler.server.worker_main INDEX IPC_FD LISTEN_FDS`.
Everything else arrives over the IPC channel: the config (first message), slot grants and
shed requests for the global pool_size, cancel requests for clients of this worker, reloads
and the shutdown order. Every second the worker reports its counters back.
"""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import socket
import sys
from typing import Any

import uvloop

from pooler import logs
from pooler.config import Config, Listen
from pooler.ipc import (
    Answer,
    Applied,
    Ask,
    CancelQuery,
    Channel,
    ConfigMessage,
    Message,
    PauseState,
    ReopenLog,
    Reply,
    Request,
    Retire,
    ShedSlot,
    Shutdown,
    SlotGranted,
    SoftOomState,
    Stats,
    StatsRequest,
    Stay,
)
from pooler.logs import log
from pooler.server.console import handle_ask
from pooler.server.slots import SupervisorSlots
from pooler.server.worker import Worker

STATS_INTERVAL = 1.0


class SupervisorLink:
    """The worker's end of the IPC channel."""

    def __init__(self) -> None:
        self.channel = Channel(self._on_message, self._on_close)
        self.slots = SupervisorSlots(self.channel)
        self.worker: Worker | None = None
        loop = asyncio.get_running_loop()
        # (config, listen sections, route births, the PAUSE state in force)
        self.first_config: asyncio.Future[
            tuple[Config, list[Listen], dict[Any, int], PauseState]
        ] = loop.create_future()
        self.stop: asyncio.Future[bool] = loop.create_future()  # result: graceful?
        self.restart = False  # the stop is an online restart's drain
        self.retire_when_started = False
        self._requests: dict[int, asyncio.Future[Any]] = {}
        self._next_request = 0

    def request(self, message: Request, timeout: float = 60.0) -> asyncio.Future[Any]:
        """Ask the supervisor; it answers with a Reply carrying our request id."""
        self._next_request += 1
        request_id = self._next_request
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._requests[request_id] = future
        self.channel.send(dataclasses.replace(message, request_id=request_id))
        return asyncio.ensure_future(self._await_reply(request_id, future, timeout))

    async def _await_reply(
        self, request_id: int, future: asyncio.Future[Any], timeout: float
    ) -> Any:
        try:
            return await asyncio.wait_for(future, timeout)
        finally:
            self._requests.pop(request_id, None)

    async def _answer(self, request_id: int, what: str, args: tuple[Any, ...]) -> None:
        assert self.worker is not None
        try:
            payload = ("ok", await handle_ask(self.worker, what, args))
        except Exception as exc:  # reported to the asker, not fatal to the worker
            payload = ("error", repr(exc))
        self.channel.send(Answer(request_id, payload))

    def retired(self) -> None:
        """A retiring worker is done: leave (gracefully, with nothing left to drain)."""
        if not self.stop.done():
            self.stop.set_result(True)

    def forward_cancel(self, pid: int, secret: int) -> None:
        self.channel.send(CancelQuery(pid, secret))

    def _on_message(self, message: Message) -> None:
        worker = self.worker
        match message:
            case ConfigMessage(config, births, pause, listens):
                if not self.first_config.done():
                    assert listens is not None, "the first config names the listen sockets"
                    self.first_config.set_result((config, listens, births, pause))
                elif worker is not None:
                    worker.apply_config(config, births)  # a reload: the sockets stay
                    self.channel.send(Applied(config.generation))
                else:  # a reload that came before the worker was built: build it with that
                    _config, first_listens, _births, paused = self.first_config.result()
                    self.first_config = asyncio.get_running_loop().create_future()
                    self.first_config.set_result((config, first_listens, births, paused))
            case Shutdown(
                graceful, restart
            ):  # (also before the worker is built: then once started)
                self.restart = restart
                if not self.stop.done():
                    self.stop.set_result(graceful)
            case Reply(request_id, payload):
                future = self._requests.get(request_id)
                if future is not None and not future.done():
                    future.set_result(payload)
            case ReopenLog():
                try:
                    log.reopen()
                except OSError as exc:  # keep writing where we did
                    log.error("worker", f"failed to reopen log file: {exc}")
            case Retire() | Stay() if worker is None:  # still starting
                self.retire_when_started = isinstance(message, Retire)
            case _ if worker is None:
                return
            case SlotGranted(key):
                worker.on_grant(key)
            case ShedSlot(key, spare):
                worker.on_shed(key, spare)
            case SoftOomState(usage):
                worker.soft_oom_usage = usage
            case CancelQuery(pid, secret):
                worker.spawn(worker.cancel(pid, secret, forwarded=True), "forwarded cancel")
            case Retire():
                worker.retire()
            case Stay():
                worker.stay()
            case Ask(ask_id, what, args):
                worker.spawn(self._answer(ask_id, what, args), f"answer {what}")
            case StatsRequest():
                self.channel.send(Stats(worker.snapshot()))
            case _:
                log.error("worker", f"unexpected message from the supervisor: {message!r}")

    def _on_close(self) -> None:
        for future in self._requests.values():
            if not future.done():
                future.set_exception(ConnectionError("supervisor went away"))
        if not self.first_config.done():
            self.first_config.set_exception(ConnectionError("supervisor went away"))
        if not self.stop.done():
            self.stop.set_result(True)  # the supervisor is gone: drain and leave


async def serve(index: int, ipc_fd: int, listen_fds: list[int]) -> int:
    loop = asyncio.get_running_loop()
    link = SupervisorLink()
    await loop.create_unix_connection(lambda: link.channel, sock=socket.socket(fileno=ipc_fd))
    try:
        await link.first_config
        config, listens, births, paused = link.first_config.result()  # the latest config
    except ConnectionError:
        return 1  # the supervisor went away before we got our config: nothing to serve
    try:
        logs.configure_from(config)
    except OSError as exc:  # (the supervisor opened it at start) log to the other sinks
        log.error("worker", f"failed to open log file '{config.log_file}': {exc}")
    worker = Worker(config, index, link, births)
    link.worker = worker
    worker.set_pause(paused)  # started (or restarted) during a PAUSE: from its first client
    sockets = [
        (listen, socket.socket(fileno=fd)) for listen, fd in zip(listens, listen_fds, strict=True)
    ]
    await worker.start(sockets)
    log.info("config", f"worker {index} applied generation {config.generation}")
    link.channel.send(Applied(config.generation))  # readiness: this worker serves
    if link.retire_when_started:
        worker.retire()

    def stop() -> None:
        if not link.stop.done():
            link.stop.set_result(True)

    loop.add_signal_handler(signal.SIGTERM, stop)
    reporter = worker.spawn(_report(worker, link.channel), "stats reporter")
    graceful = await link.stop
    reporter.cancel()
    if graceful:
        await worker.shutdown(worker.config.graceful_shutdown_timeout_ms, restart=link.restart)
    else:
        worker.close_everything()
    return 0


async def _report(worker: Worker, channel: Channel) -> None:
    while True:
        channel.send(Stats(worker.snapshot()))
        await asyncio.sleep(STATS_INTERVAL)


def main(argv: list[str] | None = None) -> int:
    args: Any = argv if argv is not None else sys.argv[1:]
    index, ipc_fd = int(args[0]), int(args[1])
    listen_fds = [int(fd) for fd in args[2].split(",")] if len(args) > 2 and args[2] else []
    # The supervisor's signals (Ctrl-C, reload, log reopen, online restart) reach workers too
    # (a process group's Ctrl-C, `pkill -HUP pooler`: the titles say "pooler"); their default
    # action would kill the worker and cut its clients. A handler set before us (a measurement
    # aid such as bench/liveprof) stays.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for sig in (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
        if signal.getsignal(sig) == signal.SIG_DFL:
            signal.signal(sig, signal.SIG_IGN)
    try:
        from setproctitle import setproctitle

        setproctitle(f"pooler: worker {index}")
    except ImportError:
        pass
    return uvloop.run(serve(index, ipc_fd, listen_fds))


if __name__ == "__main__":
    sys.exit(main())
