"""Group rules: `group "NAME" { … group_query … }`, as odyssey's group checker.

Every `group_checker_interval` ms (global, default 7000) each group rule's `group_query` runs as
`group_query_user`@`group_query_db`, through the rule those would be routed by as an internal
client (a `pool_routing "internal"` rule, as odyssey; else, as for auth_query, the
client-visible one). The first column of every row is a member's user name; the members are
routed by the group's rule (`router.py`). A check that fails (no route, no server, an error,
no answer in time) keeps the members of the last good one and logs why.

Each worker checks for itself (one query per group per interval per worker), at once when it
starts and after a reload, so a member's login waits only for that first check.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from pooler.config import Config, Rule, Storage
from pooler.logs import log
from pooler.server.backend import BackendError, ServerGone
from pooler.server.connect import ConnectFailed
from pooler.server.pool import PoolTimeout, Route
from pooler.server.router import GroupKey, group_key

CHECK_TIMEOUT = 10.0  # seconds one check may take (a server, the query, its answer)


class RouteOwner(Protocol):
    """What the group checker uses of its worker."""

    config: Config

    def internal_rule(self, db: str, user: str) -> Rule | None: ...

    def route_for(self, rule: Rule, database: str, user: str) -> Route: ...

    def storage_password(self, rule: Rule) -> str | None: ...

    def storage_of(self, rule: Rule) -> Storage: ...


def member_names(rows: list[list[str | None]]) -> frozenset[str]:
    """The first column of every row (NULLs and empty rows skipped)."""
    return frozenset(row[0] for row in rows if row and row[0] is not None)


class GroupChecker:
    """The members of this worker's group rules, refreshed every group_checker_interval."""

    def __init__(self, worker: RouteOwner) -> None:
        self.worker = worker
        self.members: dict[GroupKey, frozenset[str]] = {}  # read by the worker's Router
        self._checked = asyncio.Event()  # the first round since the start or a reload ended
        self._wake = asyncio.Event()
        if not self._groups():
            self._checked.set()  # nothing to check: logins need not look again (`ready`)

    def reloaded(self) -> None:
        """A new config: check its groups now (a new group would otherwise route nobody for
        up to an interval); members of groups that are gone are forgotten."""
        if self._groups():
            self._checked.clear()
        self._wake.set()

    @property
    def ready(self) -> bool:
        """The groups were checked once (or there are none): a login need not wait."""
        return self._checked.is_set() or not self._groups()

    async def first_check(self) -> None:
        """Wait (a login does, at most one interval) until the groups were checked once."""
        if self.ready:
            return
        try:
            async with asyncio.timeout(max(1.0, self.worker.config.group_checker_interval / 1000)):
                await self._checked.wait()
        except TimeoutError:
            pass

    def _groups(self) -> list[Rule]:
        return [rule for rule in self.worker.config.rules if rule.group]

    async def run(self) -> None:
        while True:
            self._wake.clear()
            groups = self._groups()
            keys = {group_key(rule) for rule in groups}
            for key in self.members.keys() - keys:
                del self.members[key]
            for rule in groups:
                try:
                    await self.check(rule)
                except Exception as exc:  # a bug must not stop the checks (the members stay)
                    log.error("group_checker", f"{rule.name}: group check failed: {exc!r}")
            self._checked.set()
            interval = max(1, self.worker.config.group_checker_interval) / 1000
            try:
                async with asyncio.timeout(interval):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def check(self, rule: Rule) -> None:
        """Run the group's query once; its answer replaces the members."""
        try:
            async with asyncio.timeout(CHECK_TIMEOUT):
                names = await self._query(rule)
        except TimeoutError:
            names = None
            log.error("group_checker", f"{rule.name}: group_query got no answer in time")
        if names is None:
            return  # the last members stay
        key = group_key(rule)
        if self.members.get(key) != names:
            if self.worker.config.log_debug or rule.log_debug:
                log.debug("group_checker", f"{rule.name}: {len(names)}, {sorted(names)}")
            self.members[key] = names

    async def _query(self, rule: Rule) -> frozenset[str] | None:
        worker = self.worker
        db, user = rule.group_query_db or "", rule.group_query_user or ""
        internal = worker.internal_rule(db, user)
        if internal is None or worker.storage_of(internal).type != "remote":
            log.error("group_checker", f"{rule.name}: no route for group_query user '{db}.{user}'")
            return None
        route = worker.route_for(internal, db, user)
        try:
            server = await route.acquire(worker.storage_password(internal))
        except (PoolTimeout, ConnectFailed, BackendError, ServerGone, OSError) as exc:
            log.error("group_checker", f"{rule.name}: cannot reach the group_query server: {exc}")
            return None
        try:
            rows = await server.fetch_rows(rule.group_query or "")
        except (BackendError, ServerGone) as exc:
            log.error("group_checker", f"{rule.name}: group_query failed: {exc}")
            route.discard(server)
            return None
        except BaseException:  # timed out or cancelled mid-answer: the server is out of step
            route.discard(server)
            raise
        route.release(server)
        return member_names(rows)
