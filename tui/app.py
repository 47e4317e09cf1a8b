"""The `pooler tui` dashboard: a Textual app attached to a running `pooler serve` through its
control socket only (tui.source.ControlSource). Live numbers come from the `subscribe` stream
(one stats event every stats_interval) plus one-shot refreshes after user actions; when the
pooler goes away the app says so and reconnects by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections import deque
from pathlib import Path
from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.widgets import Footer, Input, Static, TabbedContent, TabPane, Tabs, TextArea

from pooler.control import schema
from pooler.control.client import ControlError
from tui.screens.confirm import ConfirmScreen
from tui.source import ControlSource, Source
from tui.widgets.config_editor import ConfigPane
from tui.widgets.overview import OverviewPane
from tui.widgets.pools import PoolsPane, pool_key
from tui.widgets.sessions import ClientsTable, ServersTable
from tui.widgets.stats_log import StatsLogPane
from tui.widgets.workers import WorkersTable


def since_launch() -> float:
    """Seconds since this process started (Linux /proc, 10 ms ticks), for the start-up
    figures: launch -> first frame -> first live numbers."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22, starttime
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return time.perf_counter()


HISTORY = 180  # stats samples kept per pool (3 minutes at stats_interval 1)
RETRY_DELAYS = (0.5, 1.0, 2.0)  # then every 2 s
PANES = ("overview", "workers", "pools", "clients", "servers", "stats", "config")
_TABS = Binding.Group("pane", compact=True)


