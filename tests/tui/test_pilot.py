"""The dashboard driven by Textual's pilot against a real `pooler serve` (control socket)."""

from __future__ import annotations

import contextlib
import subprocess
import sys

import psycopg
import pytest
from harness import async_wait_until
from helpers import cell_texts, start_pooler, until
from textual.widgets import TabbedContent

from pooler.control.client import ControlClient
from tui.app import build
from tui.screens.confirm import ConfirmScreen
from tui.widgets.config_editor import ConfigPane
from tui.widgets.overview import OverviewPane
from tui.widgets.stats_log import StatsLogPane

SIZE = (80, 24)

# a dozen waits on a live pooler, each sized for a loaded machine (see harness.WAIT_SCALE)
pytestmark = pytest.mark.timeout(180)


TRAFFIC = """
import sys, time, psycopg
with psycopg.connect(sys.argv[1], autocommit=True) as conn:
    while True:
        conn.execute("select 1")
        time.sleep(0.005)
"""


def traffic(p) -> subprocess.Popen[bytes]:
    """Queries on p0 from another process (in-process load would slow the pilot, which
    waits for the process to be idle after each key)."""
    return subprocess.Popen([sys.executable, "-c", TRAFFIC, p.dsn("p0")])


async def test_every_pane_live_numbers_and_kill(pooler):
    p, path = start_pooler(pooler)
    app = build(path, watch_files=False)
    app.animation_level = "none"
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.connected and app.status, what="connected")
        load = traffic(p)
        victim = await p.aconnect("p1")
        await victim.execute("select 1")
        tabs = app.query_one(TabbedContent)

        # overview: version, config path, live totals
        await pilot.press("1")
        assert tabs.active == "overview"
        overview = app.query_one(OverviewPane)
        await until(pilot, lambda: app.events >= 1, what="a stats event")
        assert overview.facts["config"] == str(p.config_path)
        assert overview.facts["generation"] == "0" and overview.facts["version"]
        await until(pilot, lambda: float(overview.facts["tps"].rstrip("k")) > 0, what="tps")
        # workers: two rows with pids
        await pilot.press("2")
        assert tabs.active == "workers"
        rows = cell_texts(app.query_one("#workers-table"))
        assert len(rows) == 2 and all(r[1].isdigit() for r in rows)
        # pools: the p0 route shows a non-zero tps once traffic flowed for a stats interval
        await pilot.press("3")
        assert tabs.active == "pools"
        table = app.query_one("#pools-table")

        def p0_tps():
            for pool in app.pools:
                if pool.backend_db == "p0" and pool.tps > 0:
                    return pool
            return None

        await until(pilot, p0_tps, timeout=8, what="tps on p0")
        await until(pilot, lambda: any(float(r[5].rstrip("k")) > 0 for r in cell_texts(table)))
        assert "transaction" in {r[1] for r in cell_texts(table)}
        # filter and sort
        await pilot.press("slash", *"zzz", "enter")
        assert cell_texts(table) == []
        await pilot.press("slash", "escape")
        assert cell_texts(table)
        await pilot.press("s")
        assert table.sort_index == 0
        # stats log: lines arrive, pause holds them
        await pilot.press("6")
        assert tabs.active == "stats"
        stats = app.query_one(StatsLogPane)
        await until(pilot, lambda: stats.received > 0, what="stats lines")
        log = app.query_one("#stats-log")
        assert any(line.split(" ", 1)[1].startswith("clients ") for line in log.lines)
        await pilot.press("p")
        shown = log.line_count
        await until(pilot, lambda: stats._held, what="held lines while paused")
        assert log.line_count == shown
        await pilot.press("p")
        assert log.line_count > shown and not stats._held
        # servers
        await pilot.press("5")
        assert tabs.active == "servers"
        await until(pilot, lambda: cell_texts(app.query_one("#servers-table")), what="servers")
        # config
        await pilot.press("7")
        assert tabs.active == "config"
        assert "pool_size 2" in app.query_one(ConfigPane).editor.text
        # clients: kill the p1 client after confirming
        await pilot.press("4")
        assert tabs.active == "clients"
        clients = app.query_one("#clients-table")
        await until(pilot, lambda: any(r[1] == "p1" for r in cell_texts(clients)), what="p1")
        index = next(i for i, r in enumerate(cell_texts(clients)) if r[1] == "p1")
        clients.move_cursor(row=index)
        await pilot.press("k")
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("n")  # no: nothing happens
        assert not isinstance(app.screen, ConfirmScreen)
        await victim.execute("select 1")
        await pilot.press("k")
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("y")
        await until(pilot, lambda: not any(r[1] == "p1" for r in cell_texts(clients)), what="kill")
        with pytest.raises(psycopg.OperationalError):
            await victim.execute("select 1")
        load.kill()
        load.wait()
        await victim.close()


