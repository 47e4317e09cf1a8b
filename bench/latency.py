#!/usr/bin/env python3
"""Where one round trip goes: syscalls, event-loop iterations, on-CPU time and latency per
select-only transaction, one client, for each target side by side (issue 19).

Usage: .venv/bin/python bench/latency.py
Knobs (environment): TARGETS (direct,pgbouncer,splice,pooler; odysseyN and poolerN as in
bench/run), PROTOCOLS (simple,extended: pgbench -M, each measured in turn), CLIENTS (1),
ROUNDS (3), DURATION (5 s per latency run), TXNS (3000 traced transactions), SCALE (1),
CONNECT (1: ``pgbench -C``, a new connection per transaction as in bench/run's f, so every
figure is per connection too), PGBOUNCER_BIN, ODYSSEY_BIN, KEEP_TMP.

For every protocol and every target, against one throwaway PostgreSQL (the targets and
configs of bench/run):

1. **latency**: ROUNDS × ``pgbench -n -S -c 1 -T DURATION``, targets in turn (reversed on even
   rounds), untraced: average latency, the latency it adds over direct (median of per-round
   differences), and the CPU of its process tree per transaction (utime+stime from /proc).
2. **syscalls**: ``strace -c -f`` attached to every thread of the target's processes during
   ``pgbench -S -c 1 -t TXNS``: calls per transaction by syscall. Background wake-ups (a
   supervisor, timers) show up here as fractions.
3. **phases**: ``perf record`` of the syscall and sched_switch tracepoints of the same
   processes during another TXNS transactions: per transaction, the poll calls (event-loop
   iterations: epoll_wait returns; a poll(2) with timeout 0, a pool_attach_check's look at a
   server socket, is counted on its own and is not an iteration), how often the target went to sleep and how often it was
   preempted (switched out while runnable), and the median on-CPU time from the end of each
   read to the write that relays it, from that write to the next syscall, and from a poll's
   return to the read. A gap in which the target was switched out is counted as preempted
   and left out of the medians. With sched_wakeup: the tasks the target wakes (its writes
   wake pgbench or a backend), how many of them on the target's own CPU, and how long such a
   task waits until the target sleeps or is preempted: on a shared CPU the work after the
   write is latency too.

strace slows the target several times over, so step 2 gives counts only; perf's tracepoints
cost a few µs per event, so the phases are comparable between targets, not absolute. Needs
strace and perf (a step whose tool is missing is skipped, and the report says so), x86-64
syscall numbers, and root or ptrace rights. A measurement tool, not a test.
"""

from __future__ import annotations

import bisect
import collections
import contextlib
import datetime as _dt
import itertools
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
sys.path[:0] = [str(BENCH_DIR), str(REPO)]

from processes import pick_port, stop_all  # noqa: E402
from procstat import CLK_TCK, all_stats, tree_cpu_ticks, tree_pids  # noqa: E402
from targets import (  # noqa: E402
    HOST,
    Target,
    check_pgbouncer,
    find_peer,
    make_target,
    peer_version,
    wanted_targets,
)

from pooler.pgcluster import PgCluster  # noqa: E402

RESULTS_DIR = BENCH_DIR / "results"

# x86-64 syscall numbers of the relay's calls
READS = {0: "read", 17: "pread64", 19: "readv", 45: "recvfrom", 47: "recvmsg"}
WRITES = {1: "write", 18: "pwrite64", 20: "writev", 44: "sendto", 46: "sendmsg"}
POLLS = {7: "poll", 23: "select", 232: "epoll_wait", 281: "epoll_pwait", 441: "epoll_pwait2"}
POLL = 7
PEEK = -1  # a poll(2) with timeout 0 (pooler's and odyssey's pool_attach_check)


def say(*parts: object) -> None:
    print(f"[{time.strftime('%H:%M:%S')}]", *parts, flush=True)


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    return int(value) if value else default


@dataclass
class Result:
    target: str
    latency_us: list[float] = field(default_factory=list)  # per round
    added_us: list[float] = field(default_factory=list)  # per round, over direct
    cpu_us: list[float] = field(default_factory=list)  # per round, target tree per txn
    syscalls: dict[str, float] = field(default_factory=dict)  # per txn
    phases: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


PROTOCOL = ["-M", "simple"]  # pgbench -M of every run: set per protocol by main()
CLIENTS = "1"
CONNECT: list[str] = []  # ["-C"] with CONNECT=1


