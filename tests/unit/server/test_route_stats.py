"""The per-query counters: `record_*` bucket durations exactly as `bucket_of` does (they
inline it for speed)."""

import pytest

from pooler.histogram import bucket_bounds, bucket_of
from pooler.server.stats import RouteStats

DURATIONS = [
    0,
    1,
    15,
    16,
    17,
    31,
    32,
    100,
    999,
    1000,
    4095,
    4096,
    65_535,
    65_536,
    10**6,
    3_600 * 10**6,
]


@pytest.mark.parametrize("record", ["record_query", "record_xact", "record_wait"])
def test_record_methods_use_the_histogram_buckets(record):
    stats = RouteStats()
    for us in DURATIONS:
        getattr(stats, record)(us)
    hist = {"record_query": stats.query_hist, "record_xact": stats.xact_hist}.get(
        record, stats.wait_hist
    )
    expected: dict[int, int] = {}
    for us in DURATIONS:
        expected[bucket_of(us)] = expected.get(bucket_of(us), 0) + 1
    assert hist == expected
    for us in DURATIONS:
        low, high = bucket_bounds(bucket_of(us))
        assert low <= us < high
