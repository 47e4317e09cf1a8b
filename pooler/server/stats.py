"""Counters a worker keeps per route: plain attributes, bumped on the hot path."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class RouteStats:
    """Cumulative counters of one route (pgbouncer's SHOW STATS names)."""

    xact_count: int = 0
    query_count: int = 0
    bytes_received: int = 0  # from clients
    bytes_sent: int = 0  # to clients (received from servers)
    xact_time_us: int = 0
    query_time_us: int = 0
    wait_time_us: int = 0
    max_wait_us: int = 0
    server_connects: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return {
            "xact_count": self.xact_count,
            "query_count": self.query_count,
            "bytes_received": self.bytes_received,
            "bytes_sent": self.bytes_sent,
            "xact_time_us": self.xact_time_us,
            "query_time_us": self.query_time_us,
            "wait_time_us": self.wait_time_us,
            "max_wait_us": self.max_wait_us,
            "server_connects": self.server_connects,
            "errors": dict(self.errors),
        }

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1
