"""The worker's trimmer: malloc_trim after the heap's free bytes grew, not on every tick."""

from __future__ import annotations

from pooler.server import memory


def test_trims_only_after_free_memory_grew(monkeypatch):
    free = [1 << 20]
    trims: list[int] = []
    monkeypatch.setattr(memory, "_glibc", lambda: (trims.append, lambda: free[0]))
    trimmer = memory.Trimmer(growth=4 << 20)
    trimmer.tick()
    free[0] += 3 << 20
    trimmer.tick()
    assert trims == []
    free[0] += 3 << 20  # 6 MB freed since the last trim: give it back
    trimmer.tick()
    assert trims == [0]
    trimmer.tick()  # trimming does not change the free bytes: no trim again
    assert trims == [0]
    free[0] = 1 << 20  # reused: growth counts from the new low
    trimmer.tick()
    free[0] += 5 << 20
    trimmer.tick()
    assert trims == [0, 0]


def test_glibc_is_found_here():
    found = memory._glibc()
    assert found is not None
    trim, free_bytes = found
    assert free_bytes() >= 0 and trim(0) in (0, 1)
