"""Signals and stopping: SIGTERM/SIGINT graceful shutdown (the max_sigterms_to_die-th at
once), SIGQUIT immediate, SIGUSR1 reopen the log file, SIGUSR2 odyssey's online restart (see
`_online_restart` and restart.py); systemd hears `STOPPING=1` (not when handing over). `Supervisor.serve` installs the handlers
(SIGHUP is `Supervisor.reload`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket

from pooler.ipc import ReopenLog, Shutdown
from pooler.logs import log
from pooler.supervisor.notify import notify
from pooler.supervisor.restart import announce_main_pid, start_successor
from pooler.supervisor.workers import WorkerProcesses

KILL_GRACE = 5.0  # seconds past graceful_shutdown_timeout_ms before workers are killed


class Signals(WorkerProcesses):
    """What the signals do (state set by `Supervisor.__init__`)."""

    terminations: int  # SIGTERM/SIGINT received (max_sigterms_to_die)
    exit_code: int
    restarting: bool  # SIGUSR2: a new process is starting
    successor: int | None  # the pid this process handed over to (it drains)

    def shutdown(self, graceful: bool) -> None:
        if self.stopping and graceful:
            return
        self.stopping = True
        notify("STOPPING=1")
        log.info("supervisor", "termination signal received, shutting down")
        self.broadcast(Shutdown(graceful))
        if self.successor is None:
            self._stop_listening()
        if not graceful:
            for handle in self.workers.values():
                if handle.process is not None:
                    handle.process.kill()
        timeout = self.config.graceful_shutdown_timeout_ms / 1000
        if timeout:
            asyncio.get_running_loop().call_later(timeout + KILL_GRACE, self._kill_all)

    def _stop_listening(self) -> None:
        """Stop listening, as odyssey: a connection (a login, a CancelRequest) is refused at
        once. The workers stop accepting, but the sockets stayed open here: the kernel took
        connections nobody would accept, and each hung until the pooler exited. (Shut down,
        not closed: a worker a reload adds meanwhile still gets valid descriptors; never on
        an online restart's hand-over, where the sockets are the new process's.)"""
        for bound in self.sockets:
            for _listen, sock in bound:
                with contextlib.suppress(OSError):  # (a unix socket: it stays until we exit)
                    sock.shutdown(socket.SHUT_RD)

    def shutdown_soon(self, graceful: bool) -> None:
        asyncio.get_running_loop().call_later(0.1, self.shutdown, graceful)

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

    def _online_restart(self) -> None:
        """SIGUSR2, odyssey's online restart (pooler/supervisor/restart.py). Without
        `enable_online_restart` it is ignored, as odyssey does. One at a time: a SIGUSR2 while
        a new process starts, or while this one drains for its successor, is ignored with a
        line saying so."""
        log.info("online-restart", "online restart signal received")
        if not self.config.enable_online_restart:
            log.error(
                "online-restart", "online restart signal ignored - feature is disabled in config"
            )
            return
        if self.successor is not None:
            log.error(
                "online-restart",
                f"online restart signal ignored - this process (pid {os.getpid()}) handed over "
                f"to pid {self.successor} and is draining: signal that one",
            )
            return
        if self.stopping:
            log.error("online-restart", "online restart signal ignored - shutting down")
            return
        if self._ready is None or not self._ready.is_set():
            log.error("online-restart", "online restart signal ignored - still starting")
            return
        if self.restarting:
            log.error(
                "online-restart",
                "online restart signal ignored - a new process is starting already",
            )
            return
        self.restarting = True
        self._spawn(self._restart(), "online restart")

    async def _restart(self) -> None:
        try:
            pid, failure = await start_successor(self.sockets)
        finally:
            self.restarting = False
        if failure:
            log.error(
                "online-restart",
                f"online restart failed: new process{f' (pid {pid})' if pid else ''} {failure}"
                f"; this process (pid {os.getpid()}) goes on serving",
            )
            if not self.stopping:
                self._steer()  # whatever steering the failed one attached: ours again
            return
        if self.stopping:  # SIGTERM meanwhile: the new process serves, this one stops anyway
            announce_main_pid(pid)
            return
        await self._hand_over(pid)

    async def _hand_over(self, pid: int) -> None:
        """The new process serves: stop accepting (it accepts on the same sockets now), drain
        and exit. No STOPPING=1: the service goes on, in the new process."""
        self.successor = pid
        self.stopping = True
        announce_main_pid(pid)
        log.info(
            "online-restart",
            f"new process pid {pid} serves; this process (pid {os.getpid()}) stops accepting "
            "and drains its clients",
        )
        self.broadcast(Shutdown(True, restart=True))
        await self.close_endpoints()
        timeout = self.config.graceful_shutdown_timeout_ms / 1000
        if timeout:
            asyncio.get_running_loop().call_later(timeout + KILL_GRACE, self._kill_all)
        if not self.workers and self._done is not None:
            self._done.set()

    async def close_endpoints(self) -> None:
        """Close the control socket (its path is the new process's by now) and /metrics."""
        raise NotImplementedError

    def _reopen_logs(self) -> None:
        try:
            log.reopen()
        except OSError as exc:  # keep writing where we did
            log.error("supervisor", f"failed to reopen log file '{self.config.log_file}': {exc}")
        self.broadcast(ReopenLog())
