"""`enable_host_watcher yes`: the host's CPU and memory use for `SHOW HOST_UTILIZATION`.

As odyssey's host watcher: every second the supervisor reads the first line of /proc/stat
(CPU use over the last second: busy ticks / all ticks, iowait counted idle, guest time counted
once) and /proc/meminfo (memory use: (MemTotal - MemAvailable) / MemTotal), both in percent.
Start-up only, as in odyssey.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from pooler.logs import log

PROC_STAT = Path("/proc/stat")
PROC_MEMINFO = Path("/proc/meminfo")


def cpu_ticks(stat: str) -> tuple[int, int]:
    """(all, idle) ticks of the `cpu` line of /proc/stat."""
    fields = [int(value) for value in stat.split("\n", 1)[0].split()[1:11]]
    fields += [0] * (10 - len(fields))
    user, nice, system, idle, iowait, irq, softirq, steal, guest, guest_nice = fields
    idle_all = idle + iowait
    total = (user - guest) + (nice - guest_nice) + system + irq + softirq + idle_all + steal
    return total + guest + guest_nice, idle_all


def memory_used_percent(meminfo: str) -> float:
    values: dict[str, int] = {}
    for line in meminfo.splitlines():
        name, _, rest = line.partition(":")
        if name in ("MemTotal", "MemAvailable"):
            values[name] = int(rest.split()[0])
    total = values.get("MemTotal", 0)
    return 100.0 * (total - values.get("MemAvailable", 0)) / total if total else 0.0


class HostWatcher:
    """The latest CPU and memory use (percent) of the host."""

    def __init__(self) -> None:
        self.cpu = 0.0
        self.mem = 0.0
        self._ticks: tuple[int, int] | None = None

    def sample(self, stat: str, meminfo: str) -> None:
        total, idle = cpu_ticks(stat)
        if self._ticks is not None:
            total_diff, idle_diff = total - self._ticks[0], idle - self._ticks[1]
            if total_diff > 0:
                self.cpu = 100.0 * max(0, total_diff - idle_diff) / total_diff
        self._ticks = (total, idle)
        self.mem = memory_used_percent(meminfo)

    async def run(self) -> None:
        log.info("host-watcher", "host watcher started")
        while True:
            try:
                self.sample(PROC_STAT.read_text(), PROC_MEMINFO.read_text())
            except (OSError, ValueError) as exc:
                log.error("host-watcher", f"can't read the host's CPU and memory use: {exc}")
            await asyncio.sleep(1)
