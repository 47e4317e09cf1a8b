"""The worker's trimmer: malloc_trim after the resident size grew, not on every tick."""

from __future__ import annotations

from pooler.server import memory


def test_trims_only_after_growth(monkeypatch):
    rss = [100 << 20]
    trims: list[int] = []
    monkeypatch.setattr(memory, "resident_bytes", lambda: rss[0])
    monkeypatch.setattr(memory, "_malloc_trim", lambda: trims.append)
    trimmer = memory.Trimmer(growth=16 << 20)
    trimmer.tick()
    rss[0] += 10 << 20
    trimmer.tick()
    assert trims == []
    rss[0] += 10 << 20  # 20 MB above the last trim
    trimmer.tick()
    assert trims == [0] and trimmer.after_trim == rss[0]
    rss[0] = 90 << 20  # it shrank: growth counts from the new low
    trimmer.tick()
    rss[0] = 100 << 20
    trimmer.tick()
    assert trims == [0]


def test_resident_bytes_of_this_process():
    assert memory.resident_bytes() > 1 << 20
