#!/usr/bin/env python3
"""pooler against pgbouncer, odyssey, two bare splices and direct PostgreSQL: pgbench
scenarios, interleaved (SPEC S11, issues 9 and 19).

Run it through ``bench/run``. It starts a throwaway PostgreSQL (``pooler.pgcluster.PgCluster``:
fsync off, max_connections 1200, ``pgbench -i -s 10``) and the targets of bench/targets.py
(pooler, pgbouncer 1.21+, odyssey at one or more ``workers`` counts, the splice and the pooling
splice), all from one set of pool settings, then runs the pgbench scenarios. Every round runs
each scenario against each target (but one it cannot serve: ``Target.unsupported``) in turn;
the target order is reversed on even rounds. Per run it records TPS, average latency, the CPU
of the target's process tree per transaction (``/proc/<pid>/stat`` utime+stime, children
included, before and after), and CPU shares of pgbench / target / PostgreSQL / the rest of
the machine. Ratios are taken within a round; the table shows medians
over rounds. A memory step measures RSS per idle client connection (2,000 idle clients, opened
by ``bench/idle_clients.py`` in a helper process) and per server connection.

``SCALE_WORKERS=1,2,4,8`` is the scaling mode (for a machine with many cores): pooler and odyssey
at each worker count, pgbouncer (one thread) and direct once, pgbench with PGBENCH_JOBS threads
and at least SCALE_CLIENTS clients; it prints a scaling table as well.

Knobs (environment): ROUNDS (2), DURATION (10 s), SCENARIOS (abcdefg; scaling mode: ab), TARGETS
(direct,pgbouncer,odyssey,pooler,splice,poolsplice), WORKERS (pooler ``workers``, 1), ODYSSEY_WORKERS (1,2:
what ``odyssey`` in TARGETS expands to), SPLICE_WORKERS (1), PGBOUNCER_BIN, ODYSSEY_BIN,
SCALE_WORKERS, SCALE_CLIENTS (64), PGBENCH_JOBS (scaling mode: CPUs / 4), MEMORY (1; 0 skips
the memory step), IDLE_CLIENTS (2000), SCALE (10), POOLER_CMD (default ``<python> -m pooler
serve {config}``), QUIET_WAIT (max seconds to wait for a quiet machine before a run, 15),
RETRIES (re-measure a run in which other processes took over 25 % of a core, keeping the least
disturbed; 1), KEEP_TMP (1 keeps the temp dir with configs, logs and pgbench output).

This is a measurement tool, not a test: nothing here asserts on timings.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import platform
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
sys.path[:0] = [str(BENCH_DIR), str(REPO)]

from memory import memory_step  # noqa: E402
from processes import pick_port, stop_all  # noqa: E402
from procstat import wait_quiet  # noqa: E402
from report import Run, build_table, fmt, memory_table, scaling_table, summary_table  # noqa: E402
from scenarios import SCENARIOS, for_scaling, run_pgbench  # noqa: E402
from targets import (  # noqa: E402
    Target,
    Wanted,
    check_pgbouncer,
    find_peer,
    make_target,
    parse_counts,
    peer_version,
    scaling_targets,
    wanted_targets,
)

from pooler.pgcluster import PgCluster  # noqa: E402

RESULTS_DIR = BENCH_DIR / "results"
DEFAULT_TARGETS = "direct,pgbouncer,odyssey,pooler,splice,poolsplice"


ENV_KNOBS = (
    "ROUNDS", "DURATION", "SCENARIOS", "TARGETS", "WORKERS", "ODYSSEY_WORKERS", "SPLICE_WORKERS",
    "SCALE_WORKERS", "SCALE_CLIENTS", "PGBENCH_JOBS", "PGBOUNCER_BIN", "ODYSSEY_BIN", "MEMORY",
    "IDLE_CLIENTS", "SCALE", "QUIET_WAIT", "RETRIES", "POOLER_CMD",
)  # fmt: skip


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    return int(value) if value else default


def say(*parts: Any) -> None:
    print(f"[{time.strftime('%H:%M:%S')}]", *parts, flush=True)


def machine_info(versions: dict[str, str]) -> str:
    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_gib = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"

    def ver(cmd: list[str]) -> str:
        with contextlib.suppress(Exception):
            return (
                subprocess.run(cmd, capture_output=True, text=True, timeout=10, cwd=REPO)
                .stdout.splitlines()[0]
                .strip()
            )
        return "?"

    lines = [
        f"- {os.cpu_count()} CPUs ({model}), {mem_gib} RAM, Linux {platform.release()}",
        f"- {ver(['pgbench', '--version'])}; PostgreSQL server "
        f"{ver([str(find_pg_bin('postgres')), '--version'])}",
        f"- pooler at {ver(['git', 'log', '-1', '--format=%h %cI %s'])[:100]}"
        + (
            " (with uncommitted changes)" if ver(["git", "status", "--porcelain", "pooler"]) else ""
        ),
        *(f"- {name}: {text}" for name, text in versions.items()),
        f"- Python {platform.python_version()} ({sys.executable})",
    ]
    return "\n".join(lines)


def find_pg_bin(name: str) -> Path:
    from pooler.pgcluster import find_bindir

    return find_bindir() / name


# -- main ----------------------------------------------------------------------------------


def raise_nofile() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 65536
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    with contextlib.suppress(ValueError, OSError):  # root may raise the hard limit too
        if want < 65536:
            resource.setrlimit(resource.RLIMIT_NOFILE, (65536, 65536))


def peer_binaries(wanted: list[Wanted]) -> tuple[dict[str, Path], dict[str, str]]:
    """The pgbouncer and odyssey binaries the targets need, and their versions for the report.
    RuntimeError when one is missing, does not run, or is a pgbouncer older than 1.21."""
    binaries: dict[str, Path] = {}
    versions: dict[str, str] = {}
    kinds = {w.kind for w in wanted}
    if "pgbouncer" in kinds:
        binaries["pgbouncer"] = find_peer("pgbouncer", "PGBOUNCER_BIN", path_ok=False)
        versions["pgbouncer"] = peer_version(binaries["pgbouncer"])
        check_pgbouncer(versions["pgbouncer"])
    if "odyssey" in kinds:
        binaries["odyssey"] = find_peer("odyssey", "ODYSSEY_BIN", path_ok=True)
        versions["odyssey"] = peer_version(binaries["odyssey"])
    for kind, path in binaries.items():
        versions[kind] += f" ({path})"
    return binaries, versions


def main() -> int:
    rounds = env_int("ROUNDS", 2)
    duration = env_int("DURATION", 10)
    scale_counts: list[int] = []
    try:
        if os.environ.get("SCALE_WORKERS", "").strip():
            scale_counts = parse_counts(os.environ["SCALE_WORKERS"])
            wanted = scaling_targets(scale_counts)
        else:
            wanted = wanted_targets(
                os.environ.get("TARGETS", DEFAULT_TARGETS),
                workers=env_int("WORKERS", 1),
                odyssey_workers=parse_counts(os.environ.get("ODYSSEY_WORKERS", "1,2")),
                splice_workers=env_int("SPLICE_WORKERS", 1),
            )
        binaries, versions = peer_binaries(wanted)
    except (ValueError, RuntimeError) as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    default_scenarios = "ab" if scale_counts else "abcdefg"
    scenario_keys = "".join(
        k for k in os.environ.get("SCENARIOS", default_scenarios) if k in SCENARIOS
    )
    scenarios = {k: SCENARIOS[k] for k in scenario_keys}
    if scale_counts:
        clients = env_int("SCALE_CLIENTS", 64)
        jobs = env_int("PGBENCH_JOBS", max(1, (os.cpu_count() or 4) // 4))
        scenarios = {k: for_scaling(sc, clients, jobs) for k, sc in scenarios.items()}
    do_memory = env_int("MEMORY", 0 if scale_counts else 1) != 0
    idle_clients = env_int("IDLE_CLIENTS", 2000)
    scale = env_int("SCALE", 10)
    quiet_wait = float(os.environ.get("QUIET_WAIT", "15"))
    retries = env_int("RETRIES", 1)

    raise_nofile()
    started = _dt.datetime.now()
    stamp = started.strftime("%Y%m%d-%H%M%S")
    command = " ".join(f"{k}={shlex.quote(os.environ[k])}" for k in ENV_KNOBS if k in os.environ)
    command = (command + " bench/run").strip()
    say(
        f"rounds={rounds} duration={duration}s scenarios={scenario_keys} "
        f"targets={','.join(w.name for w in wanted)}"
    )
    for text in versions.values():
        say(text)
    say(f"RLIMIT_NOFILE={resource.getrlimit(resource.RLIMIT_NOFILE)}")

    tmp = Path(tempfile.mkdtemp(prefix="pooler-bench-"))
    tmp.chmod(0o755)
    pg: PgCluster | None = None
    objs: dict[str, Target] = {}
    runs: list[Run] = []
    mem: list[dict[str, Any]] = []
    interrupted = False
    logs_tail: dict[str, str] = {}
    try:
        pg_port = pick_port()
        pg = PgCluster(
            pg_port,
            fsync=False,
            max_connections=1200,
            settings={"shared_buffers": "512MB", "autovacuum": False},
        )
        say(f"PostgreSQL on {pg_port}: initdb + start")
        pg.start()
        say(f"pgbench -i -s {scale}")
        pg.pgbench("-i", "-q", "-s", str(scale))
        pg.psql("checkpoint")

        for want in wanted:
            objs[want.name] = make_target(want, pg_port, tmp, binaries)
        for t in objs.values():
            try:
                t.start()
                say(f"{t.name} on {t.port}" + (f" (pid {t.pid_root})" if t.pid_root else ""))
            except Exception as exc:
                say(f"{t.name} failed to start: {exc}")
                t.proc = None

        for rnd in range(1, rounds + 1):
            order = list(objs.values())
            if rnd % 2 == 0:
                order.reverse()
            for key, sc in scenarios.items():
                for t in order:
                    if why := t.skips(key):
                        runs.append(Run(key, t.name, rnd, skipped=why))
                        say(f"round {rnd} {key} {t.name:9s} {why}")
                        continue
                    note = ""
                    try:
                        note = t.ensure()
                    except Exception as exc:
                        run = Run(
                            key, t.name, rnd, broken=True, error=f"cannot start: {str(exc)[:150]}"
                        )
                        runs.append(run)
                        say(f"round {rnd} {key} {t.name}: cannot start")
                        continue
                    run = None
                    for attempt in range(retries + 1):
                        busy = wait_quiet(quiet_wait)
                        this = run_pgbench(pg, t, sc, rnd, duration, tmp)
                        this.note = note
                        if busy >= 0.15:
                            this.note = (this.note + "; " if this.note else "") + (
                                f"machine {busy * 100:.0f}% busy before run"
                            )
                        disturbed = this.cpu.get("other", 0.0) / this.wall
                        if run is None or disturbed < run.cpu.get("other", 0.0) / run.wall:
                            run = this
                        if disturbed <= 0.25 or this.broken or attempt == retries:
                            break
                        say(f"round {rnd} {key} {t.name}: {disturbed * 100:.0f}% other CPU, again")
                    runs.append(run)
                    us = run.pooler_us_per_txn()
                    say(
                        f"round {rnd} {key} {t.name:9s} tps={fmt(run.tps)} lat={fmt(run.lat_ms, '.3f')}ms"
                        + (f" cpu={us:.0f}µs/txn" if us else "")
                        + (f" BROKEN: {run.error}" if run.broken else "")
                    )

        if do_memory:  # not splice: it opens a server connection per idle client
            poolers = ("pooler", "pgbouncer", "odyssey", "poolsplice")
            measured = [w.name for w in wanted if w.kind in poolers]
            for name in measured:
                say(f"memory: {name} with {idle_clients} idle clients")
                for other in objs.values():  # only its server connections in PostgreSQL
                    if other.name != name:
                        other.stop()
                try:
                    mem.append(memory_step(objs[name], pg, idle_clients, tmp))
                except Exception as exc:
                    mem.append({"target": name, "clients": idle_clients, "error": str(exc)[:300]})
                objs[name].stop()
                say(f"memory: {mem[-1]}")
    except KeyboardInterrupt:
        interrupted = True
        say("interrupted: stopping everything")
    finally:
        for t in objs.values():
            log = getattr(t, "log", None)
            if log is not None and Path(log).exists():
                logs_tail[t.name] = Path(log).read_text(errors="replace")[-2000:]
            with contextlib.suppress(Exception):
                t.stop()
        stop_all()
        if pg is not None:
            with contextlib.suppress(Exception):
                pg.remove()
        configs = {}
        for t in objs.values():
            for attr in ("config", "ini"):
                p = getattr(t, attr, None)
                if p is not None and Path(p).exists():
                    configs[Path(p).name] = Path(p).read_text()
        if os.environ.get("KEEP_TMP"):
            say(f"KEEP_TMP: left {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    if not runs:
        return 130 if interrupted else 1
    peers = {
        t.name: f"odyssey{t.workers}"
        for t in objs.values()
        if t.name.startswith("pooler") and f"odyssey{t.workers}" in objs
    }
    table = build_table(runs, scenario_keys, list(objs), peers)
    scaling = scaling_table(runs, scenario_keys, scale_counts) if scale_counts else ""
    restarts = {t.name: t.restarts for t in objs.values() if t.restarts}
    workers_text = ", ".join(
        f"{t.name} `workers {t.workers}`" for t in objs.values() if t.workers is not None
    )
    report = [
        f"# bench/run {stamp}",
        "",
        machine_info(versions),
        "",
        f"Command: `{command}` — {rounds} round(s) × {duration} s, scenarios {scenario_keys}"
        + (f"; {workers_text}" if workers_text else "")
        + f"{' (INTERRUPTED: partial results)' if interrupted else ''}.",
        f"Wall time {(_dt.datetime.now() - started).total_seconds() / 60:.1f} min.",
        "",
        "Scenarios: " + "; ".join(f"{s.key} {s.title}" for s in scenarios.values()) + ".",
        "",
    ]
    if scaling:
        report += [
            "## Scaling",
            "",
            scaling,
            "",
            "Ratios are medians of ratios taken within a round. `× own 1st` is TPS against the "
            "same pooler at the first worker count.",
            "",
            "## All runs",
            "",
        ]
    summary = "" if scaling else summary_table(runs, scenario_keys, list(objs))
    if summary:
        report += [
            "## Against pgbouncer",
            "",
            summary,
            "",
            "TPS against pgbouncer's: the median of the ratios taken within a round, in brackets "
            "their lowest and highest over the rounds (the noise); then the target's CPU per "
            "transaction (µs, median), and in g the average latency it adds over direct.",
            "",
            "## All runs",
            "",
        ]
    report += [
        table,
        "",
        "Medians over rounds; the `vs` columns are medians of ratios taken within the same round "
        "(`vs odyssey`: against odyssey with the same `workers`). `pooler CPU µs/txn` is the CPU "
        "(utime+stime, children included) of the target's process tree (pooler, pgbouncer, "
        "odyssey or splice) divided by the transactions done, `of which kernel` its stime part; "
        "the CPU% `pooler` share is the same tree. CPU% is percent of one core over the run. "
        "✗ marks a broken run."
        + (
            " splice is bench/splice.py: a bare uvloop byte splice, one server connection per "
            "client, no parsing or pooling — the floor of a Python/uvloop proxy here."
            if any(t.startswith("splice") for t in objs)
            else ""
        )
        + (
            " poolsplice is bench/poolsplice.py: that splice on a pool of pool_size server "
            "connections, a server released when its answer ends in ReadyForQuery 'I', logins "
            "answered without PostgreSQL — the floor of a Python/uvloop transaction pooler "
            "(no statement cache: c is n/a)."
            if "poolsplice" in objs
            else ""
        ),
    ]
    if restarts:
        report += ["", f"Restarts after a target died: {restarts}."]
    if mem:
        report += [
            "",
            "## Memory",
            "",
            memory_table(mem),
            "",
            "RSS is VmRSS summed over the target's processes (pooler: the `pooler serve` "
            "tree; pgbouncer and odyssey: their one process). Fresh = after one warm-up "
            "login; per idle client = (RSS with idle clients − fresh) / clients; per server "
            "connection = growth when pool_size clients each hold a transaction open.",
        ]
    broken_targets = {r.target for r in runs if r.broken and r.scenario != "c"}
    for name in sorted(broken_targets & set(logs_tail)):
        report += [
            "",
            f"## Log tail of {name} (it had broken runs)",
            "",
            "```",
            logs_tail[name].rstrip()[-1500:],
            "```",
        ]
    report += ["", "## Configs", ""]
    for name, text in configs.items():
        report += [f"`{name}`:", "", "```", text.rstrip(), "```", ""]
    text = "\n".join(report) + "\n"
    RESULTS_DIR.mkdir(exist_ok=True)
    out = RESULTS_DIR / f"{stamp}.md"
    out.write_text(text)
    print()
    if scaling:
        print(scaling)
        print()
    print(table)
    if mem:
        print()
        print(memory_table(mem))
    print(f"\nwritten to {out.relative_to(REPO)}")
    if interrupted:
        return 130
    return 0


if __name__ == "__main__":

    def _term(*_: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with it ignored
    signal.signal(signal.SIGTERM, _term)
    signal.signal(signal.SIGHUP, _term)
    sys.exit(main())
