"""Every field a SHOW column or a metric reads of a worker snapshot is produced by
Worker.snapshot() (issue 15, fault 6: SHOW LISTS login_clients was always 0 and SHOW POOLS
load_balance_hosts always NULL because nobody produced them; `.get(name, default)` hid it)."""

from __future__ import annotations

import types
from typing import Any, ClassVar

import pytest

from pooler.config import parse_text
from pooler.server.router import ClientKey
from pooler.server.worker import Worker
from pooler.supervisor import aggregate, console, metrics, odyssey_views

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


class Recording(dict[str, Any]):
    """A snapshot dict that notes every key read but absent."""

    missing: ClassVar[set[str]] = set()

    def get(self, key: str, default: Any = None) -> Any:
        if key not in self:
            Recording.missing.add(key)
        return super().get(key, default)

    def __getitem__(self, key: str) -> Any:
        if key not in self:
            Recording.missing.add(key)
        return super().__getitem__(key)


class Sup:
    """What the console and /metrics read of the supervisor, over one real snapshot."""

    def __init__(self, config: Any, snapshot: dict[str, Any]) -> None:
        self.config = config
        self.db_rates: dict[str, aggregate.Rates] = {}
        self._snapshot = snapshot

    def snapshots(self) -> list[dict[str, Any]]:
        snap = Recording(self._snapshot)
        snap["routes"] = [Recording(r) for r in self._snapshot["routes"]]
        return [snap]

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
def sup(monkeypatch: pytest.MonkeyPatch) -> Sup:
    config = parse_text(CONFIG)
    worker = Worker(config, 0, types.SimpleNamespace(slots=None))  # type: ignore[arg-type]
    rule = worker.router.match(ClientKey("p0", "user", "127.0.0.1"))
    assert rule is not None
    worker.route_for(rule, "p0", "user")
    merge = aggregate.merge_routes
    monkeypatch.setattr(
        aggregate, "merge_routes", lambda snaps: [Recording(r) for r in merge(snaps)]
    )
    Recording.missing = set()
    return Sup(config, worker.snapshot())


async def test_show_commands_read_only_produced_fields(sup: Sup) -> None:
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
    assert not Recording.missing, sorted(Recording.missing)


def test_metrics_read_only_produced_fields(sup: Sup) -> None:
    list(metrics.SupervisorCollector(sup).collect())  # type: ignore[arg-type]
    assert not Recording.missing, sorted(Recording.missing)
