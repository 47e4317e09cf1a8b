"""Pure formatting helpers (numbers, durations, sizes, text sparklines) for the panes."""

from __future__ import annotations

from collections.abc import Sequence

BLOCKS = " ▁▂▃▄▅▆▇█"


def duration(seconds: float | None) -> str:
    """`3d 04:05:06`, `04:05:06`."""
    if seconds is None:
        return "-"
    seconds = int(max(0, seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    clock = f"{hours:02d}:{minutes:02d}:{secs:02d}"
    return f"{days}d {clock}" if days else clock


def micros(value: float | None) -> str:
    """Microseconds as `850µs`, `12.3ms`, `1.20s`."""
    if value is None:
        return "-"
    if value < 1000:
        return f"{value:.0f}µs"
    if value < 1_000_000:
        return f"{value / 1000:.1f}ms"
    return f"{value / 1_000_000:.2f}s"


def size(value: int | None) -> str:
    if value is None:
        return "-"
    amount = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if amount < 1024 or unit == "GiB":
            return f"{amount:.0f} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1024
    return f"{amount:.1f} GiB"  # pragma: no cover


def rate(value: float | None) -> str:
    """A per-second rate: `0`, `12.5`, `340`, `12.3k`."""
    if value is None:
        return "-"
    if value >= 10_000:
        return f"{value / 1000:.1f}k"
    if value >= 100 or value == int(value):
        return f"{value:.0f}"
    return f"{value:.1f}"


def spark(values: Sequence[float], width: int = 12) -> str:
    """The last `width` values as block characters scaled to their maximum."""
    tail = list(values)[-width:]
    if not tail:
        return ""
    top = max(tail)
    if top <= 0:
        return BLOCKS[1] * len(tail)
    return "".join(BLOCKS[1 + round(v / top * (len(BLOCKS) - 2))] for v in tail)
