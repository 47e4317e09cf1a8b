"""The pgbench scenarios of bench/bench.py, and one measured pgbench run against a target."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from processes import forget, track
from procstat import CLK_TCK, all_stats, machine_busy_ticks, tree_cpu_ticks, tree_sys_ticks
from report import Run
from targets import HOST, Target

from pooler.pgcluster import PgCluster


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    args: tuple[str, ...]
    clients: int
    jobs: int = 1


SCENARIOS: dict[str, Scenario] = {
    s.key: s
    for s in (
        Scenario("a", "-S simple, 16 clients", ("-S",), 16),
        Scenario("b", "-S -M extended, 16 clients", ("-S", "-M", "extended"), 16),
        Scenario("c", "-S -M prepared, 16 clients", ("-S", "-M", "prepared"), 16),
        Scenario("d", "TPC-B-like, 16 clients", (), 16),
        Scenario("e", "-S, 500 clients (-j 2)", ("-S",), 500, 2),
        Scenario("f", "-S -C (connect per txn), 16 clients", ("-S", "-C"), 16),
        Scenario("g", "-S, 1 client (latency)", ("-S",), 1),
    )
}


def for_scaling(sc: Scenario, clients: int, jobs: int) -> Scenario:
    """A scenario for the scaling mode: at least `clients` clients (not g, whose point is one
    client) and `jobs` pgbench threads (never more than clients)."""
    n = sc.clients if sc.key == "g" else max(sc.clients, clients)
    j = min(n, max(sc.jobs, jobs))
    title = re.sub(r"\d+ clients( \(-j \d+\))?", f"{n} clients (-j {j})", sc.title)
    return dataclasses.replace(sc, clients=n, jobs=j, title=title)


# -- pgbench -------------------------------------------------------------------------------


def parse_pgbench(out: str, run: Run) -> None:
    if m := re.search(r"number of transactions actually processed: (\d+)", out):
        run.xacts = int(m.group(1))
    if m := re.search(r"number of failed transactions: (\d+)", out):
        run.failed = int(m.group(1))
    if m := re.search(r"latency average = ([\d.]+) ms", out):
        run.lat_ms = float(m.group(1))
    if m := re.search(r"initial connection time = ([\d.]+) ms", out):
        run.conn_ms = float(m.group(1))
    if (m := re.search(r"tps = ([\d.]+) \(without initial connection time\)", out)) or (
        m := re.search(r"tps = ([\d.]+)", out)
    ):
        run.tps = float(m.group(1))


def first_error(out: str) -> str:
    for line in out.splitlines():
        low = line.lower()
        if any(k in low for k in ("error", "fatal", "aborted", "could not", "failed:")):
            if "number of failed transactions" in low:
                continue
            return line.strip()[:200]
    return ""


def run_pgbench(
    pg: PgCluster,
    target: Target,
    sc: Scenario,
    rnd: int,
    duration: int,
    workdir: Path,
) -> Run:
    run = Run(sc.key, target.name, rnd)
    argv = [
        pg.binary("pgbench"),
        "-h", HOST, "-p", str(target.port), "-U", "postgres",
        "-n", "-j", str(sc.jobs), "-c", str(sc.clients), "-T", str(duration),
        *sc.args,
        "postgres",
    ]  # fmt: skip
    out_path = workdir / f"pgbench-{sc.key}-{target.name}-{rnd}.out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(PGSSLMODE="disable", PGCONNECT_TIMEOUT="10")
    stats0 = all_stats()
    busy0 = machine_busy_ticks()
    t0 = time.monotonic()
    with out_path.open("wb") as out:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
            start_new_session=True,
        )  # fmt: skip
    track(proc)
    deadline = t0 + duration + 120 + sc.clients * 0.05
    rusage = None
    while True:
        pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            rusage = ru
            break
        if time.monotonic() > deadline:  # a hung pooler: kill pgbench and record it
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            _, status, rusage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            run.error = f"pgbench did not finish within {deadline - t0:.0f} s (killed)"
            break
        time.sleep(0.05)
    forget(proc)
    run.wall = time.monotonic() - t0
    stats1 = all_stats()
    busy = (machine_busy_ticks() - busy0) / CLK_TCK
    pg_root = pg_postmaster_pid(pg)
    cpu = {
        "pgbench": (rusage.ru_utime + rusage.ru_stime) if rusage else 0.0,
        "postgres": (tree_cpu_ticks(pg_root, stats1) - tree_cpu_ticks(pg_root, stats0)) / CLK_TCK,
    }
    if target.pid_root:
        cpu["pooler"] = (
            tree_cpu_ticks(target.pid_root, stats1) - tree_cpu_ticks(target.pid_root, stats0)
        ) / CLK_TCK
    cpu["other"] = max(0.0, busy - sum(cpu.values()))
    run.cpu = cpu
    if target.pid_root:
        run.target_sys = (
            tree_sys_ticks(target.pid_root, stats1) - tree_sys_ticks(target.pid_root, stats0)
        ) / CLK_TCK
    out = out_path.read_text(errors="replace")
    parse_pgbench(out, run)
    if proc.returncode != 0 or run.failed or "aborted" in out:
        run.broken = True
        run.error = run.error or first_error(out) or f"pgbench exit {proc.returncode}"
    return run


def pg_postmaster_pid(pg: PgCluster) -> int | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int((pg.datadir / "postmaster.pid").read_text().splitlines()[0])
    return None
