"""A DataTable that is refilled from snapshots: keeps the cursor on the same row key, sorts by
any column (click a header or press `s`/`S`) and filters by text."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rich.text import Text
from textual.binding import Binding
from textual.widgets import DataTable


@dataclass(frozen=True)
class Column:
    key: str
    label: str
    numeric: bool = False


@dataclass
class Row:
    key: str
    cells: Sequence[Any]  # what is shown (str or rich Text)
    values: Sequence[Any]  # what is sorted on, one per column
    search: str = ""  # what the filter matches


class LiveTable(DataTable[Any]):
    BINDINGS = [  # noqa: RUF012
        Binding("s", "sort_next", "Sort"),
        Binding("S", "sort_reverse", "Reverse", show=False),
    ]

    def __init__(self, columns: Sequence[Column], **kwargs: Any) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)
        self.spec = list(columns)
        self.sort_index: int | None = None
        self.sort_reverse = False
        self.filter_text = ""
        self._rows: list[Row] = []
        self._shown: list[str] = []

    def on_mount(self) -> None:
        for column in self.spec:
            self.add_column(self._label(column), key=column.key)

    def _label(self, column: Column) -> Text:
        index = self.spec.index(column)
        arrow = ""
        if index == self.sort_index:
            arrow = " ▼" if self.sort_reverse else " ▲"
        return Text(column.label + arrow, justify="right" if column.numeric else "left")

    # -- data ---------------------------------------------------------------------------

    def set_rows(self, rows: Sequence[Row]) -> None:
        self._rows = list(rows)
        self._render_rows()

    @property
    def selected_key(self) -> str | None:
        if not self._shown or self.cursor_row < 0 or self.cursor_row >= len(self._shown):
            return None
        return self._shown[self.cursor_row]

    def _visible(self) -> list[Row]:
        needle = self.filter_text.lower()
        rows = [r for r in self._rows if not needle or needle in r.search.lower()]
        if self.sort_index is not None:
            i = self.sort_index

            def key(row: Row) -> tuple[int, Any]:
                value = row.values[i]
                if value is None:
                    return (1, 0)
                return (0, value) if isinstance(value, int | float) else (0, str(value))

            rows.sort(key=key, reverse=self.sort_reverse)
        return rows

    def _render_rows(self) -> None:
        rows = self._visible()
        keys = [r.key for r in rows]
        if keys == self._shown:
            for row in rows:
                for column, cell in zip(self.spec, row.cells, strict=True):
                    self.update_cell(
                        row.key, column.key, self._cell(column, cell), update_width=True
                    )
            return
        selected = self.selected_key
        self.clear()
        for row in rows:
            self.add_row(
                *(self._cell(c, v) for c, v in zip(self.spec, row.cells, strict=True)),
                key=row.key,
            )
        self._shown = keys
        if selected in keys:
            self.move_cursor(row=keys.index(selected), animate=False)

    @staticmethod
    def _cell(column: Column, value: Any) -> Any:
        if isinstance(value, Text):
            return value
        return Text(str(value), justify="right") if column.numeric else str(value)

    # -- sort and filter ----------------------------------------------------------------

    def set_filter(self, text: str) -> None:
        self.filter_text = text
        self._render_rows()

    def sort_by(self, index: int | None, reverse: bool | None = None) -> None:
        if reverse is None:
            reverse = (not self.sort_reverse) if index == self.sort_index else False
        self.sort_index, self.sort_reverse = index, reverse
        for column in self.spec:
            self.columns[column.key].label = self._label(column)  # type: ignore[index]
        self._shown = []  # order changed: re-add
        self._render_rows()
        self.refresh()

    def action_sort_next(self) -> None:
        index = 0 if self.sort_index is None else (self.sort_index + 1) % len(self.spec)
        # numbers read best biggest-first
        self.sort_by(index, reverse=self.spec[index].numeric)

    def action_sort_reverse(self) -> None:
        if self.sort_index is not None:
            self.sort_by(self.sort_index, not self.sort_reverse)

    def on_data_table_header_selected(self, event: DataTable.HeaderSelected) -> None:
        event.stop()
        self.sort_by(event.column_index)
