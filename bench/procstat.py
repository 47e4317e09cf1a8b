"""CPU, busy time and memory of process trees, read from /proc (for bench/bench.py)."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _read_stat(pid: int) -> tuple[int, int, int] | None:
    """(ppid, utime+cutime, stime+cstime) in clock ticks, or None if gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = text[text.rindex(")") + 2 :].split()
    # fields[0] is state (field 3); ppid is field 4; utime..cstime are fields 14..17
    return int(fields[1]), int(fields[11]) + int(fields[13]), int(fields[12]) + int(fields[14])


def all_stats() -> dict[int, tuple[int, int, int]]:
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _read_stat(int(entry))
            if st is not None:
                out[int(entry)] = st
    return out


def tree_pids(root: int, stats: dict[int, tuple[int, int, int]] | None = None) -> list[int]:
    stats = all_stats() if stats is None else stats
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        if pid in stats:
            out.append(pid)
            todo.extend(children.get(pid, ()))
    return out


def tree_cpu_ticks(root: int | None, stats: dict[int, tuple[int, int, int]]) -> int:
    """CPU of a process tree: every live member's own time plus reaped children's time.

    A child that exited during the interval is counted through its parent's cutime/cstime;
    a live child is counted by its own utime/stime (not yet in the parent's cutime).
    """
    if root is None:
        return 0
    return sum(stats[p][1] + stats[p][2] for p in tree_pids(root, stats))


def tree_sys_ticks(root: int | None, stats: dict[int, tuple[int, int, int]]) -> int:
    """The system (kernel) part of `tree_cpu_ticks`."""
    if root is None:
        return 0
    return sum(stats[p][2] for p in tree_pids(root, stats))


def machine_busy_ticks() -> int:
    with open("/proc/stat") as f:
        parts = f.readline().split()[1:]
    vals = [int(x) for x in parts]
    # user nice system idle iowait irq softirq steal guest guest_nice
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
    total = sum(vals[:8])
    return total - idle


def wait_quiet(max_wait: float, threshold: float = 0.15) -> float:
    """Wait (at most max_wait s) until the machine is below `threshold` cores busy; return it."""
    deadline = time.monotonic() + max_wait
    busy = 0.0
    while True:
        b0, t0 = machine_busy_ticks(), time.monotonic()
        time.sleep(0.5)
        busy = (machine_busy_ticks() - b0) / CLK_TCK / (time.monotonic() - t0)
        if busy < threshold or time.monotonic() >= deadline:
            return busy


def rss_kb(pids: list[int]) -> tuple[int, int]:
    """(sum of VmRSS, sum of Pss) in kB over pids."""
    rss = pss = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss += int(line.split()[1])
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    pss += int(line.split()[1])
    return rss, pss
