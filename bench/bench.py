#!/usr/bin/env python3
"""pooler vs pgbouncer vs direct PostgreSQL: pgbench scenarios, interleaved (SPEC S11, issue 9).

Run it through ``bench/run``. It starts

* a throwaway PostgreSQL (``pooler.pgcluster.PgCluster``: fsync off, max_connections 1200,
  ``pgbench -i -s 10``),
* pgbouncer (Debian package; installed with apt-get when missing; started as the ``postgres``
  OS user when we are root) from a pgbouncer.ini rendered from the same settings as
* pooler (``python -m pooler serve CONFIG``, one odyssey-syntax config),
* optionally ``splice`` (``bench/splice.py``: a bare uvloop byte splice, one server connection
  per client, no parsing or pooling; the floor of any Python/uvloop proxy on this machine),

then runs the pgbench scenarios. Every round runs each scenario against each target in turn;
the target order is reversed on even rounds. Per run it records TPS, average latency, the CPU of
the pooler's process tree per transaction (``/proc/<pid>/stat`` utime+stime, children included,
before and after), and CPU shares of pgbench / pooler / PostgreSQL / the rest of the machine.
Ratios (pooler/pgbouncer, pooler/direct) are taken within a round; the table shows medians over
rounds. A memory step measures RSS per idle client connection (2,000 idle clients, opened by
``bench/idle_clients.py`` in a helper process) and per server connection.

Knobs (environment): ROUNDS (2), DURATION (10 s), SCENARIOS (abcdefg), TARGETS
(direct,pgbouncer,pooler; add splice to run it too), WORKERS (pooler ``workers``, 1),
SPLICE_WORKERS (SO_REUSEPORT processes of splice, 1), MEMORY (1; 0 skips the memory step),
IDLE_CLIENTS (2000), SCALE (10), POOLER_CMD (default ``<python> -m pooler serve {config}``),
QUIET_WAIT (max seconds to wait for a quiet machine before a run, 15), RETRIES (re-measure a
run in which other processes took over 25 % of a core, keeping the least disturbed; 1),
KEEP_TMP (1 keeps the temp dir with configs, logs and pgbench output).

This is a measurement tool, not a test: nothing here asserts on timings.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pooler.pgcluster import PgCluster, port_is_free  # noqa: E402

HOST = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")
BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"

# The one set of pool settings both poolers are rendered from.
SETTINGS: dict[str, Any] = {
    "pool": "transaction",
    "pool_size": 20,
    "pool_discard": False,
    "log_session": False,
    "log_stats": False,
    "max_client_conn": 4000,
    "backlog": 1024,
}


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


ENV_KNOBS = (
    "ROUNDS", "DURATION", "SCENARIOS", "TARGETS", "WORKERS", "SPLICE_WORKERS", "MEMORY",
    "IDLE_CLIENTS", "SCALE", "QUIET_WAIT", "RETRIES", "POOLER_CMD",
)  # fmt: skip


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    return int(value) if value else default


def say(*parts: Any) -> None:
    print(f"[{time.strftime('%H:%M:%S')}]", *parts, flush=True)


# -- /proc accounting ----------------------------------------------------------------------


def _read_stat(pid: int) -> tuple[int, int, int] | None:
    """(ppid, utime+cutime, stime+cstime) in clock ticks, or None if gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = text[text.rindex(")") + 2 :].split()
    # fields[0] is state (field 3); ppid is field 4; utime..cstime are fields 14..17
    return int(fields[1]), int(fields[11]) + int(fields[13]), int(fields[12]) + int(fields[14])


def _all_stats() -> dict[int, tuple[int, int, int]]:
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _read_stat(int(entry))
            if st is not None:
                out[int(entry)] = st
    return out


def tree_pids(root: int, stats: dict[int, tuple[int, int, int]] | None = None) -> list[int]:
    stats = _all_stats() if stats is None else stats
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


# -- processes -----------------------------------------------------------------------------


_children: list[subprocess.Popen[Any]] = []


def spawn(
    argv: list[str], *, log: Path, cwd: Path, env: dict[str, str] | None = None, **kw: Any
) -> subprocess.Popen[Any]:
    with log.open("ab") as out:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=env,
            start_new_session=True,  # own process group: Ctrl-C reaches us only; we stop it
            **kw,
        )
    _children.append(proc)
    return proc


