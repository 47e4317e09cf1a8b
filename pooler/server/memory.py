"""Give freed heap memory back to the system after a burst of large buffers.

A worker relaying large messages allocates and frees chunks of a few hundred KB. glibc
raises its mmap threshold after freeing such a chunk, so later ones come from the heap, and
a heap whose free space is not at its top is not returned: after 100 clients streamed 50 MB
each, a worker stayed at twice its baseline RSS although nothing was held any more. The
worker's cron calls :meth:`Trimmer.tick` every second: when the resident size grew by
GROWTH since the last trim, `malloc_trim(0)` returns the free pages (a no-op elsewhere than
glibc).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Callable

GROWTH = 4 * 1024 * 1024
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def resident_bytes() -> int:
    """This process's resident set size (Linux; 0 elsewhere)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0


class Trimmer:
    def __init__(self, growth: int = GROWTH) -> None:
        self.growth = growth
        self._trim = _malloc_trim()
        self.after_trim = resident_bytes()
        self.trims = 0

    def tick(self) -> None:
        if self._trim is None:
            return
        now = resident_bytes()
        if now > self.after_trim + self.growth:
            self._trim(0)
            self.trims += 1
            self.after_trim = resident_bytes()
        elif now < self.after_trim:
            self.after_trim = now
