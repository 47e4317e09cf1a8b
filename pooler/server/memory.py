"""Give freed heap memory back to the system after a burst of large buffers.

A worker relaying large messages allocates and frees chunks of a few hundred KB. glibc
raises its mmap threshold after freeing such a chunk, so later ones come from the heap, and
free heap memory that is not at the heap's top is not returned: after 100 clients streamed
50 MB each, a worker stayed at twice its baseline RSS although nothing was held any more.
The worker's cron calls :meth:`Trimmer.tick` every second: when the heap's free bytes
(glibc's `mallinfo2().fordblks`) grew by GROWTH since the last trim, `malloc_trim(0)` gives
the free pages back. Elsewhere than glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable

GROWTH = 4 * 1024 * 1024


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd",
            "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost",
        )
    ]  # fmt: skip


def _glibc() -> tuple[Callable[[int], int], Callable[[], int]] | None:
    """(malloc_trim, free heap bytes) of glibc ≥ 2.33, or None."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
        mallinfo2 = libc.mallinfo2
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    mallinfo2.argtypes = []
    mallinfo2.restype = _MallInfo2

    def free_bytes() -> int:
        return int(mallinfo2().fordblks)

    return trim, free_bytes


class Trimmer:
    def __init__(self, growth: int = GROWTH) -> None:
        self.growth = growth
        found = _glibc()
        self._trim: Callable[[int], int] | None = found[0] if found else None
        self._free: Callable[[], int] | None = found[1] if found else None
        self.free_after_trim = self._free() if self._free is not None else 0
        self.trims = 0

    def tick(self) -> None:
        if self._trim is None or self._free is None:
            return
        free = self._free()
        if free > self.free_after_trim + self.growth:
            self._trim(0)
            self.trims += 1
            self.free_after_trim = self._free()
        elif free < self.free_after_trim:
            self.free_after_trim = free