async def test_edit_pool_size_apply_and_syntax_error(pooler):
    p, path = start_pooler(pooler)
    app = build(path, watch_files=False)
    app.animation_level = "none"
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.connected, what="connected")
        await pilot.press("7")
        pane = app.query_one(ConfigPane)
        editor = pane.editor
        await until(pilot, lambda: pane.validation and pane.validation.ok, what="validated")
        # edit pool_size 2 -> 5 by typing
        row = next(i for i, line in enumerate(editor.document.lines) if "pool_size 2" in line)
        col = editor.document.lines[row].index("2")
        editor.focus()
        editor.move_cursor((row, col))
        await pilot.press("delete", "5")
        assert "pool_size 5" in editor.text and pane.modified
        await until(
            pilot,
            lambda: (
                pane.validation.ok and any("pool_size 2 -> 5" in c for c in pane.validation.changes)
            ),
            what="the diff preview",
        )
        details = str(pane.query_one("#config-details").render())
        assert "pool_size 2 -> 5" in details
        await pilot.press("ctrl+s")
        await until(pilot, lambda: pane.last_apply is not None, what="apply")
        assert pane.last_apply.ok, pane.last_apply
        assert not pane.modified
        conn = await p.aconnect("p0")
        await conn.execute("select 1")
        async with ControlClient(path) as c:

            async def p0_pool_sizes():
                return [x.pool_size for x in await c.pools() if x.backend_db == "p0"]

            assert await async_wait_until(p0_pool_sizes, timeout=2) == [5]
        await conn.close()

        # a syntax error: marked at its line, nothing applied
        generation = (await _status(path)).generation
        on_disk = p.config_path.read_text()
        editor.move_cursor((row, 0))
        await pilot.press(*"oops {", "enter")
        await until(pilot, lambda: pane.validation and not pane.validation.ok, what="errors")
        assert editor.error_lines, pane.validation
        assert pane.query_one("#config-state").has_class("-invalid")
        await pilot.press("ctrl+s")
        await pilot.pause(0.3)
        assert (await _status(path)).generation == generation
        assert p.config_path.read_text() == on_disk


async def _status(path):
    async with ControlClient(path) as c:
        return await c.status()


async def test_external_change_and_reconnect(pooler):
    p, path = start_pooler(pooler)
    app = build(path, watch_files=True)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.connected and app._watched, what="connected")
        pane = app.query_one(ConfigPane)
        await until(pilot, lambda: pane.baseline is not None)
        # unmodified editor: an external edit just reloads it
        p.write_config(p.config_text.replace("pool_size 2", "pool_size 3"))
        await until(pilot, lambda: "pool_size 3" in pane.editor.text, what="reload in editor")
        # with unsaved edits: ask first; "keep" keeps them
        pane.editor.insert("# mine\n", (0, 0))
        p.write_config(p.config_text.replace("pool_size 3", "pool_size 4"))
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="question")
        await pilot.press("n")
        assert "# mine" in pane.editor.text and "pool_size 3" in pane.editor.text
        # the pooler goes away and comes back
        p.stop()
        await until(pilot, lambda: not app.connected, what="disconnect")
        await until(pilot, lambda: app.query_one("#conn").has_class("-disconnected"))
        assert "disconnected" in str(app.query_one("#conn").render())
        p.start()
        await until(
            pilot,
            lambda: not app.query_one("#conn").has_class("-disconnected"),
            timeout=15,
            what="reconnect",
        )
        assert app.connected and "live" in str(app.query_one("#conn").render())
        with contextlib.suppress(Exception):
            await until(pilot, lambda: app.events >= 1, timeout=3)
        assert app.events >= 1