def stop_proc(proc: subprocess.Popen[Any] | None, timeout: float = 10.0) -> None:
    if proc is None:
        return
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)
    with contextlib.suppress(ValueError):
        _children.remove(proc)


def is_listening(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((HOST, port)) == 0


def wait_listening(proc: subprocess.Popen[Any], port: int, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        if is_listening(port):
            return
        time.sleep(0.05)
    raise RuntimeError(f"not listening on {port} after {timeout} s:\n{log.read_text()[-3000:]}")


_next_port = 15432


def pick_port() -> int:
    """Ports below the ephemeral range (an outgoing connection never takes them)."""
    global _next_port
    while not port_is_free(_next_port):
        _next_port += 1
    port = _next_port
    _next_port += 1
    return port


# -- targets -------------------------------------------------------------------------------


def render_odyssey(port: int, pg_port: int, workers: int) -> str:
    s = SETTINGS
    yn = lambda b: "yes" if b else "no"  # noqa: E731
    return f"""# generated by bench/bench.py: the settings pgbouncer.ini is rendered from as well
workers {workers}
log_to_stdout yes
log_format "%p %t %l [%i %s] (%c) %m\\n"
log_session {yn(s["log_session"])}
log_stats {yn(s["log_stats"])}
log_debug no
log_config no
log_query no

listen {{
\thost "{HOST}"
\tport {port}
\tbacklog {s["backlog"]}
}}

storage "postgres_server" {{
\ttype "remote"
\thost "{HOST}"
\tport {pg_port}
}}

database default {{
\tuser default {{
\t\tauthentication "none"
\t\tstorage "postgres_server"
\t\tpool "{s["pool"]}"
\t\tpool_size {s["pool_size"]}
\t\tpool_discard {yn(s["pool_discard"])}
\t}}
}}
"""


def render_pgbouncer(port: int, pg_port: int, workdir: Path) -> str:
    s = SETTINGS
    zero_one = lambda b: "1" if b else "0"  # noqa: E731
    return f"""; generated by bench/bench.py from the same settings as the pooler config
[databases]
* = host={HOST} port={pg_port}

[pgbouncer]
listen_addr = {HOST}
listen_port = {port}
listen_backlog = {s["backlog"]}
unix_socket_dir =
auth_type = trust
auth_file = {workdir}/userlist.txt
pool_mode = {s["pool"]}
default_pool_size = {s["pool_size"]}
max_client_conn = {s["max_client_conn"]}
; pool_discard no: pgbouncer only sends server_reset_query in session mode anyway
server_reset_query_always = 0
log_connections = {zero_one(s["log_session"])}
log_disconnections = {zero_one(s["log_session"])}
log_stats = {zero_one(s["log_stats"])}
logfile = {workdir}/pgbouncer.log
pidfile = {workdir}/pgbouncer.pid
"""


@dataclass
class Target:
    name: str
    port: int
    pid_root: int | None = None  # process tree whose CPU counts as "pooler" (the target's)
    proc: subprocess.Popen[Any] | None = None
    restarts: int = 0

    def start(self) -> None:  # direct: nothing to start
        pass

    def stop(self) -> None:
        stop_proc(self.proc)
        self.proc = None
        self.pid_root = None

    def alive(self) -> bool:
        return self.proc is None or self.proc.poll() is None

    def ensure(self) -> str:
        """Restart a dead pooler; return a note when it had to."""
        if self.alive() and (self.proc is None or is_listening(self.port)):
            return ""
        code = self.proc.poll() if self.proc else None
        self.stop()
        self.restarts += 1
        self.start()
        return f"{self.name} was down (exit {code}), restarted"

    def mem_pids(self) -> list[int]:
        return tree_pids(self.pid_root) if self.pid_root else []


class Direct(Target):
    pass


class PgBouncer(Target):
    def __init__(self, port: int, pg_port: int, workdir: Path) -> None:
        super().__init__("pgbouncer", port)
        self.workdir = workdir
        self.pg_port = pg_port
        workdir.mkdir(parents=True, exist_ok=True)
        self.ini = workdir / "pgbouncer.ini"
        self.ini.write_text(render_pgbouncer(port, pg_port, workdir))
        (workdir / "userlist.txt").write_text('"postgres" ""\n')
        self.log = workdir / "pgbouncer.stdout"
        if os.geteuid() == 0:
            workdir.chmod(0o755)
            for p in [workdir, *workdir.iterdir()]:
                shutil.chown(p, user="postgres")

    def start(self) -> None:
        binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
        # pgbouncer refuses to run as root: drop to the postgres user in the child itself
        # (not runuser, whose PAM session would reset RLIMIT_NOFILE to 1024).
        as_user = {"user": "postgres", "group": "postgres", "extra_groups": []}
        self.proc = spawn(
            [binary, str(self.ini)],
            log=self.log,
            cwd=self.workdir,
            **(as_user if os.geteuid() == 0 else {}),
        )
        wait_listening(self.proc, self.port, 20, self.log)
        self.pid_root = self.proc.pid


class Pooler(Target):
    def __init__(self, port: int, pg_port: int, workdir: Path, workers: int) -> None:
        super().__init__("pooler", port)
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.config = workdir / "pooler.conf"
        self.config.write_text(render_odyssey(port, pg_port, workers))
        self.log = workdir / "pooler.log"
        default_cmd = f"{shlex.quote(sys.executable)} -m pooler serve {{config}}"
        self.command = os.environ.get("POOLER_CMD") or default_cmd

    def start(self) -> None:
        argv = [a.replace("{config}", str(self.config)) for a in shlex.split(self.command)]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = spawn(argv, log=self.log, cwd=REPO, env=env)
        wait_listening(self.proc, self.port, 30, self.log)
        self.pid_root = self.proc.pid


class Splice(Target):
    """bench/splice.py: bytes copied both ways, one server connection per client, no pooling."""

    def __init__(self, port: int, pg_port: int, workdir: Path, workers: int) -> None:
        super().__init__("splice", port)
        workdir.mkdir(parents=True, exist_ok=True)
        self.log = workdir / "splice.log"
        self.argv = [
            sys.executable, str(BENCH_DIR / "splice.py"), str(port), str(pg_port),
            "--host", HOST, "--workers", str(workers), "--backlog", str(SETTINGS["backlog"]),
        ]  # fmt: skip

    def start(self) -> None:
        self.proc = spawn(self.argv, log=self.log, cwd=REPO)
        wait_listening(self.proc, self.port, 30, self.log)
        self.pid_root = self.proc.pid


# -- pgbench -------------------------------------------------------------------------------


@dataclass
class Run:
    scenario: str
    target: str
    round: int
    tps: float | None = None
    lat_ms: float | None = None
    conn_ms: float | None = None
    failed: int = 0
    error: str = ""
    broken: bool = False
    wall: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)  # seconds
    target_sys: float = 0.0  # seconds of the target's CPU spent in the kernel
    xacts: int = 0
    note: str = ""

    def pooler_us_per_txn(self) -> float | None:
        if self.target == "direct" or not self.xacts or "pooler" not in self.cpu:
            return None
        return self.cpu["pooler"] * 1e6 / self.xacts

    def sys_us_per_txn(self) -> float | None:
        if self.pooler_us_per_txn() is None:
            return None
        return self.target_sys * 1e6 / self.xacts


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
    stats0 = _all_stats()
    busy0 = machine_busy_ticks()
    t0 = time.monotonic()
    with out_path.open("wb") as out:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
            start_new_session=True,
        )  # fmt: skip
    _children.append(proc)
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
    _children.remove(proc)
    run.wall = time.monotonic() - t0
    stats1 = _all_stats()
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


