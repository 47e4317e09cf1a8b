"""Replica-lag aware routing: a storage's `watchdog` block and the rules' `catchup_timeout`.

As odyssey 1.5: the watchdog (at most one per config, its body a route of its own,
`watchdog_int.watchdog_int`) runs `watchdog_lag_query` every `watchdog_lag_interval` seconds
(at least 1) through that route. The query answers one value: the *heartbeat*, the time (Unix
seconds) of the newest change the server has applied, e.g. on a replica
``SELECT TRUNC(EXTRACT(EPOCH FROM pg_last_xact_replay_timestamp()))`` or a repl_mon-style
table the primary updates. The lag is now − heartbeat. A client whose rule (or listen) has a
`catchup_timeout` of N seconds is refused at login while the lag is N or more; before the first
heartbeat it waits for one, at most N seconds. `catchup_checks` is accepted and ignored, as
odyssey 1.5 does (it warns that the option is deprecated). A client may ask for its own limit
with the startup parameter `odyssey_catchup_timeout` (never passed on to the server).

Each worker runs its own watchdog (one query per interval per worker): workers share nothing.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Protocol

from pooler.config import Config, Listen, Rule
from pooler.logs import log
from pooler.server.backend import BackendError, ServerGone
from pooler.server.connect import ConnectFailed
from pooler.server.pool import PoolTimeout, Route

WATCHDOG_DB = WATCHDOG_USER = "watchdog_int"
_LEADING_INTEGER = re.compile(r"\s*([-+]?\d+)")


def parse_heartbeat(text: str | None) -> int | None:
    """The leading integer of the query's answer (odyssey reads it with strtol: `1732.9` is
    1732); None when there is none (NULL, or not a number)."""
    if text is None:
        return None
    match = _LEADING_INTEGER.match(text)
    return int(match.group(1)) if match else None


def catchup_timeout(listen: Listen, rule: Rule, requested: str | None = None) -> int:
    """The lag limit (seconds) for a client of `listen` routed by `rule`; 0 = none. The
    client's own `odyssey_catchup_timeout` startup parameter (`requested`) comes first (one
    that is not a number is ignored with an error, as odyssey does), then its listen block's
    catchup_timeout, then the rule's."""
    if requested is not None:
        if requested.isdigit():
            return int(requested)
        log.error("catchup", "junk after catchup timeout, ignore value")
    return listen.catchup_timeout or rule.catchup_timeout


class RouteOwner(Protocol):
    """What the watchdog uses of its worker."""

    config: Config

    def route_for(self, rule: Rule, database: str, user: str) -> Route: ...

    def storage_password(self, rule: Rule) -> str | None: ...


class LagWatchdog:
    """The latest heartbeat of this worker's storage watchdog."""

    def __init__(self, worker: RouteOwner) -> None:
        self.worker = worker
        self.heartbeat: int | None = None
        self._beat = asyncio.Event()

    def lag(self) -> int | None:
        """Seconds behind (never negative); None before the first heartbeat."""
        if self.heartbeat is None:
            return None
        return max(0, int(time.time()) - self.heartbeat)

    async def current_lag(self, limit: int) -> int | None:
        """The lag, waiting up to `limit` seconds for a first heartbeat (odyssey does the
        same after a start or reload); None if none came."""
        if self.heartbeat is None:
            try:
                async with asyncio.timeout(limit):
                    await self._beat.wait()
            except TimeoutError:
                return None
        return self.lag()

    async def run(self) -> None:
        """Poll while the config has a watchdog; a reload's new one is used from the next
        poll."""
        while True:
            rule = self._rule()
            if rule is not None and rule.watchdog_lag_query:
                await self._poll(rule, rule.watchdog_lag_query)
            interval = rule.watchdog_lag_interval if rule is not None else 1
            await asyncio.sleep(max(1, interval))

    def _rule(self) -> Rule | None:
        for storage in self.worker.config.storages:
            if storage.watchdog is not None:
                return storage.watchdog
        return None

    async def _poll(self, rule: Rule, query: str) -> None:
        worker = self.worker
        route = worker.route_for(rule, WATCHDOG_DB, WATCHDOG_USER)
        try:
            server = await route.acquire(worker.storage_password(rule))
        except (PoolTimeout, ConnectFailed, BackendError, ServerGone, OSError) as exc:
            log.error("watchdog", f"cannot reach the watchdog's server: {exc}")
            return
        try:
            row = await server.fetch_row(query)
        except (BackendError, ServerGone) as exc:
            log.error("watchdog", f"watchdog_lag_query failed: {exc}")
            route.discard(server)
            return
        route.release(server)
        heartbeat = parse_heartbeat(row[0] if row else None)
        if heartbeat is None:
            log.error("watchdog", f"can't parse lag from {row!r}")
            return
        if rule.log_debug:
            log.debug("watchdog", f"heartbeat {heartbeat}, lag {int(time.time()) - heartbeat} s")
        self.heartbeat = heartbeat
        self._beat.set()
