"""Snapshots of the main panes at 80×24 with canned data (tests/tui/fake.py).

Update after an intended change: `pytest tests/tui/test_snapshots.py --snapshot-update`.
"""

from __future__ import annotations

import time

import pytest
from fake import CONFIG, CONFIG_PATH, EVENTS, FakeSource
from helpers import until

from tui.app import PoolerDashboard
from tui.widgets.config_editor import ConfigPane

SIZE = (80, 24)


@pytest.fixture(scope="module", autouse=True)
def warm_parser():
    """Build the config grammar once (about 1 s) outside the timed app runs."""
    from pooler.config import parse_text

    parse_text(CONFIG, CONFIG_PATH)


@pytest.fixture(autouse=True)
def utc(monkeypatch):
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def app() -> PoolerDashboard:
    return PoolerDashboard(FakeSource(), watch_files=False)


def ready(*keys: str):
    async def run_before(pilot) -> None:
        await until(pilot, lambda: pilot.app.events == EVENTS, what="canned events")
        await until(pilot, lambda: pilot.app.query_one(ConfigPane).validation is not None)
        await pilot.press(*keys)
        await pilot.pause()

    return run_before


@pytest.mark.parametrize(
    "keys",
    [("1",), ("2",), ("3",), ("4",), ("5",), ("6",), ("7",)],
    ids=["overview", "workers", "pools", "clients", "servers", "stats", "config"],
)
def test_pane(snap_compare, keys):
    assert snap_compare(app(), terminal_size=SIZE, run_before=ready(*keys))


def test_kill_confirmation(snap_compare):
    assert snap_compare(app(), terminal_size=SIZE, run_before=ready("4", "down", "k"))


def test_config_error_marked(snap_compare):
    async def run_before(pilot) -> None:
        await ready("7")(pilot)
        pane = pilot.app.query_one(ConfigPane)
        pane.editor.cursor_blink = False  # a blinking cursor is not deterministic
        pane.editor.focus()
        pane.editor.move_cursor((21, 0))
        await pilot.press(*"\t\tpool_sise 5", "enter")
        # the errors of the whole edit (a pause while typing may validate a part of it)
        await until(
            pilot,
            lambda: pane.validated_text == pane.editor.text and not pane.validation.ok,
            what="errors",
        )
        await pilot.pause()

    assert snap_compare(app(), terminal_size=SIZE, run_before=run_before)
