"""Issue 17's dashboard points, driven by Textual's pilot against a real `pooler serve`:
the Stats pane follows past its 5,000 lines, the config editor's focus and keys, the
screenshot key."""

from __future__ import annotations

import html

from helpers import start_pooler, until
from textual.widgets import Log, TabbedContent

from tui.app import build
from tui.widgets.config_editor import ConfigPane
from tui.widgets.stats_log import MAX_LINES, StatsLogPane

SIZE = (80, 24)


def screen_text(app) -> str:
    """What the terminal shows (the SVG screenshot's text)."""
    return html.unescape(app.export_screenshot()).replace("\xa0", " ")


def _footer(app) -> dict[str, str]:
    """The keys the footer shows: key -> description."""
    from textual.widgets import Footer

    return {item.key_display: item.description for item in app.query_one(Footer).query("FooterKey")}


async def test_stats_pane_follows_the_tail_past_max_lines(pooler):
    _, path = start_pooler(pooler)
    app = build(path, watch_files=False)
    app.animation_level = "none"
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.connected, what="connected")
        await pilot.press("6")
        pane = app.query_one(StatsLogPane)
        log = app.query_one("#stats-log", Log)
        await until(pilot, lambda: pane.received > 0, what="stats lines")
        # the log full, as after ~28 minutes at stats_interval 1
        log.write_lines([f"filler {n}" for n in range(MAX_LINES)])
        await pilot.pause()
        events = app.events
        await until(pilot, lambda: app.events >= events + 2, timeout=10, what="two more events")
        await pilot.press("end")
        await pilot.pause()
        assert log.line_count == MAX_LINES
        last = log.lines[-1]
        assert not last.startswith("filler")
        assert last[:70] in screen_text(app), (last, screen_text(app))


async def test_config_editor_focus_and_keys(pooler):
    _, path = start_pooler(pooler)
    app = build(path, watch_files=False)
    app.animation_level = "none"
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.connected, what="connected")
        tabs = app.query_one(TabbedContent)
        await pilot.press("7")
        pane = app.query_one(ConfigPane)
        editor = pane.editor
        await until(pilot, lambda: pane.baseline is not None, what="config loaded")
        # outside the editor: e enters it, and the footer says so
        assert not editor.has_focus
        assert _footer(app)["e"] == "Edit" and "7" in _footer(app)
        assert "e edits" in str(pane.query_one("#config-state").render())
        await pilot.press("e")
        assert editor.has_focus
        footer = _footer(app)
        assert footer["esc"] == "Leave" and footer["alt+1…7"] == "pane" and "7" not in footer
        assert "editing (esc leaves)" in str(pane.query_one("#config-state").render())
        # digits are text in the editor, alt+digit switches panes
        before = editor.text
        editor.move_cursor((0, 0))
        await pilot.press("7", "4")
        assert editor.text == "74" + before and tabs.active == "config"
        await pilot.press("backspace", "backspace")
        assert editor.text == before
        await pilot.press("alt+3")
        assert tabs.active == "pools"
        await pilot.press("alt+7")
        assert tabs.active == "config"
        # esc leaves the editor; the digits are pane keys again
        await pilot.press("e")
        assert editor.has_focus
        await pilot.press("escape")
        assert not editor.has_focus and _footer(app)["e"] == "Edit"
        await pilot.press("2")
        assert tabs.active == "workers" and editor.text == before


async def test_f2_saves_an_svg_screenshot_in_the_current_directory(pooler, tmp_path, monkeypatch):
    _, path = start_pooler(pooler)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home-without-downloads"))
    app = build(path, watch_files=False)
    app.animation_level = "none"
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.connected, what="connected")
        await pilot.press("f2")
        shots = await until(pilot, lambda: list(tmp_path.glob("*.svg")), what="a screenshot")
        assert len(shots) == 1 and shots[0].read_text().startswith("<svg")
        # from inside the editor too
        await pilot.press("7", "e", "f2")
        await until(pilot, lambda: len(list(tmp_path.glob("*.svg"))) == 2, what="a second one")


def test_startup_report_measures_launch_to_first_frame_and_live_numbers(pooler):
    """`pooler tui --startup-report`: the seconds from launch to the first frame and to the
    first live numbers (issue 17 asked for the figures; docs/architecture.md states them)."""
    import re
    import subprocess
    import sys

    _, path = start_pooler(pooler)
    done = subprocess.run(
        [sys.executable, "-m", "pooler", "tui", "--control", str(path), "--startup-report"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    found = re.search(
        r"first frame ([\d.]+) s, first live numbers ([\d.]+) s after launch", done.stdout
    )
    assert found, done.stdout + done.stderr
    frame, live = float(found[1]), float(found[2])
    assert 0 < frame <= live
    print(f"\nstart-up: first frame {frame:.2f} s, first live numbers {live:.2f} s")


async def test_pools_pane_names_routes_as_clients_ask_for_them(pooler):
    """Two routes on one backend database (a session and a transaction route to p0): the
    Pools pane shows each by the database its clients ask for, not `p0.postgres*` twice."""
    from harness import SERVE_COMMAND, make_config, route, wait_until
    from helpers import cell_texts

    p = pooler(
        make_config(
            [
                route("bench_s", "default", pool="session", storage_db="p0"),
                route("bench_t", "default", pool="transaction", pool_size=2, storage_db="p0"),
            ],
            stats_interval=1,
        ),
        command=(*SERVE_COMMAND, "--control", "{workdir}/ctl.sock"),
        start=False,
    )
    p.command = [a.replace("{workdir}", str(p.workdir)) for a in p.command]
    p.start()
    path = p.workdir / "ctl.sock"
    wait_until(path.exists)
    for db in ("bench_s", "bench_t"):
        p.sql("select 1", dbname=db)
    app = build(path, watch_files=False)
    app.animation_level = "none"
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.connected, what="connected")
        await pilot.press("3")
        table = app.query_one("#pools-table")

        def routes():
            return sorted(r[0] for r in cell_texts(table) if r[0].startswith("bench"))

        await until(pilot, lambda: len(routes()) == 2, what="both routes")
        assert routes() == ["bench_s.postgres", "bench_t.postgres"]
        spark = str(app.query_one("#pools-spark-label").render())
        assert "server postgres@p0" in spark or "no route selected" in spark


def test_pools_pane_shows_a_shared_pools_size_and_name():
    """A route of a `shared_pool` has no pool_size of its own: the pane shows the shared
    pool's size (not ∞, which would read as unlimited) and names the pool in its detail."""
    from fake import pool

    from tui.widgets.pools import pool_detail, pool_rows

    shared = pool("p1", "app", "transaction", 7, 10.0, shared_pool="sp")
    (row,) = pool_rows([shared], {})
    assert row.cells[2] == 7 and row.values[2] == 7
    assert pool_detail(shared).endswith(", shared_pool sp")
    unlimited = pool("p2", "app", "transaction", 0, 10.0)
    (own,) = pool_rows([unlimited], {})
    assert own.cells[2] == "∞" and "shared_pool" not in pool_detail(unlimited)
