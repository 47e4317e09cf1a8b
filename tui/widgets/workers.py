"""Workers: one row per worker process."""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text

from pooler.control import schema
from tui import format as fmt
from tui.widgets.table import Column, LiveTable, Row

COLUMNS = (
    Column("index", "#", True),
    Column("pid", "pid", True),
    Column("state", "state"),
    Column("clients", "clients", True),
    Column("servers", "servers", True),
    Column("cpu", "cpu %", True),
    Column("rss", "rss", True),
    Column("restarts", "restarts", True),
)

STATE_STYLE = {"running": "green", "restarting": "bold yellow", "retiring": "dim"}


def worker_rows(workers: Sequence[schema.WorkerInfo]) -> list[Row]:
    rows = []
    for w in workers:
        restarts = Text(str(w.restarts), style="bold red" if w.restarts else "", justify="right")
        rows.append(
            Row(
                key=str(w.index),
                cells=(
                    w.index,
                    w.pid or "-",
                    Text(w.state, style=STATE_STYLE.get(w.state, "")),
                    w.clients,
                    w.servers,
                    f"{w.cpu_percent:.1f}",
                    fmt.size(w.rss_bytes),
                    restarts,
                ),
                values=(
                    w.index,
                    w.pid or 0,
                    w.state,
                    w.clients,
                    w.servers,
                    w.cpu_percent,
                    w.rss_bytes,
                    w.restarts,
                ),
                search=f"{w.pid} {w.state}",
            )
        )
    return rows


class WorkersTable(LiveTable):
    def __init__(self, **kwargs: object) -> None:
        super().__init__(COLUMNS, **kwargs)

    def show(self, workers: Sequence[schema.WorkerInfo]) -> None:
        self.set_rows(worker_rows(workers))
