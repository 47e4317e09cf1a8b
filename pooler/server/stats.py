"""Counters a worker keeps per route: plain attributes, bumped on the hot path.

The three time totals (`xact_time_us`, `query_time_us`, `wait_time_us`) are bumped through
`record_xact`, `record_query` and `record_wait`, which also drop the duration into a
histogram (`pooler.histogram`'s buckets: looked up in a table below 4 ms, computed inline
above): that is how p50/p95/p99 are known without keeping samples (the relay, per
ReadyForQuery and per server handed at once, does what `record_query` and `record_wait(0)`
do inline; so does a waiting client's `_handed` with its `record_wait`). The counts (`xact_count`, `query_count`, `assignments`: one `record_wait` per
server a client got) are the histograms' sums, taken when asked (once a second for the
snapshot), not bumped per transaction.
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING

from pooler.histogram import bucket_of
from pooler.snapshot import RouteCounters

if TYPE_CHECKING:
    from pooler.config.model import Rule


# The buckets of the durations below 4 ms, looked up (an index per record_*, the bit
# arithmetic of `bucket_of` above it): transactions and queries mostly take that long or less.
TABULATED = 4096
BUCKETS = [bucket_of(us) for us in range(TABULATED)]


def route_names(rule: Rule, backend_db: str, backend_user: str) -> tuple[str, str]:
    """The database and user a route's clients ask for: what the console, the stats lines,
    the metric labels and the dashboard call the route. A `default` rule (or a group) gives
    one route per client database/user unless storage_db/storage_user folds them into one,
    which is then called by the rule's name (default_db, default_user, group_<name>)."""
    if rule.database is not None:
        database = rule.database
    else:
        database = rule.db_name if rule.storage_db else backend_db
    if rule.user is not None and not rule.group:
        user = rule.user
    else:
        user = rule.user_name if rule.storage_user else backend_user
    return database, user


def rule_label(rule: Rule) -> str:
    """The rule a route came from, as `db.user selector` (`default_db.default_user all`)."""
    return f"{rule.name} {rule.selector}"


class RouteStats:
    """Cumulative counters of one route (pgbouncer's SHOW STATS names)."""

    __slots__ = (
        "binds",
        "bytes_received",
        "bytes_sent",
        "client_parses",
        "errors",
        "max_wait_us",
        "query_hist",
        "query_time_us",
        "server_connects",
        "server_parses",
        "wait_hist",
        "wait_time_us",
        "xact_hist",
        "xact_time_us",
    )

    def __init__(self) -> None:
        self.bytes_received = 0  # from clients
        self.bytes_sent = 0  # to clients (received from servers)
        self.xact_time_us = 0
        self.query_time_us = 0
        self.wait_time_us = 0
        self.max_wait_us = 0
        self.server_connects = 0
        self.client_parses = 0  # Parse messages from clients (the unnamed ones too)
        self.server_parses = 0  # Parse messages sent to servers (incl. re-prepares)
        self.binds = 0  # Binds of named statements
        self.errors: dict[str, int] = {}
        # duration histograms (`pooler.histogram`'s buckets): their counts are the counts
        # of transactions, queries and assignments (one write less on the hot path)
        # (defaultdicts: `hist[index] += 1` without a method call)
        self.xact_hist: defaultdict[int, int] = defaultdict(int)
        self.query_hist: defaultdict[int, int] = defaultdict(int)
        self.wait_hist: defaultdict[int, int] = defaultdict(int)

    @property
    def xact_count(self) -> int:
        return sum(self.xact_hist.values())

    @property
    def query_count(self) -> int:
        return sum(self.query_hist.values())

    @property
    def assignments(self) -> int:
        """Servers given to clients (one `record_wait` each)."""
        return sum(self.wait_hist.values())

    def record_xact(self, us: int) -> None:
        """A transaction ended after `us`."""
        self.xact_time_us += us
        index = (
            BUCKETS[us]
            if 0 <= us < TABULATED
            else ((b := us.bit_length()) << 3) | ((us >> (b - 4)) & 7)
        )
        self.xact_hist[index] += 1

    def record_query(self, us: int) -> None:
        """A query (up to its ReadyForQuery) took `us`."""
        self.query_time_us += us
        index = (
            BUCKETS[us]
            if 0 <= us < TABULATED
            else ((b := us.bit_length()) << 3) | ((us >> (b - 4)) & 7)
        )
        self.query_hist[index] += 1

    def record_wait(self, us: int) -> None:
        """A client got a server after waiting `us` (one server assignment)."""
        self.wait_time_us += us
        index = (
            BUCKETS[us]
            if 0 <= us < TABULATED
            else ((b := us.bit_length()) << 3) | ((us >> (b - 4)) & 7)
        )
        self.wait_hist[index] += 1

    def counters(self) -> RouteCounters:
        """A copy of the counters now (for the worker's snapshot)."""
        return RouteCounters(
            xact_count=self.xact_count,
            query_count=self.query_count,
            bytes_received=self.bytes_received,
            bytes_sent=self.bytes_sent,
            xact_time_us=self.xact_time_us,
            query_time_us=self.query_time_us,
            wait_time_us=self.wait_time_us,
            max_wait_us=self.max_wait_us,
            server_connects=self.server_connects,
            assignments=self.assignments,
            client_parses=self.client_parses,
            server_parses=self.server_parses,
            binds=self.binds,
            errors=dict(self.errors),
            xact_hist=dict(self.xact_hist),
            query_hist=dict(self.query_hist),
            wait_hist=dict(self.wait_hist),
        )

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1
