"""Stats log: odyssey's stats_interval lines as they arrive, with a pause toggle."""

from __future__ import annotations

import time
from collections.abc import Sequence

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.widgets import Log, Static

MAX_LINES = 5000


class StatsLogPane(Vertical):
    DEFAULT_CSS = """
    StatsLogPane { height: 1fr; }
    StatsLogPane #stats-log-state { height: 1; color: $text-muted; }
    StatsLogPane #stats-log-state.-paused { color: $warning; text-style: bold; }
    StatsLogPane Log { height: 1fr; }
    """
    BINDINGS = [  # noqa: RUF012
        Binding("p", "toggle_pause", "Pause/resume"),
        Binding("c", "clear", "Clear", show=False),
    ]

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.paused = False
        self._held: list[str] = []
        self.received = 0

    def compose(self) -> ComposeResult:
        yield Static(self._state_text(), id="stats-log-state")
        yield Log(max_lines=MAX_LINES, id="stats-log", auto_scroll=True)

    def _state_text(self) -> str:
        if self.paused:
            return f"PAUSED — {len(self._held)} lines held (p resumes)"
        return f"live — {self.received} lines (p pauses, scroll with ↑↓ PgUp PgDn)"

    def add_event(self, at: float, lines: Sequence[str]) -> None:
        stamp = time.strftime("%H:%M:%S", time.localtime(at))
        new = [f"{stamp} {line}" for line in lines]
        self.received += len(new)
        if self.paused:
            self._held.extend(new)
            del self._held[:-MAX_LINES]
        else:
            self._write(new)
        self._update_state()

    def _write(self, lines: list[str]) -> None:
        log = self.query_one(Log)
        pruned = log.line_count + len(lines) > MAX_LINES
        log.write_lines(lines)
        if pruned:
            # Log repaints only the rows it appended; once it drops lines from the top every
            # row on screen shows another line, so all of them are repainted (else the view
            # stays on the lines of the moment the log filled up)
            log.refresh()

    def _update_state(self) -> None:
        state = self.query_one("#stats-log-state", Static)
        state.update(self._state_text())
        state.set_class(self.paused, "-paused")

    def action_toggle_pause(self) -> None:
        self.paused = not self.paused
        if not self.paused and self._held:
            self._write(self._held)
            self._held = []
        self._update_state()

    def action_clear(self) -> None:
        self.query_one(Log).clear()