class PoolerDashboard(App[None]):
    CSS_PATH = "pooler.tcss"
    TITLE = "pooler"
    BINDINGS = [  # noqa: RUF012
        # 1-7 switch panes; while a text field has focus (the config editor, a filter) the
        # digits are typed there, and alt+1-7 (priority: they reach the app from the editor)
        # are the pane keys the footer shows instead
        *(
            Binding(str(n), f"show_pane('{pane}')", pane.title(), group=_TABS)
            for n, pane in enumerate(PANES, 1)
        ),
        Binding(  # what the footer shows for the alt keys, only while typing
            "alt+1", "jump_pane('overview', True)", "pane", key_display="alt+1…7", priority=True
        ),
        *(
            Binding(f"alt+{n}", f"jump_pane('{pane}')", pane.title(), show=False, priority=True)
            for n, pane in enumerate(PANES, 1)
        ),
        Binding("r", "refresh", "Refresh"),
        Binding("t", "toggle_dark", "Dark/light", show=False),
        Binding("f2", "screenshot", "Screenshot", show=False, priority=True),
        Binding("q", "quit", "Quit"),
    ]

    def __init__(
        self, source: Source, *, watch_files: bool = True, startup_report: bool = False
    ) -> None:
        super().__init__()
        self.startup: dict[str, float] = {}  # seconds after launch: first_frame, first_live
        self.startup_report = startup_report  # quit once the first live numbers are shown
        self.source = source
        self.follow_file = watch_files
        self.connected = False
        self.status: schema.Status | None = None
        self.worker_info: list[schema.WorkerInfo] = []
        self.pools: list[schema.PoolInfo] = []
        self.history: dict[str, deque[float]] = {}
        self.total_history: deque[float] = deque(maxlen=HISTORY)
        self.events = 0  # stats events received (tests wait on it)
        self.interval: float | None = None
        self._watched: str | None = None
        self._reason = ""

    # -- layout -------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Static(id="conn")
        with TabbedContent(id="panes", initial="overview"):
            with TabPane("1 Overview", id="overview"):
                yield OverviewPane(id="overview-pane")
            with TabPane("2 Workers", id="workers"):
                yield WorkersTable(id="workers-table")
            with TabPane("3 Pools", id="pools"):
                yield PoolsPane(id="pools-pane")
            with TabPane("4 Clients", id="clients"):
                yield ClientsTable(id="clients-table")
            with TabPane("5 Servers", id="servers"):
                yield ServersTable(id="servers-table")
            with TabPane("6 Stats", id="stats"):
                yield StatsLogPane(id="stats-pane")
            with TabPane("7 Config", id="config"):
                yield ConfigPane(id="config-pane")
        yield Footer()

    def on_ready(self) -> None:
        self.startup.setdefault("first_frame", since_launch())

    def on_mount(self) -> None:
        self._show_connection("connecting…")
        self.query_one(OverviewPane).show(None, [], [])
        self.run_connection()

    def watch_theme(self) -> None:
        with contextlib.suppress(Exception):
            dark = self.current_theme.dark
            self.query_one(ConfigPane).editor.theme = "odyssey-dark" if dark else "odyssey-light"

    # -- connection ---------------------------------------------------------------------

    @work(exclusive=True, group="connection", exit_on_error=False)
    async def run_connection(self) -> None:
        """Connect, load everything, follow the stats stream; on loss retry forever."""
        attempt = 0
        while True:
            try:
                await self.source.connect()
                self.connected = True
                await self.refresh_all()
                attempt = 0
                self._show_connection()
                async for event in self.source.subscribe():
                    await self.handle_stats(event)
                reason = "connection closed"
            except (OSError, ConnectionError, ControlError, asyncio.IncompleteReadError) as exc:
                reason = str(exc) or type(exc).__name__
            self.connected = False
            with contextlib.suppress(Exception):
                await self.source.close()
            delay = RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)]
            attempt += 1
            self._reason = reason
            self._show_connection(f"disconnected — retrying every {delay:g} s ({reason})")
            await asyncio.sleep(delay)

    def _show_connection(self, problem: str | None = None) -> None:
        bar = self.query_one("#conn", Static)
        text = Text()
        text.append(" pooler ", style="bold reverse")
        if self.status is not None:
            text.append(f" {self.status.version}")
        text.append(f" · {self.source.label} · ")
        if problem is None:
            text.append("● live", style="bold green")
            if self.interval:
                text.append(f" (stats every {self.interval:.0f} s)", style="dim")
        else:
            text.append(f"● {problem}", style="bold")
        bar.update(text)
        bar.set_class(problem is not None and problem != "connecting…", "-disconnected")

    async def refresh_all(self) -> None:
        status, workers, pools = await asyncio.gather(
            self.source.status(), self.source.workers(), self.source.pools()
        )
        self.status, self.worker_info, self.pools = status, workers, pools
        self._show_data()
        if "first_live" not in self.startup:
            self.call_after_refresh(self._shown_live)
        await self._refresh_sessions()
        await self._load_config()

    def _shown_live(self) -> None:
        """The first live numbers are on screen."""
        self.startup.setdefault("first_live", since_launch())
        if self.startup_report:
            self.exit()

    async def handle_stats(self, event: schema.StatsEvent) -> None:
        self.events += 1
        if self.interval is None:
            self.interval = event.interval
            self._show_connection()
        self.pools = list(event.pools)
        for pool in event.pools:
            key = pool_key(pool)
            self.history.setdefault(key, deque(maxlen=HISTORY)).append(pool.tps)
        self.total_history.append(sum(p.tps for p in event.pools))
        self.query_one(StatsLogPane).add_event(event.time, event.lines)
        status, self.worker_info = await asyncio.gather(self.source.status(), self.source.workers())
        generation_changed = self.status is not None and status.generation != self.status.generation
        self.status = status
        self._show_data()
        await self._refresh_sessions(only_visible=True)
        if generation_changed:
            await self._load_config()

    def _show_data(self) -> None:
        self.query_one(OverviewPane).show(self.status, self.pools, self.total_history)
        self.query_one(WorkersTable).show(self.worker_info)
        self.query_one(PoolsPane).show(self.pools, self.history)
        if self.status is not None and self.follow_file:
            self._watch_config(self.status.config_path)

    async def _refresh_sessions(self, only_visible: bool = False) -> None:
        active = self.query_one(TabbedContent).active
        if not only_visible or active == "clients":
            self.query_one(ClientsTable).show(await self.source.clients())
        if not only_visible or active == "servers":
            self.query_one(ServersTable).show(await self.source.servers())

    async def _load_config(self) -> None:
        self.query_one(ConfigPane).load(await self.source.config_get())

    # -- one-shot refreshes -------------------------------------------------------------

    @work(exclusive=True, group="refresh", exit_on_error=False)
    async def refresh_soon(self) -> None:
        if not self.connected:
            return
        with contextlib.suppress(OSError, ConnectionError, ControlError):
            status, self.worker_info, self.pools = await asyncio.gather(
                self.source.status(), self.source.workers(), self.source.pools()
            )
            self.status = status
            self._show_data()
            await self._refresh_sessions()

    @work(exclusive=True, group="config-get", exit_on_error=False)
    async def refresh_config(self) -> None:
        if self.connected:
            with contextlib.suppress(OSError, ConnectionError, ControlError):
                await self._load_config()

    def _watch_config(self, path: str) -> None:
        if path != self._watched:
            self._watched = path
            self.follow_config_file(Path(path))

    @work(exclusive=True, group="watch", exit_on_error=False)
    async def follow_config_file(self, path: Path) -> None:
        """Edits of the file by someone else: re-read it (the editor asks before
        discarding unsaved edits)."""
        from watchfiles import awatch

        if not path.parent.is_dir():
            return
        target = str(path)
        async for _changes in awatch(
            path.parent, watch_filter=lambda _change, name: name == target, debounce=200
        ):
            self.refresh_config()

    # -- actions ------------------------------------------------------------------------

    def typing(self) -> bool:
        """Does a text field have focus (so printable keys are typed into it)?"""
        return isinstance(self.focused, TextArea | Input)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """The footer shows 1-7 or alt+1-7 for the panes, whichever works with this focus;
        r and q are typed into a text field, so they are not shown then either."""
        if action in ("show_pane", "refresh", "quit"):
            return not self.typing()
        if action == "jump_pane" and parameters[1:]:  # the footer's alt+1…7
            return self.typing()
        return True

    def action_jump_pane(self, pane: str, hint: bool = False) -> None:
        self.action_show_pane(pane)

    def deliver_screenshot(
        self, filename: str | None = None, path: str | None = None, time_format: str | None = None
    ) -> str | None:
        """f2 and the palette's Screenshot: an SVG in the current directory (Textual's default,
        ~/Downloads, fails where that does not exist)."""
        try:
            saved = self.save_screenshot(filename, path or os.getcwd(), time_format)
        except OSError as exc:
            self.notify(f"Screenshot not saved: {exc}", severity="error")
            return None
        self.notify(f"Screenshot saved: {saved}")
        return saved

    def action_show_pane(self, pane: str) -> None:
        # Drop focus first: a focused widget in the pane being hidden would hand focus to its
        # neighbour, and TabbedContent re-activates the pane that holds the focus.
        self.set_focus(None)
        self.query_one(TabbedContent).active = pane
        self.call_after_refresh(self._focus_pane, pane)

    def _focus_pane(self, pane: str) -> None:
        target = {
            "workers": "#workers-table",
            "pools": "#pools-table",
            "clients": "#clients-table",
            "servers": "#servers-table",
            "stats": "#stats-log",
            "config": "#config-details-box",  # the pane's keys work; e enters the editor
        }.get(pane)
        if target:
            self.query_one(target).focus()
        else:
            self.query_one(TabbedContent).query_one(Tabs).focus()

    @on(TabbedContent.TabActivated)
    def _tab_activated(self, event: TabbedContent.TabActivated) -> None:
        if event.pane.id in ("clients", "servers"):
            self.refresh_soon()

    def action_refresh(self) -> None:
        self.refresh_soon()
        self.refresh_config()

    def action_toggle_dark(self) -> None:
        self.theme = "textual-light" if self.current_theme.dark else "textual-dark"

    @on(ClientsTable.KillRequested)
    def _kill_requested(self, event: ClientsTable.KillRequested) -> None:
        client_id = event.client_id

        def answer(yes: bool | None) -> None:
            if yes:
                self.kill_client(client_id)

        self.push_screen(
            ConfirmScreen(
                f"Kill client {client_id}? Its connection is closed at once.", yes="Kill"
            ),
            answer,
        )

    @work(group="actions", exit_on_error=False)
    async def kill_client(self, client_id: str) -> None:
        try:
            await self.source.kill_client(client_id)
        except ControlError as exc:
            self.notify(f"kill {client_id}: {exc.message}", severity="error")
        except (OSError, ConnectionError) as exc:
            self.notify(f"kill {client_id}: {exc}", severity="error")
        else:
            self.notify(f"Killed client {client_id}.")
        self.refresh_soon()


def run(control_path: str | Path, *, startup_report: bool = False) -> None:
    app = PoolerDashboard(ControlSource(control_path), startup_report=startup_report)
    app.run(headless=startup_report)
    if startup_report:
        frame, live = app.startup.get("first_frame"), app.startup.get("first_live")
        if frame is None or live is None:
            print(f"no live numbers: {app._reason or 'the app stopped first'}")
        else:
            print(f"first frame {frame:.2f} s, first live numbers {live:.2f} s after launch")


def build(control_path: str | Path, **kwargs: Any) -> PoolerDashboard:
    """The app for a control socket (CLI and tests)."""
    return PoolerDashboard(ControlSource(control_path), **kwargs)
