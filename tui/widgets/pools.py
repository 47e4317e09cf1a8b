"""Pools: one row per route with live rates, latency, a tps trend; filter, sort, sparkline."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.widgets import DataTable, Input, Sparkline, Static

from pooler.control import schema
from tui import format as fmt
from tui.widgets.table import Column, LiveTable, Row

COLUMNS = (
    Column("route", "route"),
    Column("mode", "mode"),
    Column("size", "size", True),
    Column("sv", "sv a/i/l"),
    Column("cl", "cl a/w"),
    Column("tps", "tps", True),
    Column("qps", "qps", True),
    Column("avg", "avg xact", True),
    Column("p99", "p99 xact", True),
    Column("wait", "max wait", True),
    Column("trend", "tps trend"),
)


def pool_key(pool: schema.PoolInfo) -> str:
    """Unique per pool: the client-facing name, the rule it came from and its generation."""
    return f"{pool.database}.{pool.user} {pool.rule} #{pool.generation}"


def pool_label(pool: schema.PoolInfo) -> str:
    """`db.user` as clients ask for it (`(old)` for a route of an older config)."""
    label = f"{pool.database}.{pool.user}"
    return f"{label} (old)" if pool.obsolete else label


def pool_labels(pools: Sequence[schema.PoolInfo]) -> dict[str, str]:
    """A unique label per pool key: the rule is added where two routes share a name."""
    labels = {pool_key(p): pool_label(p) for p in pools}
    counts: dict[str, int] = {}
    for label in labels.values():
        counts[label] = counts.get(label, 0) + 1
    for p in pools:
        key = pool_key(p)
        if counts[labels[key]] > 1:
            labels[key] += f" ({p.rule} #{p.generation})"
    return labels


def pool_detail(pool: schema.PoolInfo) -> str:
    """Where the route goes: `server user@db, rule db.user selector` (`, shared_pool name`
    when its size is a shared pool's, shared with other routes)."""
    detail = f"server {pool.backend_user}@{pool.backend_db}, rule {pool.rule}"
    return f"{detail}, shared_pool {pool.shared_pool}" if pool.shared_pool else detail


def pool_rows(
    pools: Sequence[schema.PoolInfo], history: Mapping[str, Sequence[float]]
) -> list[Row]:
    rows = []
    labels = pool_labels(pools)
    for p in pools:
        key = pool_key(p)
        waiting = Text(f"{p.cl_active}/{p.cl_waiting}", style="bold yellow" if p.cl_waiting else "")
        route = Text(labels[key], style="dim" if p.obsolete else "")
        rows.append(
            Row(
                key=key,
                cells=(
                    route,
                    p.mode,
                    p.pool_size or "∞",
                    f"{p.sv_active}/{p.sv_idle}/{p.sv_login}",
                    waiting,
                    fmt.rate(p.tps),
                    fmt.rate(p.qps),
                    fmt.micros(p.avg_xact_us),
                    fmt.micros(p.p99_xact_us),
                    fmt.micros(p.maxwait_us),
                    Text(fmt.spark(history.get(key, ()), 10), style="green"),
                ),
                values=(
                    labels[key],
                    p.mode,
                    p.pool_size,
                    p.sv_active + p.sv_idle + p.sv_login,
                    p.cl_active + p.cl_waiting,
                    p.tps,
                    p.qps,
                    p.avg_xact_us,
                    p.p99_xact_us,
                    p.maxwait_us,
                    sum(history.get(key, ())),
                ),
                search=f"{labels[key]} {pool_detail(p)} {p.mode}",
            )
        )
    return rows


class PoolsPane(Vertical):
    DEFAULT_CSS = """
    PoolsPane { height: 1fr; }
    PoolsPane #pools-filter { margin: 0 0 0 0; }
    PoolsPane LiveTable { height: 1fr; }
    PoolsPane #pools-spark-label { height: 1; color: $text-muted; }
    PoolsPane Sparkline { height: 2; }
    """
    BINDINGS = [  # noqa: RUF012
        Binding("slash", "filter", "Filter"),
        Binding("escape", "clear_filter", "Clear filter", show=False),
    ]

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._pools: list[schema.PoolInfo] = []
        self._history: Mapping[str, Sequence[float]] = {}
        self._labels: dict[str, str] = {}

    def compose(self) -> ComposeResult:
        yield Input(placeholder="/ filter routes", id="pools-filter", compact=True)
        yield LiveTable(COLUMNS, id="pools-table")
        yield Static("tps", id="pools-spark-label")
        yield Sparkline([], id="pools-spark")

    @property
    def table(self) -> LiveTable:
        return self.query_one("#pools-table", LiveTable)

    def show(
        self, pools: Sequence[schema.PoolInfo], history: Mapping[str, Sequence[float]]
    ) -> None:
        self._pools, self._history = list(pools), history
        labels = pool_labels(pools)
        self._labels = {pool_key(p): f"{labels[pool_key(p)]} ({pool_detail(p)})" for p in pools}
        self.table.set_rows(pool_rows(pools, history))
        self._show_spark()

    def _show_spark(self) -> None:
        key = self.table.selected_key
        if key is None:
            self.query_one("#pools-spark-label", Static).update("tps: no route selected")
            self.query_one("#pools-spark", Sparkline).data = []
            return
        data = list(self._history.get(key, ()))
        self.query_one("#pools-spark-label", Static).update(
            f"tps of {self._labels.get(key, key)}: last {len(data)} samples, now {fmt.rate(data[-1] if data else 0)},"
            f" max {fmt.rate(max(data, default=0))}"
        )
        self.query_one("#pools-spark", Sparkline).data = data if max(data, default=0) > 0 else []

    @on(DataTable.RowHighlighted, "#pools-table")
    def _row_changed(self) -> None:
        self._show_spark()

    @on(Input.Changed, "#pools-filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        self.table.set_filter(event.value)
        self._show_spark()

    @on(Input.Submitted, "#pools-filter")
    def _filter_done(self) -> None:
        self.table.focus()

    def action_filter(self) -> None:
        self.query_one("#pools-filter", Input).focus()

    def action_clear_filter(self) -> None:
        self.query_one("#pools-filter", Input).value = ""
        self.table.focus()
