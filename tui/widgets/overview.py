"""Overview: version, uptime, config and generation, last reload, totals, a tps sparkline."""

from __future__ import annotations

from collections.abc import Sequence

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Sparkline, Static

from pooler.control import schema
from tui import format as fmt


def reload_text(result: schema.ReloadResult | None) -> Text:
    if result is None:
        return Text("none since start", style="dim")
    if result.ok:
        text = Text(f"ok → generation {result.generation}", style="green")
        if result.changes:
            text.append(f" ({len(result.changes)} changes)", style="dim")
        return text
    first = result.errors[0] if result.errors else "failed"
    more = f" (+{len(result.errors) - 1} more)" if len(result.errors) > 1 else ""
    return Text(f"FAILED: {first}{more}", style="bold red")


class OverviewPane(Vertical):
    DEFAULT_CSS = """
    OverviewPane { height: 1fr; }
    OverviewPane #overview-facts { height: auto; }
    OverviewPane #overview-spark-label { margin-top: 1; color: $text-muted; }
    OverviewPane Sparkline { height: 3; margin: 0 1; }
    """

    facts: dict[str, str]  # plain values shown (for tests)

    def compose(self) -> ComposeResult:
        yield Static(id="overview-facts")
        yield Static("total tps", id="overview-spark-label")
        yield Sparkline([], id="overview-spark")

    def show(
        self,
        status: schema.Status | None,
        pools: Sequence[schema.PoolInfo],
        history: Sequence[float],
    ) -> None:
        facts = Table.grid(padding=(0, 2))
        facts.add_column(style="bold", no_wrap=True)
        facts.add_column(overflow="fold")
        facts.add_column(style="bold", no_wrap=True)
        facts.add_column(justify="right")
        if status is None:
            self.facts = {}
            facts.add_row("status", Text("waiting for the pooler…", style="dim"))
            self.query_one("#overview-facts", Static).update(facts)
            return
        tps = sum(p.tps for p in pools)
        qps = sum(p.qps for p in pools)
        waiting = sum(p.cl_waiting for p in pools)
        facts.add_row("version", status.version, "clients", str(status.clients))
        facts.add_row("pid", str(status.pid), "servers", str(status.servers))
        facts.add_row("uptime", fmt.duration(status.uptime), "waiting", str(waiting))
        facts.add_row("workers", str(status.workers), "tps", fmt.rate(tps))
        facts.add_row("paused", "yes" if status.paused else "no", "qps", fmt.rate(qps))
        facts.add_row("routes", str(len(pools)), "", "")
        facts.add_row("config", status.config_path, "", "")
        facts.add_row("generation", str(status.generation), "", "")
        facts.add_row("last reload", reload_text(status.last_reload), "", "")
        if status.last_reload and not status.last_reload.ok:
            for error in status.last_reload.errors[1:4]:
                facts.add_row("", Text(error, style="red"), "", "")
        self.facts = {
            "version": status.version, "config": status.config_path,
            "generation": str(status.generation), "clients": str(status.clients),
            "servers": str(status.servers), "tps": fmt.rate(tps), "qps": fmt.rate(qps),
            "last reload": reload_text(status.last_reload).plain,
        }  # fmt: skip
        self.query_one("#overview-facts", Static).update(facts)
        label = f"total tps, last {len(history)} samples (max {fmt.rate(max(history, default=0))})"
        self.query_one("#overview-spark-label", Static).update(label)
        # an all-zero series draws as full bars: show nothing until there is traffic
        data = list(history) if max(history, default=0) > 0 else []
        self.query_one("#overview-spark", Sparkline).data = data
