"""Latency histograms: log-linear buckets of durations in µs (8 per power of two, ~6%
relative error), filled by the workers (`pooler.server.stats.RouteStats`), merged and read as
quantiles by the supervisor (SHOW, the stats lines, /metrics). Plain dicts {bucket: count}, so
they travel between processes as they are.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping


def bucket_of(us: int) -> int:
    """Histogram bucket of a duration in µs: exact below 16, else (bit length, next 3 bits).
    (Tabulated and inlined in `pooler.server.stats.RouteStats.record_*`, which run per
    query.)"""
    if us < 16:
        return us if us > 0 else 0
    b = us.bit_length()
    return (b << 3) | ((us >> (b - 4)) & 7)


def bucket_bounds(index: int) -> tuple[int, int]:
    """[low, high) of a bucket in µs."""
    if index < 16:
        return index, index + 1
    b, m = index >> 3, index & 7
    return (8 + m) << (b - 4), (9 + m) << (b - 4)


def quantile(counts: Mapping[int, int], q: float) -> float:
    """The q-quantile (0..1) in µs of a bucket histogram (midpoint of the bucket); 0 if empty."""
    total = sum(counts.values())
    if total == 0:
        return 0.0
    rank = q * total
    seen = 0
    for index in sorted(counts):
        seen += counts[index]
        if seen >= rank:
            low, high = bucket_bounds(index)
            return (low + high - 1) / 2 if index >= 16 else float(low)
    low, high = bucket_bounds(max(counts))
    return float(low)


def merge_histograms(histograms: Iterable[Mapping[int, int]]) -> dict[int, int]:
    out: dict[int, int] = {}
    for histogram in histograms:
        for index, count in histogram.items():
            out[index] = out.get(index, 0) + count
    return out


def subtract_histogram(new: Mapping[int, int], old: Mapping[int, int]) -> dict[int, int]:
    """new - old, dropping empty buckets (a window's histogram from two cumulative ones)."""
    out = {}
    for index, count in new.items():
        left = count - old.get(index, 0)
        if left > 0:
            out[index] = left
    return out
