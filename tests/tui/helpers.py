"""Helpers for the dashboard tests: start a real pooler with a control socket, wait in pilot."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness import SERVE_COMMAND, Pooler, make_config, patience, route, wait_until
from textual.pilot import Pilot


def start_pooler(pooler: Callable[..., Pooler], **config: Any) -> tuple[Pooler, Path]:
    """`pooler serve --control <workdir>/ctl.sock` with a transaction route (pool_size 2),
    two workers and stats every second."""
    settings: dict[str, Any] = {"workers": 2, "stats_interval": 1, **config}
    p = pooler(
        make_config(route(pool="transaction", pool_size=2), **settings),
        command=(*SERVE_COMMAND, "--control", "{workdir}/ctl.sock"),
        start=False,
    )
    p.command = [a.replace("{workdir}", str(p.workdir)) for a in p.command]
    p.start()
    path = p.workdir / "ctl.sock"
    wait_until(path.exists)
    return p, path


async def until(
    pilot: Pilot[Any], predicate: Callable[[], Any], timeout: float = 10.0, what: str = ""
) -> Any:
    """Let the app run until `predicate()` is truthy (fails after `patience(timeout)` s)."""
    deadline = time.monotonic() + patience(timeout)
    t0 = time.monotonic()
    while True:
        value = predicate()
        if value:
            import os

            if os.environ.get("TUI_TIMING"):
                print(f"waited {time.monotonic() - t0:.2f}s for {what or predicate}")
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        await pilot.pause(0.05)


def cell_texts(table: Any) -> list[list[str]]:
    """Every row of a DataTable as plain strings."""
    out = []
    for row_key in table.rows:
        out.append([str(getattr(c, "plain", c)) for c in table.get_row(row_key)])
    return out