# -- memory --------------------------------------------------------------------------------


def memory_step(target: Target, pg: PgCluster, n_clients: int, workdir: Path) -> dict[str, Any]:
    """RSS of the target with n idle clients, and per server connection.

    1. fresh process, one warm-up login: RSS0;  2. n idle clients (logged in, no query): RSS1;
    3. pool_size of them open a transaction (BEGIN; SELECT 1) and hold it: every server
       connection of the pool is in use: RSS2.
    """
    res: dict[str, Any] = {"target": target.name, "clients": n_clients}
    target.stop()
    target.start()
    helper = [sys.executable, str(BENCH_DIR / "idle_clients.py"), HOST, str(target.port)]
    # warm-up: one login + query, so RSS0 includes one route, one server connection and
    # whatever first-use imports/allocations the process does.
    warm = subprocess.run(
        [*helper, "1", "--hold", "0", "--once"], capture_output=True, text=True, timeout=60
    )
    if warm.returncode != 0:
        res["error"] = f"warm-up failed: {(warm.stderr or warm.stdout).strip()[-300:]}"
        return res
    time.sleep(0.5)
    servers0 = count_server_conns(pg)
    res["rss0"], res["pss0"] = rss_kb(target.mem_pids())
    proc = subprocess.Popen(
        [*helper, str(n_clients), "--hold", str(SETTINGS["pool_size"])],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    _children.append(proc)
    try:
        line = read_line(proc, 120)
        if not line.startswith("READY"):
            res["error"] = f"idle clients: {line or proc.stderr.read()[-500:]}"
            return res
        res["opened"] = int(line.split()[1])
        time.sleep(1.0)
        res["servers1"] = count_server_conns(pg)
        res["rss1"], res["pss1"] = rss_kb(target.mem_pids())
        proc.stdin.write("hold\n")
        proc.stdin.flush()
        line = read_line(proc, 60)
        if not line.startswith("HELD"):
            res["error"] = f"hold: {line or proc.stderr.read()[-500:]}"
            return res
        time.sleep(1.0)
        res["servers2"] = count_server_conns(pg)
        res["rss2"], res["pss2"] = rss_kb(target.mem_pids())
        res["servers0"] = servers0
        proc.stdin.write("quit\n")
        proc.stdin.flush()
        proc.wait(30)
    finally:
        stop_proc(proc)
    return res


def read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    import selectors

    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    if sel.select(timeout):
        return proc.stdout.readline().strip()
    return ""


def count_server_conns(pg: PgCluster) -> int:
    out = pg.psql(
        "select count(*) from pg_stat_activity where backend_type = 'client backend' "
        "and pid <> pg_backend_pid()"
    )
    return int(out.strip() or 0)


# -- report --------------------------------------------------------------------------------


def med(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(v: float | None, spec: str = ".0f", dash: str = "-") -> str:
    return dash if v is None else format(v, spec)


def build_table(runs: list[Run], scenarios: str, targets: list[str], duration: int) -> str:
    by = {(r.scenario, r.target, r.round): r for r in runs}
    rounds = sorted({r.round for r in runs})
    lines = [
        "| scen | target | median TPS | avg lat ms | vs direct | vs pgbouncer | TPS per round "
        "| pooler CPU µs/txn | of which kernel | CPU% pgbench / pooler / postgres / other | note |",
        "|---|---|---:|---:|---:|---:|---|---:|---:|---|---|",
    ]
    for key in scenarios:
        for t in targets:
            rs = [by.get((key, t, n)) for n in rounds]
            rs = [r for r in rs if r is not None]
            if not rs:
                continue
            ok = [r for r in rs if not r.broken and r.tps is not None]
            broken = [r for r in rs if r.broken]
            tps = med([r.tps for r in ok])
            lat = med([r.lat_ms for r in ok])

            def ratio(other: str, ok: list[Run] = ok, key: str = key) -> float | None:
                vals = []
                for r in ok:
                    o = by.get((key, other, r.round))
                    if o and not o.broken and o.tps:
                        vals.append(r.tps / o.tps)
                return med(vals)

            per_round = " / ".join(("✗" if r.broken else "") + fmt(r.tps) for r in rs)
            us = med([r.pooler_us_per_txn() for r in ok])
            sys_us = med([r.sys_us_per_txn() for r in ok])
            shares = []
            for part in ("pgbench", "pooler", "postgres", "other"):
                shares.append(fmt(med([100 * r.cpu.get(part, 0.0) / r.wall for r in (ok or rs)])))
            notes = []
            if broken:
                notes.append(f"**BROKEN** ({len(broken)}/{len(rs)} rounds): `{broken[0].error}`")
            conn = med([r.conn_ms for r in ok])
            if key in ("e",) and conn is not None:
                notes.append(f"initial connect {conn:.0f} ms")
            notes += sorted({r.note for r in rs if r.note})
            tps_cell = fmt(tps) if ok else f"({fmt(med([r.tps for r in broken]))})"
            lines.append(
                f"| {key} | {t} | {tps_cell} | {fmt(lat, '.2f')} | "
                f"{fmt(ratio('direct') if t != 'direct' else (1.0 if ok else None), '.2f')} | "
                f"{fmt(ratio('pgbouncer') if t != 'pgbouncer' else (1.0 if ok else None), '.2f')} | "
                f"{per_round} | {fmt(us)} | {fmt(sys_us)} | {' / '.join(shares)} | "
                f"{'; '.join(notes)} |"
            )
    # scenario g: added latency over direct, per round, median
    if "g" in scenarios and "direct" in targets:
        extra = [
            "",
            "1-client latency (g): added average latency over direct, median of per-round differences:",
            "",
        ]
        extra += ["| target | avg latency µs | added vs direct µs |", "|---|---:|---:|"]
        for t in targets:
            rs = [by.get(("g", t, n)) for n in rounds]
            rs = [r for r in rs if r and not r.broken and r.lat_ms is not None]
            added = []
            for r in rs:
                d = by.get(("g", "direct", r.round))
                if d and not d.broken and d.lat_ms is not None:
                    added.append((r.lat_ms - d.lat_ms) * 1000)
            extra.append(
                f"| {t} | {fmt(med([r.lat_ms * 1000 for r in rs]))} | "
                f"{fmt(med(added)) if t != 'direct' else '0'} |"
            )
        lines += extra
    return "\n".join(lines)


def memory_table(mem: list[dict[str, Any]]) -> str:
    lines = [
        "| target | idle clients | RSS fresh (kB) | RSS with idle clients (kB) | per idle client "
        "| server conns idle → held | RSS held (kB) | per server conn | note |",
        "|---|---:|---:|---:|---:|---|---:|---:|---|",
    ]
    for m in mem:
        if "rss1" not in m:
            lines.append(
                f"| {m['target']} | {m['clients']} | {m.get('rss0', '-')} | - | - | - | - | - | {m.get('error', '')} |"
            )
            continue
        opened = m.get("opened", m["clients"])
        per_client = (m["rss1"] - m["rss0"]) * 1024 / opened if opened else None
        held = "-"
        per_server = None
        if "rss2" in m:
            ds = m["servers2"] - m["servers1"]
            held = f"{m['servers1']} → {m['servers2']}"
            if ds > 0:
                per_server = (m["rss2"] - m["rss1"]) * 1024 / ds
        lines.append(
            f"| {m['target']} | {opened} | {m['rss0']} | {m['rss1']} | "
            f"{fmt(per_client / 1024 if per_client is not None else None, '.1f')} KB | {held} | "
            f"{m.get('rss2', '-')} | {fmt(per_server / 1024 if per_server is not None else None, '.1f')} KB | "
            f"{m.get('error', '')} |"
        )
    return "\n".join(lines)


def machine_info() -> str:
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
                subprocess.run(cmd, capture_output=True, text=True, timeout=10)
                .stdout.splitlines()[0]
                .strip()
            )
        return "?"

    return (
        f"- {os.cpu_count()} CPUs ({model}), {mem_gib} RAM, Linux {platform.release()}\n"
        f"- {ver(['pgbench', '--version'])}; PostgreSQL server {ver([str(find_pg_bin('postgres')), '--version'])}\n"
        f"- {ver([shutil.which('pgbouncer') or 'pgbouncer', '--version'])}\n"
        f"- Python {platform.python_version()} ({sys.executable})"
    )


def find_pg_bin(name: str) -> Path:
    from pooler.pgcluster import find_bindir

    return find_bindir() / name


# -- main ----------------------------------------------------------------------------------


def ensure_pgbouncer() -> None:
    if shutil.which("pgbouncer") or Path("/usr/sbin/pgbouncer").exists():
        return
    say("pgbouncer not found: apt-get install -y pgbouncer")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if subprocess.run(["apt-get", "install", "-y", "pgbouncer"], env=env).returncode != 0:
        subprocess.run(["apt-get", "update"], env=env)
        subprocess.run(["apt-get", "install", "-y", "pgbouncer"], env=env, check=True)
    # the package starts a system pgbouncer where it can; we run our own only
    subprocess.run(["service", "pgbouncer", "stop"], capture_output=True)


def raise_nofile() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 65536
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    with contextlib.suppress(ValueError, OSError):  # root may raise the hard limit too
        if want < 65536:
            resource.setrlimit(resource.RLIMIT_NOFILE, (65536, 65536))


def main() -> int:
    rounds = env_int("ROUNDS", 2)
    duration = env_int("DURATION", 10)
    scenarios = "".join(k for k in os.environ.get("SCENARIOS", "abcdefg") if k in SCENARIOS)
    targets = [
        t.strip()
        for t in os.environ.get("TARGETS", "direct,pgbouncer,pooler").split(",")
        if t.strip()
    ]
    workers = env_int("WORKERS", 1)
    splice_workers = env_int("SPLICE_WORKERS", 1)
    do_memory = env_int("MEMORY", 1) != 0
    idle_clients = env_int("IDLE_CLIENTS", 2000)
    scale = env_int("SCALE", 10)
    quiet_wait = float(os.environ.get("QUIET_WAIT", "15"))
    retries = env_int("RETRIES", 1)
    unknown = set(targets) - {"direct", "pgbouncer", "pooler", "splice"}
    if unknown:
        print(f"unknown TARGETS: {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2

    raise_nofile()
    started = _dt.datetime.now()
    stamp = started.strftime("%Y%m%d-%H%M%S")
    command = " ".join(f"{k}={shlex.quote(os.environ[k])}" for k in ENV_KNOBS if k in os.environ)
    command = (command + " bench/run").strip()
    say(
        f"rounds={rounds} duration={duration}s scenarios={scenarios} targets={','.join(targets)} workers={workers}"
        + (f" splice_workers={splice_workers}" if "splice" in targets else "")
    )
    say(f"RLIMIT_NOFILE={resource.getrlimit(resource.RLIMIT_NOFILE)}")
    if "pgbouncer" in targets:
        ensure_pgbouncer()

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

        for name in targets:
            if name == "direct":
                objs[name] = Direct("direct", pg_port)
            elif name == "pgbouncer":
                objs[name] = PgBouncer(pick_port(), pg_port, tmp / "pgbouncer")
            elif name == "pooler":
                objs[name] = Pooler(pick_port(), pg_port, tmp / "pooler", workers)
            elif name == "splice":
                objs[name] = Splice(pick_port(), pg_port, tmp / "splice", splice_workers)
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
            for key in scenarios:
                sc = SCENARIOS[key]
                for t in order:
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
            for name in ("pooler", "pgbouncer"):
                if name in objs:
                    say(f"memory: {name} with {idle_clients} idle clients")
                    for other in objs.values():  # only its server connections in PostgreSQL
                        if other.name != name:
                            other.stop()
                    try:
                        mem.append(memory_step(objs[name], pg, idle_clients, tmp))
                    except Exception as exc:
                        mem.append(
                            {"target": name, "clients": idle_clients, "error": str(exc)[:300]}
                        )
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
        for proc in list(_children):
            stop_proc(proc)
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
    table = build_table(runs, scenarios, list(objs), duration)
    restarts = {t.name: t.restarts for t in objs.values() if t.restarts}
    report = [
        f"# bench/run {stamp}",
        "",
        machine_info(),
        "",
        f"Command: `{command}` — {rounds} round(s) × {duration} s, scenarios {scenarios}, "
        f"pooler `workers {workers}`"
        + (f", splice {splice_workers} process(es)" if "splice" in objs else "")
        + f"{' (INTERRUPTED: partial results)' if interrupted else ''}.",
        f"Wall time {(_dt.datetime.now() - started).total_seconds() / 60:.1f} min.",
        "",
        "Scenarios: "
        + "; ".join(f"{s.key} {s.title}" for k, s in SCENARIOS.items() if k in scenarios)
        + ".",
        "",
        table,
        "",
        "Medians over rounds; the `vs` columns are medians of ratios taken within the same round. "
        "`pooler CPU µs/txn` is the CPU (utime+stime, children included) of the target's process "
        "tree (pooler, pgbouncer or splice) divided by the transactions done, `of which kernel` "
        "its stime part; the CPU% `pooler` share is the same tree. CPU% is percent of one core over the run. ✗ marks a broken run."
        + (
            " splice is bench/splice.py: a bare uvloop byte splice, one server connection per "
            "client, no parsing or pooling — the floor of a Python/uvloop proxy here."
            if "splice" in objs
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
            "tree; pgbouncer: its one process). Fresh = after one warm-up "
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
