"""PAUSE, RESUME, RECONNECT, KILL and KILL_CLIENT: the one `PauseState` in force (sent whole to
every worker, with its config to a worker that starts) and the admin actions that ask every
worker, for the console and the control socket.
"""

from __future__ import annotations

from pooler.supervisor.workers import WorkerProcesses


class PauseControl(WorkerProcesses):
    async def admin_action(self, verb: str, db: str | None) -> None:
        """PAUSE/RESUME change the one PauseState in force, sent whole to every worker
        (PAUSE returns once their paused routes hold no server); KILL pauses as PAUSE and
        has every worker close the clients and servers of the database at once."""
        if verb == "pause":
            self.pause = self.pause.paused(db)
            await self.ask_all("pause", self.pause, timeout=3600)
        elif verb == "resume":
            self.pause = self.pause.resumed(db)
            await self.ask_all("resume", self.pause)
        elif verb == "reconnect":
            await self.ask_all("reconnect", db)
        elif verb == "kill":  # pgbouncer: paused as well, until RESUME
            self.pause = self.pause.paused(db)
            await self.ask_all("kill", self.pause, db)

    @property
    def paused_all(self) -> bool:
        return self.pause.everything

    def paused_state(self) -> set[str] | bool:
        return True if self.pause.everything else set(self.pause.databases)

    async def kill_client(self, client_id: str) -> bool:
        return any(await self.ask_all("kill_client", client_id))
