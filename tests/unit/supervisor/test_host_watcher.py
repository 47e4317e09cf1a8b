"""enable_host_watcher: CPU and memory use from /proc/stat and /proc/meminfo (odyssey's)."""

from __future__ import annotations

import pytest

from pooler.supervisor.host_watcher import HostWatcher, cpu_ticks, memory_used_percent

MEMINFO = "MemTotal:       1000 kB\nMemFree:         100 kB\nMemAvailable:    250 kB\n"


def stat(user: int, idle: int, iowait: int = 0, guest: int = 0) -> str:
    return f"cpu  {user} 0 0 {idle} {iowait} 0 0 0 {guest} 0\ncpu0 1 2 3 4\n"


def test_cpu_ticks_count_iowait_as_idle_and_guest_time_once():
    assert cpu_ticks(stat(100, 50, iowait=10, guest=30)) == (160, 60)


def test_memory_use_is_total_less_available():
    assert memory_used_percent(MEMINFO) == 75.0


def test_cpu_use_is_over_the_last_interval():
    watcher = HostWatcher()
    watcher.sample(stat(100, 100), MEMINFO)
    assert watcher.cpu == 0.0  # one sample: no interval yet
    watcher.sample(stat(130, 110), MEMINFO)  # 30 busy of 40 ticks
    assert watcher.cpu == pytest.approx(75.0) and watcher.mem == 75.0
