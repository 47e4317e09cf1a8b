"""`soft_oom { limit SIZE process STR check_interval_ms INT drop { signal STR max_rate INT } }`.

As odyssey 1.5 (sources/soft_oom.c) does it: every `check_interval_ms` the supervisor
measures the memory in use: the sum of the proportional set size (`Pss:` of
/proc/PID/smaps_rollup) of every process whose /proc/PID/comm contains `process`, or without
`process`, the host's (MemTotal − MemAvailable of /proc/meminfo). At or above `limit` the
pooler is in *soft OOM*:

* new clients of a remote storage are refused after authentication with FATAL 53200 `soft out
  of memory` (log: `drop connection due to soft oom (usage is N KB)`); the console still
  answers; clients already connected go on;
* with a `drop` block, every interval the `max_rate` server connections whose PostgreSQL
  backends have the largest Pss are sent `signal` (default SIGTERM: PostgreSQL ends that
  backend as pg_terminate_backend does, and its client gets `terminating connection due to
  administrator command`).

What pooler signals differs on purpose: odyssey signals the largest of *every* process named
`postgres` on the host, the postmaster, its auxiliary processes and other applications'
backends included (SIGTERM to the postmaster shuts the whole cluster down). pooler signals only
backends of its own server connections (their pids came with BackendKeyData, as for ending a
dead worker's servers), to a PostgreSQL on this host (a unix socket or a loopback address),
whose comm still says `postgres`. Memory of a process that cannot be read (another user's,
gone) is skipped, as odyssey does; a signal that cannot be sent is logged.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import signal as signals
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pooler.config import Endpoint, SoftOom
from pooler.ipc import SoftOomState
from pooler.logs import log

PROC = Path("/proc")
POSTGRES_COMM = "postgres"


@dataclass(frozen=True, slots=True)
class Process:
    pid: int
    comm: str
    pss: int  # bytes


def comm_of(pid: int) -> str | None:
    try:
        return (PROC / str(pid) / "comm").read_text().rstrip()
    except OSError:
        return None


def pss_of(pid: int) -> int | None:
    """The process's proportional set size in bytes (None: gone or not ours to read)."""
    try:
        with open(PROC / str(pid) / "smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def processes_named(part: str) -> Iterator[Process]:
    """The processes whose comm contains `part`, with their Pss (unreadable ones skipped)."""
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        comm = comm_of(pid)
        if comm is None or part not in comm:
            continue
        pss = pss_of(pid)
        if pss is not None:
            yield Process(pid, comm, pss)


def host_used() -> int:
    """MemTotal − MemAvailable of /proc/meminfo, in bytes."""
    values: dict[str, int] = {}
    for line in (PROC / "meminfo").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("MemTotal", "MemAvailable"):
            values[name] = int(rest.split()[0]) * 1024
    return max(0, values.get("MemTotal", 0) - values.get("MemAvailable", 0))


def used_memory(settings: SoftOom) -> tuple[int, int | None]:
    """(bytes in use, how many processes were counted; None for the host's memory)."""
    if settings.process:
        found = list(processes_named(settings.process))
        return sum(p.pss for p in found), len(found)
    return host_used(), None


def is_local(endpoint: Endpoint) -> bool:
    """A PostgreSQL on this host, whose backend pids are this host's pids?"""
    if endpoint.host is None:
        return True  # unix socket
    if endpoint.host == "localhost":
        return True
    try:
        return ipaddress.ip_address(endpoint.host).is_loopback
    except ValueError:
        return False


def largest(candidates: Iterable[Process], count: int) -> list[Process]:
    """The `count` processes with the largest Pss (odyssey's order)."""
    return sorted(candidates, key=lambda p: p.pss, reverse=True)[: max(0, count)]


def backend_processes(pids: Iterable[int]) -> list[Process]:
    """Those of the pids that are PostgreSQL processes of this host, with their Pss."""
    found: list[Process] = []
    for pid in set(pids):
        comm = comm_of(pid)
        if comm is None or POSTGRES_COMM not in comm:
            continue
        pss = pss_of(pid)
        if pss is not None:
            found.append(Process(pid, comm, pss))
    return found


class Handle(Protocol):
    """What the checker uses of a worker (pooler.supervisor.workers.WorkerHandle)."""

    channel: Any
    backends: dict[tuple[Any, int], tuple[Endpoint, int]]


class Owner(Protocol):
    """What the checker uses of the Supervisor."""

    workers: dict[int, Any]
    stopping: bool


class SoftOomChecker:
    """The supervisor's soft OOM loop (one per pooler, as odyssey's one thread)."""

    def __init__(self, owner: Owner, settings: SoftOom) -> None:
        self.owner = owner
        self.settings = settings
        self.signal = getattr(signals, settings.signal, signals.SIGTERM)
        self.usage: int | None = None  # bytes while over the limit

    async def run(self) -> None:
        interval = max(1, self.settings.check_interval_ms) / 1000
        while not self.owner.stopping:
            await asyncio.sleep(interval)
            try:
                await self.check()
            except Exception as exc:  # a check never ends the loop
                log.error("soft_oom", f"memory check failed: {exc!r}")

    async def check(self) -> None:
        used, counted = await asyncio.to_thread(used_memory, self.settings)
        what = f"'{self.settings.process}' ({counted} pids)" if counted is not None else "system"
        log.debug("soft_oom", f"updated memory consumption for {what}: {used} bytes")
        over = used >= self.settings.limit
        if over or self.usage is not None:
            # while over: every interval (a worker that started meanwhile learns it too)
            self._tell_workers(used if over else None)
        if over and self.usage is None:
            log.error(
                "soft_oom",
                f"soft out of memory: {what} uses {used} bytes >= limit {self.settings.limit}",
            )
        elif not over and self.usage is not None:
            log.info("soft_oom", f"memory back under the limit: {what} uses {used} bytes")
        self.usage = used if over else None
        if over and self.settings.drop:
            await self._drop(used)

    def _tell_workers(self, usage: int | None) -> None:
        for handle in self.owner.workers.values():
            if handle.channel is not None:
                handle.channel.send(SoftOomState(usage))

    def _local_backends(self) -> list[int]:
        return [
            pid
            for handle in self.owner.workers.values()
            for (_key, pid), (endpoint, _secret) in list(handle.backends.items())
            if is_local(endpoint)
        ]

    async def _drop(self, used: int) -> None:
        settings = self.settings
        log.info(
            "soft_oom",
            f"used memory ({used}) >= limit ({settings.limit}), need to signal "
            f"{settings.signal} to top {settings.max_rate} pss consumers",
        )
        found = await asyncio.to_thread(backend_processes, self._local_backends())
        for process in largest(found, settings.max_rate):
            log.info(
                "soft_oom",
                f"sending {settings.signal} to {process.pid} ({process.comm}, "
                f"pss {process.pss} bytes)...",
            )
            try:
                os.kill(process.pid, self.signal)
            except OSError as exc:
                log.error("soft_oom", f"can't send signal to {process.pid}: {exc.strerror}")
