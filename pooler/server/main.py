"""`pooler serve`: load the config, bind the listen sockets, run a worker on uvloop."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import uvloop

from pooler import logs
from pooler.config import ConfigError, load
from pooler.logs import log
from pooler.server.worker import Worker, bind_listeners

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_STARTUP_FAILED = 3


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
        sockets = bind_listeners(config)
    except OSError as exc:
        log.error("main", f"cannot listen: {exc}")
        return EXIT_STARTUP_FAILED
    if config.pid_file:
        Path(config.pid_file).write_text(f"{os.getpid()}\n")
    try:
        return uvloop.run(_serve(config, sockets))
    finally:
        if config.pid_file:
            Path(config.pid_file).unlink(missing_ok=True)


async def _serve(config, sockets) -> int:  # type: ignore[no-untyped-def]
    worker = Worker(config)
    await worker.start(sockets)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    immediate = False

    def on_term() -> None:
        log.info("system", "termination signal received, shutting down")
        stop.set()

    def on_quit() -> None:
        nonlocal immediate
        immediate = True
        stop.set()

    loop.add_signal_handler(signal.SIGTERM, on_term)
    loop.add_signal_handler(signal.SIGINT, on_term)
    loop.add_signal_handler(signal.SIGQUIT, on_quit)
    loop.add_signal_handler(signal.SIGUSR1, log.reopen)
    loop.add_signal_handler(
        signal.SIGHUP, lambda: log.info("system", "SIGHUP: reload arrives with the reload issue")
    )
    addresses = ", ".join(f"{listen.host or 'unix'}:{listen.port}" for listen in config.listens)
    log.info("main", f"pooler ready, listening on {addresses}")
    await stop.wait()
    if immediate:
        worker.close_everything()
    else:
        await worker.shutdown(config.graceful_shutdown_timeout_ms)
    return EXIT_OK
