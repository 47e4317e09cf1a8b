"""The clients a draining process closes, and when (sans-I/O): the old process of an online
restart (`Drain.choose`), or a graceful shutdown (`Drain.choose_between`, SIGTERM).

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

A graceful shutdown (SIGTERM) drains as odyssey does (reference §2.9): any client between
transactions, at most `rate` per `interval_ms`, the longest quiet first; `drop_enabled no`:
none (they stay until they leave or `graceful_shutdown_timeout_ms`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from pooler.config.model import ConnDropOptions

RESTART_MESSAGE = "pooler is restarting (online restart), connect again"
SHUTDOWN_MESSAGE = "pooler is shutting down"


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

    def _room(self, now: float) -> int:
        """How many more may go in this interval (a new interval begins when one passed)."""
        if now - self._window >= self.options.interval_ms / 1000:
            self._window, self._dropped = now, 0
        return max(self.options.rate - self._dropped, 0)

    def choose_between(
        self, clients: Iterable[C], now: float, between: Callable[[C], bool]
    ) -> list[C]:
        """A graceful shutdown: clients between transactions, `rate` per interval."""
        if not self.options.drop_enabled:
            return []
        room = self._room(now)
        if not room:
            return []
        quiet = sorted(
            (client for client in clients if between(client)),
            key=lambda c: max(c.last_activity, c.ready_at),
        )[:room]
        self._dropped += len(quiet)
        return quiet

    def choose(self, clients: Iterable[C], now: float, between: Callable[[C], bool]) -> list[C]:
        if not self.options.drop_enabled:
            return []
        interval = self.options.interval_ms / 1000
        room = self._room(now)
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
        self._dropped += min(room, len(idle))
        return chosen + idle[:room]
