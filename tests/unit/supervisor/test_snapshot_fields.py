"""What the supervisor shows of a worker is what Worker.snapshot() produces (issue 15, fault
6: SHOW LISTS login_clients was always 0 and SHOW POOLS load_balance_hosts always NULL
because nobody produced them; `.get(name, default)` hid it). Snapshots are typed
(`pooler.snapshot`), so mypy catches a field read that no worker produces; these tests run
every SHOW command and /metrics over a real worker's snapshot and check the values come
through, after a trip through the IPC pickling."""

from __future__ import annotations

import pickle
import types
from typing import Any

import pytest

from pooler.config import parse_text
from pooler.ipc import Stats
from pooler.server.client import ClientConnection
from pooler.server.router import ClientKey
from pooler.server.worker import Worker
from pooler.snapshot import WorkerSnapshot
from pooler.supervisor import aggregate, console, metrics, odyssey_views
from pooler.supervisor.stats import StatsWindow

CONFIG = """
log_format "%m\\n"
listen { host "127.0.0.1" port 6432 }
storage "pg" { type "remote" host "127.0.0.1:5,127.0.0.2:5" }
storage "local" { type "local" }
database "console" { user "admin" { authentication "none" storage "local" role "admin" pool "session" } }
database default { user default {
    authentication "none" storage "pg" pool "transaction" pool_size 4
} }
"""


class Sup:
    """What the console and /metrics read of the supervisor, over one real snapshot."""

    def __init__(self, config: Any, snapshot: WorkerSnapshot) -> None:
        self.config = config
        self.db_rates: dict[str, aggregate.Rates] = {}
        self._snapshot = snapshot

    def snapshots(self) -> list[WorkerSnapshot]:
        return [self._snapshot]

    def paused_state(self) -> set[str] | bool:
        return set()

    def quantiles(self) -> tuple[float, ...]:
        return odyssey_views.DEFAULT_QUANTILES

    def obsolete_rules(self) -> list[Any]:
        return []

    async def gather(self, what: str) -> list[Any]:
        return []

    def worker_infos(self) -> list[Any]:
        return []


@pytest.fixture
def sup() -> Sup:
    """A worker with one route (of a two-host storage) and two clients logging in."""
    config = parse_text(CONFIG)
    worker = Worker(config, 0, types.SimpleNamespace(slots=None))  # type: ignore[arg-type]
    rule = worker.router.match(ClientKey("p0", "user", "127.0.0.1"))
    assert rule is not None
    worker.route_for(rule, "p0", "user")
    for _ in range(2):
        worker.clients.add(ClientConnection(worker, config.listens[0], unix=False))
    message = pickle.loads(pickle.dumps(Stats(worker.snapshot())))  # as the IPC sends it
    return Sup(config, message.snapshot)


def rows(result: Any) -> list[dict[str, Any]]:
    names = [name for name, _ in result.columns]
    return [dict(zip(names, row, strict=True)) for row in result.rows]


async def test_show_commands_render_a_real_snapshot(sup: Sup) -> None:
    for what in (
        "pools",
        "pools_extended",
        "stats",
        "stats_totals",
        "stats_averages",
        "databases",
        "users",
        "lists",
        "errors",
        "clients",
        "servers",
    ):
        assert await console.show(sup, what) is not None  # type: ignore[arg-type]


async def test_lists_count_the_clients_logging_in(sup: Sup) -> None:
    lists = {row["list"]: row["items"] for row in rows(await console.show(sup, "lists"))}  # type: ignore[arg-type]
    assert lists["login_clients"] == 2 and lists["used_clients"] == 2


async def test_pools_show_the_balancing_of_a_multi_host_storage(sup: Sup) -> None:
    (pool,) = rows(await console.show(sup, "pools"))  # type: ignore[arg-type]
    assert (pool["database"], pool["user"]) == ("p0", "user")
    assert pool["load_balance_hosts"] == "roundrobin"


def test_metrics_render_a_real_snapshot(sup: Sup) -> None:
    families = {f.name: f for f in metrics.SupervisorCollector(sup).collect()}  # type: ignore[arg-type]
    assert families["odyssey_lists_login_clients"].samples[0].value == 2
    (capacity,) = families["odyssey_server_pool_capacity_configured_route"].samples
    assert capacity.value == 4


SHARED_CONFIG = """
log_format "%m\\n"
listen { host "127.0.0.1" port 6432 }
storage "pg" { type "remote" host "127.0.0.1" port 5 }
storage "local" { type "local" }
shared_pool "sp" { pool_size 7 }
database "console" { user "admin" { authentication "none" storage "local" role "admin" pool "session" } }
database "p1" { user default {
    authentication "none" storage "pg" pool "transaction" shared_pool "sp"
} }
"""


async def test_a_shared_pool_route_shows_the_shared_pool_size() -> None:
    """A rule with `shared_pool "sp"` has pool_size 0 of its own (odyssey forbids both), but
    its servers are capped by the shared pool's 7: every place that shows a route's or a
    database's pool_size shows 7 (0 would read as "unlimited")."""
    config = parse_text(SHARED_CONFIG)
    worker = Worker(config, 0, types.SimpleNamespace(slots=None))  # type: ignore[arg-type]
    rule = worker.router.match(ClientKey("p1", "user", "127.0.0.1"))
    assert rule is not None and rule.pool_size == 0 and rule.shared_pool == "sp"
    worker.route_for(rule, "p1", "user")
    message = pickle.loads(pickle.dumps(Stats(worker.snapshot())))
    sup = Sup(config, message.snapshot)
    (route,) = message.snapshot.routes
    assert route.pool_size == 7
    (db,) = [r for r in rows(await console.show(sup, "databases")) if r["name"] == "p1"]  # type: ignore[arg-type]
    assert (db["pool_size"], db["max_connections"]) == (7, 7)
    (user,) = [r for r in rows(await console.show(sup, "users")) if r["name"] == rule.user_name]  # type: ignore[arg-type]
    assert (int(user["pool_size"]), user["max_user_connections"]) == (7, 7)
    families = {f.name: f for f in metrics.SupervisorCollector(sup).collect()}  # type: ignore[arg-type]
    (capacity,) = families["odyssey_server_pool_capacity_configured_route"].samples
    assert capacity.value == 7
    window = types.SimpleNamespace(route_rates={})
    (info,) = StatsWindow.pool_infos(window, aggregate.merge_routes(sup.snapshots()))  # type: ignore[arg-type]
    assert (info.pool_size, info.shared_pool) == (7, "sp")
