"""Clients and servers (the SHOW CLIENTS / SHOW SERVERS rows); kill a client."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from textual.binding import Binding
from textual.message import Message

from tui.widgets.table import Column, LiveTable, Row

CLIENT_COLUMNS = (
    Column("id", "id"),
    Column("database", "database"),
    Column("user", "user"),
    Column("state", "state"),
    Column("addr", "addr"),
    Column("port", "port", True),
    Column("connect_time", "connected"),
    Column("wait", "wait", True),
    Column("application_name", "application"),
    Column("link", "server"),
)
SERVER_COLUMNS = (
    Column("id", "id"),
    Column("database", "database"),
    Column("user", "user"),
    Column("state", "state"),
    Column("addr", "addr"),
    Column("port", "port", True),
    Column("remote_pid", "backend pid", True),
    Column("connect_time", "connected"),
    Column("request_time", "last request"),
    Column("link", "client"),
)


def _cell(key: str, value: Any) -> Any:
    if value is None:
        return ""
    if key.endswith("_time") and isinstance(value, int | float):
        return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(value))
    if key.endswith("_time") and isinstance(value, str):
        return value.removesuffix("+00")
    return value


def session_rows(items: Sequence[dict[str, Any]], columns: Sequence[Column]) -> list[Row]:
    rows = []
    for n, item in enumerate(items):
        values = [item.get(c.key) for c in columns]
        cells = [_cell(c.key, v) for c, v in zip(columns, values, strict=True)]
        key = str(item.get("id") or item.get("ptr") or n)
        search = " ".join(str(v) for v in values if v is not None)
        rows.append(Row(key, cells, values, search))
    return rows


class SessionsTable(LiveTable):
    def __init__(self, columns: Sequence[Column], **kwargs: Any) -> None:
        super().__init__(columns, **kwargs)

    def show(self, items: Sequence[dict[str, Any]]) -> None:
        self.set_rows(session_rows(items, self.spec))


class ClientsTable(SessionsTable):
    BINDINGS = [Binding("k", "kill", "Kill client")]  # noqa: RUF012

    class KillRequested(Message):
        def __init__(self, client_id: str) -> None:
            super().__init__()
            self.client_id = client_id

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(CLIENT_COLUMNS, **kwargs)

    def action_kill(self) -> None:
        key = self.selected_key
        if key is not None:
            self.post_message(self.KillRequested(key))


class ServersTable(SessionsTable):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(SERVER_COLUMNS, **kwargs)