def pgbench(pg: PgCluster, port: int, *args: str) -> str:
    argv = [pg.binary("pgbench"), "-h", HOST, "-p", str(port), "-U", "postgres", "-n", "-S"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(PGSSLMODE="disable", PGCONNECT_TIMEOUT="10")
    done = subprocess.run(
        [*argv, *PROTOCOL, *CONNECT, "-c", CLIENTS, *args, "postgres"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    if done.returncode != 0:
        raise RuntimeError(f"pgbench on {port}: {(done.stderr or done.stdout).strip()[-300:]}")
    return done.stdout


def threads_of(root: int) -> list[int]:
    tids = []
    for pid in tree_pids(root):
        with contextlib.suppress(OSError):
            tids += [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    return tids


# -- 1. latency ----------------------------------------------------------------------------


def measure_latency(
    pg: PgCluster, targets: list[Target], results: dict[str, Result], rounds: int, duration: int
) -> None:
    for rnd in range(1, rounds + 1):
        order = targets if rnd % 2 else targets[::-1]
        lat: dict[str, float] = {}
        for t in order:
            stats0 = all_stats()
            out = pgbench(pg, t.port, "-T", str(duration))
            stats1 = all_stats()
            m = re.search(r"latency average = ([\d.]+) ms", out)
            n = re.search(r"actually processed: (\d+)", out)
            if not (m and n):
                results[t.name].notes.append(f"round {rnd}: no latency in pgbench output")
                continue
            lat[t.name] = float(m.group(1)) * 1000
            results[t.name].latency_us.append(lat[t.name])
            if t.pid_root:
                ticks = tree_cpu_ticks(t.pid_root, stats1) - tree_cpu_ticks(t.pid_root, stats0)
                results[t.name].cpu_us.append(ticks / CLK_TCK * 1e6 / int(n.group(1)))
            say(f"round {rnd} {t.name:10s} {lat[t.name]:6.1f} µs")
        if "direct" in lat:
            for name, value in lat.items():
                if name != "direct":
                    results[name].added_us.append(value - lat["direct"])


# -- 2. syscalls (strace -c) ---------------------------------------------------------------


def count_syscalls(pg: PgCluster, t: Target, txns: int, workdir: Path) -> dict[str, float]:
    assert t.pid_root is not None
    out = workdir / f"strace-{t.name}.txt"
    argv = ["strace", "-f", "-c", "-o", str(out)]
    for tid in threads_of(t.pid_root):
        argv += ["-p", str(tid)]
    tracer = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.0)  # attached
        pgbench(pg, t.port, "-t", str(txns))
    finally:
        tracer.send_signal(signal.SIGINT)
        tracer.wait(30)
    if not out.exists():
        raise RuntimeError("strace wrote no summary (no ptrace rights?)")
    return strace_summary(out.read_text(), txns)


def strace_summary(text: str, txns: int) -> dict[str, float]:
    """Calls per transaction by syscall from `strace -c` output, most frequent first."""
    calls: dict[str, float] = {}
    for line in text.splitlines():
        parts = line.split()
        # % time, seconds, usecs/call, calls, [errors], syscall
        if (
            len(parts) >= 5
            and parts[0][0].isdigit()
            and parts[3].isdigit()
            and parts[-1] != "total"
        ):
            calls[parts[-1]] = int(parts[3]) / txns
    if not calls:
        raise RuntimeError("strace counted no syscalls")
    return dict(sorted(calls.items(), key=lambda kv: -kv[1]))


# -- 3. phases (perf tracepoints) ----------------------------------------------------------


@dataclass
class Call:
    tid: int
    kind: str  # read, write, poll or other
    fd: int | None
    enter: float  # µs
    exit: float


def record_phases(pg: PgCluster, t: Target, txns: int, workdir: Path) -> dict[str, float]:
    assert t.pid_root is not None
    data = workdir / f"perf-{t.name}.data"
    pids = ",".join(str(p) for p in tree_pids(t.pid_root))
    events = "raw_syscalls:sys_enter,raw_syscalls:sys_exit,sched:sched_switch,sched:sched_wakeup"
    recorder = subprocess.Popen(
        ["perf", "record", "-q", "-o", str(data), "-e", events, "-p", pids],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(1.0)
        pgbench(pg, t.port, "-t", str(txns))
    finally:
        recorder.send_signal(signal.SIGINT)
        recorder.wait(60)
    script = subprocess.run(
        ["perf", "script", "--ns", "-i", str(data), "-F", "tid,cpu,time,event,trace"],
        capture_output=True,
        text=True,
        timeout=300,
    ).stdout
    return phases(script, txns)


_EVENT = re.compile(r"\s*(\d+)\s+(?:\[(\d+)\]\s+)?([\d.]+):\s+(\S+):\s*(.*)")


def phases(script: str, txns: int) -> dict[str, float]:
    """Per-transaction figures from `perf script` lines of raw_syscalls and sched_switch."""
    pending: dict[int, tuple[int, float, int | None]] = {}
    calls: list[Call] = []
    peeks = 0
    switches: dict[int, list[tuple[float, str]]] = collections.defaultdict(list)
    wakeups: list[tuple[int, float, bool]] = []  # (waker tid, at, on the waker's own CPU)
    for line in script.splitlines():
        m = _EVENT.match(line)
        if not m:
            continue
        tid, cpu, at = int(m.group(1)), m.group(2), float(m.group(3)) * 1e6
        event, rest = m.group(4), m.group(5)
        if event == "sched:sched_switch":
            state = re.search(r"prev_state=(\S+)", rest)
            switches[tid].append((at, state.group(1) if state else "?"))
            continue
        if event == "sched:sched_wakeup":
            target = re.search(r"target_cpu=(\d+)", rest)
            if cpu is not None and target and tid != int(re.search(r"pid=(\d+)", rest).group(1)):
                wakeups.append((tid, at, int(target.group(1)) == int(cpu)))
            continue
        nr_m = re.search(r"NR (\d+)(?: \(([0-9a-f, ]+))?", rest)
        if not nr_m:
            continue
        nr = int(nr_m.group(1))
        if event.endswith("sys_enter"):
            args = [int(a, 16) for a in nr_m.group(2).split(", ")] if nr_m.group(2) else []
            fd = args[0] if args else None
            if nr == POLL and len(args) > 2 and args[2] == 0:
                nr = PEEK  # poll(2) that does not wait: a look at a socket, not an iteration
            pending[tid] = (nr, at, fd)
        elif tid in pending:
            nr0, enter, fd = pending.pop(tid)
            if nr0 == PEEK:
                peeks += 1  # (left out of the phases: its time counts in the gap around it)
                continue
            kind = (
                "read" if nr0 in READS else "write" if nr0 in WRITES else "poll" if nr0 in POLLS
                else "other"
            )  # fmt: skip
            calls.append(Call(tid, kind, fd, enter, at))
    calls.sort(key=lambda c: (c.tid, c.enter))

    def switched_out(tid: int, start: float, end: float) -> str | None:
        """The state of the first switch-out of tid in (start, end), if any."""
        mine = switches.get(tid, [])
        i = bisect.bisect_right(mine, (start, "~"))
        return mine[i][1] if i < len(mine) and mine[i][0] < end else None

    gaps: dict[str, list[float]] = collections.defaultdict(list)
    preempted_gaps = 0
    for a, b in itertools.pairwise(calls):
        if a.tid != b.tid:
            continue
        if a.kind == "read" and b.kind == "write":
            key = f"read→write fd {a.fd}"
        elif a.kind == "write":
            key = "write→next"
        elif a.kind == "poll" and b.kind == "read":
            key = "poll→read"
        else:
            continue
        state = switched_out(a.tid, a.exit, b.enter)
        if state is not None and state.startswith("R"):
            preempted_gaps += 1
            continue
        gaps[key].append(b.enter - a.exit)
    if not calls:
        raise RuntimeError("perf recorded no syscalls (perf_event_paranoid, or no tracepoints?)")
    # A task woken on our CPU runs when we sleep (or preempt us): how long it waited for that.
    waits = []
    for tid, at, same_cpu in wakeups:
        mine = switches.get(tid, [])
        i = bisect.bisect_right(mine, (at, "~"))
        if same_cpu and i < len(mine):
            waits.append(mine[i][0] - at)
    kinds = collections.Counter(c.kind for c in calls)
    all_switches = [s for per in switches.values() for s in per]
    out: dict[str, float] = {
        "reads": kinds["read"] / txns,
        "writes": kinds["write"] / txns,
        "polls (loop iterations)": kinds["poll"] / txns,
        "poll(2) without wait (attach check)": peeks / txns,
        "other syscalls": kinds["other"] / txns,
        "sleeps": sum(1 for _, st in all_switches if not st.startswith("R")) / txns,
        "preempted": sum(1 for _, st in all_switches if st.startswith("R")) / txns,
        "preempted between relay syscalls": preempted_gaps / txns,
    }
    if wakeups:  # seen only with the CPU of each event (perf script -F cpu)
        out["tasks woken"] = len(wakeups) / txns
        out["… on the waker's CPU"] = sum(1 for w in wakeups if w[2]) / txns
        if len(waits) > txns // 4:
            out["µs such a task waits for the CPU (median)"] = statistics.median(waits)
    # the two relay directions, busiest fds first (client and server socket)
    relay = sorted((k for k in gaps if k.startswith("read→write")), key=lambda k: -len(gaps[k]))[:2]
    for k in [*relay, "write→next", "poll→read"]:
        if len(gaps.get(k, [])) > txns // 4:
            out[f"on-CPU µs {k}"] = statistics.median(gaps[k])
    write_times = [c.exit - c.enter for c in calls if c.kind == "write"]
    if write_times:
        out["µs in write (median)"] = statistics.median(write_times)
    return out


# -- report --------------------------------------------------------------------------------


def fmt(v: float | None, spec: str = ".1f") -> str:
    return "-" if v is None else format(v, spec)


def med(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def report(results: dict[str, Result], header: list[str], protocol: str = "simple") -> str:
    names = list(results)
    lines = [*header, "", f"## Latency (untraced), `-M {protocol}`", ""]
    lines += [
        "| target | avg latency µs | added over direct µs | CPU µs/txn | per round µs |",
        "|---|---:|---:|---:|---|",
    ]
    for name in names:
        r = results[name]
        lines.append(
            f"| {name} | {fmt(med(r.latency_us))} | "
            f"{fmt(med(r.added_us)) if name != 'direct' else '0'} | {fmt(med(r.cpu_us))} | "
            f"{' / '.join(fmt(v, '.0f') for v in r.latency_us)} |"
        )
    traced = [n for n in names if results[n].syscalls or results[n].phases]
    if traced:
        syscalls = sorted(
            {s for n in traced for s, v in results[n].syscalls.items() if v >= 0.01},
            key=lambda s: -max(results[n].syscalls.get(s, 0.0) for n in traced),
        )
        lines += ["", f"## Syscalls per transaction (strace -c -f, every thread), `-M {protocol}`"]
        lines += [""]
        lines += ["| syscall | " + " | ".join(traced) + " |"]
        lines += ["|---|" + "---:|" * len(traced)]
        for s in syscalls:
            cells = " | ".join(fmt(results[n].syscalls.get(s), ".2f") for n in traced)
            lines.append(f"| {s} | {cells} |")
        total = " | ".join(fmt(sum(results[n].syscalls.values()), ".2f") for n in traced)
        lines.append(f"| **total** | {total} |")
        rows = list(dict.fromkeys(k for n in traced for k in results[n].phases))
        lines += ["", f"## Phases per transaction (perf tracepoints), `-M {protocol}`", ""]
        lines += ["| per txn | " + " | ".join(traced) + " |"]
        lines += ["|---|" + "---:|" * len(traced)]
        relay_rows = [k for k in rows if k.startswith("on-CPU µs read→write")]
        for k in [k for k in rows if k not in relay_rows]:
            cells = " | ".join(fmt(results[n].phases.get(k), ".2f") for n in traced)
            lines.append(f"| {k} | {cells} |")
        cells = []
        for n in traced:
            mine = [v for k, v in results[n].phases.items() if k.startswith("on-CPU µs read→write")]
            cells.append(" / ".join(fmt(v) for v in mine) or "-")
        lines.append(f"| on-CPU µs read→write (each direction) | {' | '.join(cells)} |")
    notes = [f"- {n}: {note}" for n in names for note in results[n].notes]
    if notes:
        lines += ["", *notes]
    return "\n".join(lines) + "\n"


# -- main ----------------------------------------------------------------------------------


def main() -> int:
    rounds = env_int("ROUNDS", 3)
    duration = env_int("DURATION", 5)
    txns = env_int("TXNS", 3000)
    try:
        wanted = wanted_targets(
            os.environ.get("TARGETS", "direct,pgbouncer,splice,pooler"),
            workers=1,
            odyssey_workers=[1],
            splice_workers=1,
        )
        binaries, versions = {}, {}
        for w in wanted:
            if w.kind in ("pgbouncer", "odyssey") and w.kind not in binaries:
                env_var = "PGBOUNCER_BIN" if w.kind == "pgbouncer" else "ODYSSEY_BIN"
                binaries[w.kind] = find_peer(w.kind, env_var, path_ok=w.kind == "odyssey")
                versions[w.kind] = peer_version(binaries[w.kind])
                if w.kind == "pgbouncer":
                    check_pgbouncer(versions[w.kind])
    except (ValueError, RuntimeError) as exc:
        print(f"latency: {exc}", file=sys.stderr)
        return 2
    tools = {tool: shutil.which(tool) is not None for tool in ("strace", "perf")}
    started = _dt.datetime.now()
    load = os.getloadavg()[0]
    tmp = Path(tempfile.mkdtemp(prefix="pooler-latency-"))
    tmp.chmod(0o755)
    global CLIENTS, CONNECT
    CLIENTS = str(env_int("CLIENTS", 1))
    CONNECT = ["-C"] if env_int("CONNECT", 0) else []
    protocols = [p.strip() for p in os.environ.get("PROTOCOLS", "simple,extended").split(",")]
    if not protocols or any(p not in ("simple", "extended", "prepared") for p in protocols):
        print("latency: PROTOCOLS is a list of simple, extended, prepared", file=sys.stderr)
        return 2
    by_protocol = {p: {w.name: Result(w.name) for w in wanted} for p in protocols}
    pg: PgCluster | None = None
    objs: list[Target] = []
    try:
        pg_port = pick_port()
        pg = PgCluster(pg_port, fsync=False, max_connections=200, settings={"autovacuum": False})
        say(f"PostgreSQL on {pg_port}")
        pg.start()
        pg.pgbench("-i", "-q", "-s", str(env_int("SCALE", 1)))
        for w in wanted:
            t = make_target(w, pg_port, tmp, binaries)
            t.start()
            objs.append(t)
            pgbench(pg, t.port, "-t", "200")  # warm: a server connection, caches
        for protocol, results in by_protocol.items():
            PROTOCOL[1] = protocol
            say(f"-M {protocol}")
            measure_latency(pg, objs, results, rounds, duration)
            for t in objs:
                if t.pid_root is None:
                    continue
                if tools["strace"]:
                    say(f"strace {t.name}")
                    try:
                        results[t.name].syscalls = count_syscalls(pg, t, txns, tmp)
                    except RuntimeError as exc:
                        results[t.name].notes.append(f"syscalls: {exc}")
                if tools["perf"]:
                    say(f"perf {t.name}")
                    try:
                        results[t.name].phases = record_phases(pg, t, txns, tmp)
                    except RuntimeError as exc:
                        results[t.name].notes.append(f"phases: {exc}")
    finally:
        for t in objs:
            with contextlib.suppress(Exception):
                t.stop()
        stop_all()
        if pg is not None:
            with contextlib.suppress(Exception):
                pg.remove()
        if os.environ.get("KEEP_TMP"):
            say(f"KEEP_TMP: left {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    stamp = started.strftime("%Y%m%d-%H%M%S")
    missing = [tool for tool, ok in tools.items() if not ok]
    header = [
        f"# bench/latency.py {stamp}",
        "",
        f"`pgbench -n -S {' '.join([*CONNECT, ''])}-c {CLIENTS}`, `-M` {', '.join(protocols)}: {rounds} round(s) × "
        f"{duration} s untraced, then "
        f"{txns} transactions under strace and {txns} under perf, per target. "
        f"{os.cpu_count()} CPUs; load average at the start "
        f"{load:.1f}." + (f" Skipped (not installed): {', '.join(missing)}." if missing else ""),
        *(f"- {kind}: {text}" for kind, text in versions.items()),
    ]
    text = "\n".join(
        report(results, header if i == 0 else [], protocol)
        for i, (protocol, results) in enumerate(by_protocol.items())
    )
    RESULTS_DIR.mkdir(exist_ok=True)
    out = RESULTS_DIR / f"latency-{stamp}.md"
    out.write_text(text)
    print(text)
    print(f"written to {out.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
