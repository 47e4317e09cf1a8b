"""The clients an old process of an online restart closes, and when (sans-I/O).

The new process accepts every new login; the old one must let its clients go without cutting
a transaction (docs/architecture.md, "Online restart"). Each drain tick `Drain.choose` names
the clients to close now, among those with nothing in flight (`between` is
`pooler.server.idle.between_transactions`):
- transaction (and statement) pools: a client whose transaction ends during the drain, at
  that boundary (`at_boundary`, as its server goes back; its next transaction goes to the
  new process once it reconnects), or at the next tick if it ended in between;
- any pool: a client idle (nothing sent since its login or its last query) for a whole
  `conn_drop_options.interval_ms`, at most `rate` of them per interval, the longest idle
  first (odyssey's `conn_drop_options`, alias `online_restart_drop_options`);
- `drop_enabled no`: none; clients stay until they leave or `graceful_shutdown_timeout_ms`.
A client that logged in but sent nothing yet is never closed under it: its first query is on
its way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from pooler.config.model import ConnDropOptions

RESTART_MESSAGE = "pooler is restarting (online restart), connect again"


class Draining(Protocol):
    mode: str | None
    last_activity: float  # when it last sent something after its login (monotonic)
    ready_at: float  # when its login was over


C = TypeVar("C", bound=Draining)


@dataclass
class Drain:
    options: ConnDropOptions
    started: float  # monotonic
    _window: float = field(init=False, default=0.0)
    _dropped: int = field(init=False, default=0)

    def at_boundary(self, client: C, between: Callable[[C], bool]) -> bool:
        """Its transaction just ended (its server went back): let it go now?"""
        return self.options.drop_enabled and client.mode != "session" and between(client)

    def choose(self, clients: Iterable[C], now: float, between: Callable[[C], bool]) -> list[C]:
        if not self.options.drop_enabled:
            return []
        interval = self.options.interval_ms / 1000
        if now - self._window >= interval:
            self._window, self._dropped = now, 0
        chosen: list[C] = []
        idle: list[C] = []
        for client in clients:
            if not between(client):
                continue
            quiet_since = max(client.last_activity, client.ready_at)
            ran_one = client.last_activity > client.ready_at  # sent something after login
            if client.mode != "session" and ran_one and client.last_activity >= self.started:
                chosen.append(client)  # its transaction ended during the drain: the boundary
            elif now - quiet_since >= interval:
                idle.append(client)
        idle.sort(key=lambda c: max(c.last_activity, c.ready_at))
        room = max(self.options.rate - self._dropped, 0)
        self._dropped += min(room, len(idle))
        return chosen + idle[:room]
