"""Signals and stopping: SIGTERM/SIGINT graceful shutdown (the max_sigterms_to_die-th at
once), SIGQUIT immediate, SIGUSR1 reopen the log file, SIGUSR2 odyssey's online restart (see
`_online_restart`); systemd hears `STOPPING=1`. `Supervisor.serve` installs the handlers
(SIGHUP is `Supervisor.reload`).
"""

from __future__ import annotations

import asyncio

from pooler.ipc import ReopenLog, Shutdown
from pooler.logs import log
from pooler.supervisor.notify import notify
from pooler.supervisor.workers import WorkerProcesses

KILL_GRACE = 5.0  # seconds past graceful_shutdown_timeout_ms before workers are killed


class Signals(WorkerProcesses):
    """What the signals do (state set by `Supervisor.__init__`)."""

    terminations: int  # SIGTERM/SIGINT received (max_sigterms_to_die)
    exit_code: int

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
