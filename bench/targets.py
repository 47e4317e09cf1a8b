"""The benchmark targets of bench/bench.py, their configs and their processes.

Targets (names as TARGETS spells them):

* ``direct``: PostgreSQL itself, nothing started;
* ``pooler`` (``workers`` = WORKERS) or ``poolerN`` (``workers N``): ``python -m pooler serve``;
* ``pgbouncer``: PgBouncer 1.21 or later (``max_prepared_statements`` 200), the binary named by
  PGBOUNCER_BIN, by default the shared 1.25.2 build (``shared/peers/pgbouncer`` in a folder above
  the repository). Debian's package (1.18) is never used: it predates protocol-level prepared
  statements, so its (c) breaks and its ratios would not compare with today's releases;
* ``odysseyN``: odyssey with ``workers N`` (ODYSSEY_BIN, by default the shared 1.5.3 build, then
  ``odyssey`` on PATH); ``odyssey`` alone means one target per count in ODYSSEY_WORKERS (1,2);
* ``splice``: bench/splice.py, a bare uvloop byte splice (the floor of a Python proxy);
* ``poolsplice``: bench/poolsplice.py, the same splice on a pool of ``pool_size`` server
  connections, released on ReadyForQuery 'I' (the floor of a Python transaction pooler). It
  cannot serve scenario c (`Target.unsupported`).

pooler and odyssey get the same odyssey-syntax config (`render_odyssey`), only their port and
``workers`` differ; pgbouncer.ini is rendered from the same SETTINGS.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from processes import pick_port, spawn, stop_proc, wait_logged
from procstat import tree_pids

HOST = "127.0.0.1"
BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent

# The one set of pool settings every pooler is rendered from.
SETTINGS: dict[str, Any] = {
    "pool": "transaction",
    "pool_size": 20,
    "pool_discard": False,
    "pool_reserve_prepared_statement": True,  # pooler's default; odyssey's is no
    "max_prepared_statements": 200,  # pgbouncer's (its 1.24+ default)
    "log_session": False,
    "log_stats": False,
    "max_client_conn": 4000,
    "backlog": 1024,
}

PGBOUNCER_MIN = (1, 21)  # max_prepared_statements: protocol-level prepared statements


# -- listening -----------------------------------------------------------------------------


def is_listening(port: int) -> bool:
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


# -- peer binaries -------------------------------------------------------------------------


def shared_peer(name: str, start: Path = REPO) -> Path | None:
    """``shared/peers/<name>`` in the nearest folder above `start` that has one."""
    for folder in start.parents:
        candidate = folder / "shared" / "peers" / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def find_peer(name: str, env_var: str, *, path_ok: bool, start: Path = REPO) -> Path:
    """The binary of a peer pooler: $env_var, else the shared build above `start`, else (if
    `path_ok`) PATH. Raises RuntimeError saying what to set."""
    given = os.environ.get(env_var, "").strip()
    if given:
        found = Path(given) if os.sep in given else Path(shutil.which(given) or given)
        if not (found.is_file() and os.access(found, os.X_OK)):
            raise RuntimeError(f"{env_var}={given}: not an executable file")
        return found
    shared = shared_peer(name, start)
    if shared is not None:
        return shared
    if path_ok and (on_path := shutil.which(name)):
        return Path(on_path)
    raise RuntimeError(
        f"no {name} binary: set {env_var} (the shared build lives in shared/peers/ above the "
        "repository; see its README for the build and run-time libraries)"
    )


def peer_version(binary: Path) -> str:
    """The first line of `binary --version`; RuntimeError if it does not run."""
    try:
        done = subprocess.run(
            [str(binary), "--version"], capture_output=True, text=True, timeout=10
        )
    except OSError as exc:
        raise RuntimeError(f"{binary}: {exc}") from exc
    lines = (done.stdout or done.stderr).strip().splitlines()
    if done.returncode != 0 or not lines:
        raise RuntimeError(
            f"{binary} --version failed (exit {done.returncode}): "
            f"{(done.stderr or done.stdout).strip()[-300:]} — missing run-time libraries? "
            "(shared/peers/README.md lists them)"
        )
    return lines[0].strip()


def version_tuple(text: str) -> tuple[int, ...]:
    m = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", text)
    return tuple(int(g) for g in m.groups() if g is not None) if m else ()


def check_pgbouncer(version: str) -> None:
    if version_tuple(version) < PGBOUNCER_MIN:
        raise RuntimeError(
            f"{version}: pgbouncer {'.'.join(map(str, PGBOUNCER_MIN))} or later is needed "
            "(max_prepared_statements); point PGBOUNCER_BIN at the shared 1.25.2 build"
        )


# -- configs -------------------------------------------------------------------------------


def _yn(flag: bool) -> str:
    return "yes" if flag else "no"


def render_odyssey(port: int, pg_port: int, workers: int) -> str:
    s = SETTINGS
    return f"""# generated by bench/targets.py: pooler and odyssey both run this; pgbouncer.ini is
# rendered from the same settings
workers {workers}
log_to_stdout yes
log_format "%p %t %l [%i %s] (%c) %m\\n"
log_session {_yn(s["log_session"])}
log_stats {_yn(s["log_stats"])}
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
\t\tpool_discard {_yn(s["pool_discard"])}
\t\tpool_reserve_prepared_statement {_yn(s["pool_reserve_prepared_statement"])}
\t}}
}}
"""


def render_pgbouncer(port: int, pg_port: int, workdir: Path) -> str:
    s = SETTINGS
    zero_one = lambda b: "1" if b else "0"  # noqa: E731
    return f"""; generated by bench/targets.py from the same settings as the pooler config
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
max_prepared_statements = {s["max_prepared_statements"]}
; pool_discard no: pgbouncer only sends server_reset_query in session mode anyway
server_reset_query_always = 0
log_connections = {zero_one(s["log_session"])}
log_disconnections = {zero_one(s["log_session"])}
log_stats = {zero_one(s["log_stats"])}
logfile = {workdir}/pgbouncer.log
pidfile = {workdir}/pgbouncer.pid
"""


# -- the targets ---------------------------------------------------------------------------


@dataclass
class Target:
    name: str
    port: int
    pid_root: int | None = None  # process tree whose CPU counts as "pooler" (the target's)
    proc: subprocess.Popen[Any] | None = None
    restarts: int = 0
    workers: int | None = None  # pooler and odyssey: their `workers`
    unsupported: dict[str, str] | None = None  # scenario key -> why it is not run

    def skips(self, scenario: str) -> str:
        """Why this target does not run `scenario` ("" when it does)."""
        return (self.unsupported or {}).get(scenario, "")

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
    def __init__(self, port: int, pg_port: int, workdir: Path, binary: Path) -> None:
        super().__init__("pgbouncer", port)
        self.binary = binary
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
        # pgbouncer refuses to run as root: drop to the postgres user in the child itself
        # (not runuser, whose PAM session would reset RLIMIT_NOFILE to 1024).
        as_user = {"user": "postgres", "group": "postgres", "extra_groups": []}
        self.proc = spawn(
            [str(self.binary), str(self.ini)],
            log=self.log,
            cwd=self.workdir,
            **(as_user if os.geteuid() == 0 else {}),
        )
        wait_listening(self.proc, self.port, 20, self.log)
        self.pid_root = self.proc.pid


class Odyssey(Target):
    """odyssey with the pooler's config (its own port and `workers`): threads in one process."""

    def __init__(
        self, name: str, port: int, pg_port: int, workdir: Path, workers: int, binary: Path
    ) -> None:
        super().__init__(name, port, workers=workers)
        self.binary = binary
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.config = workdir / f"{name}.conf"
        self.config.write_text(render_odyssey(port, pg_port, workers))
        self.log = workdir / f"{name}.log"

    def start(self) -> None:
        self.proc = spawn([str(self.binary), str(self.config)], log=self.log, cwd=self.workdir)
        wait_listening(self.proc, self.port, 20, self.log)
        self.pid_root = self.proc.pid


class Pooler(Target):
    def __init__(self, name: str, port: int, pg_port: int, workdir: Path, workers: int) -> None:
        super().__init__(name, port, workers=workers)
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.config = workdir / f"{name}.conf"
        self.config.write_text(render_odyssey(port, pg_port, workers))
        self.log = workdir / f"{name}.log"
        default_cmd = f"{shlex.quote(sys.executable)} -m pooler serve {{config}}"
        self.command = os.environ.get("POOLER_CMD") or default_cmd

    def start(self) -> None:
        argv = [a.replace("{config}", str(self.config)) for a in shlex.split(self.command)]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        offset = self.log.stat().st_size if self.log.exists() else 0
        self.proc = spawn(argv, log=self.log, cwd=REPO, env=env)
        # The supervisor binds the port before its workers have started: wait for its
        # "pooler ready" (every worker accepting), or the workers' start-up CPU (seconds with
        # `workers 8` on a small machine) lands in the first run.
        wait_logged(self.proc, self.log, offset, "pooler ready", 60)
        wait_listening(self.proc, self.port, 30, self.log)
        self.pid_root = self.proc.pid


class Splice(Target):
    """bench/splice.py: bytes copied both ways, one server connection per client, no pooling."""

    def __init__(self, name: str, port: int, pg_port: int, workdir: Path, workers: int) -> None:
        super().__init__(name, port, workers=workers)
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


class PoolSplice(Target):
    """bench/poolsplice.py: the splice on a pool of pool_size server connections."""

    def __init__(self, name: str, port: int, pg_port: int, workdir: Path) -> None:
        unsupported = {
            "c": "n/a: named prepared statements need a statement cache, which a splice lacks"
        }
        super().__init__(name, port, unsupported=unsupported)
        workdir.mkdir(parents=True, exist_ok=True)
        self.log = workdir / "poolsplice.log"
        # its servers log in as pgbench's user and database: postgres, poolsplice's defaults
        self.argv = [
            sys.executable, str(BENCH_DIR / "poolsplice.py"), str(port), str(pg_port),
            "--host", HOST, "--pool", str(SETTINGS["pool_size"]),
            "--backlog", str(SETTINGS["backlog"]),
        ]  # fmt: skip

    def start(self) -> None:
        self.proc = spawn(self.argv, log=self.log, cwd=REPO)
        wait_listening(self.proc, self.port, 30, self.log)  # listens once its pool is up
        self.pid_root = self.proc.pid


# -- which targets -------------------------------------------------------------------------


@dataclass(frozen=True)
class Wanted:
    """One target to run: its name, its kind and (pooler, odyssey, splice) its workers."""

    name: str
    kind: str
    workers: int | None = None


KINDS = ("direct", "pgbouncer", "pooler", "odyssey", "splice", "poolsplice")


def wanted_targets(
    spec: str, *, workers: int, odyssey_workers: list[int], splice_workers: int
) -> list[Wanted]:
    """TARGETS (comma-separated) as a list; ValueError names what is unknown.

    ``pooler`` runs with `workers`, ``poolerN`` with N; ``odyssey`` is one ``odysseyN`` per
    count in `odyssey_workers`."""
    out: list[Wanted] = []
    for token in (t.strip() for t in spec.split(",")):
        if not token:
            continue
        m = re.fullmatch(r"(pooler|odyssey)(\d+)", token)
        if token in ("direct", "pgbouncer", "poolsplice"):
            out.append(Wanted(token, token))
        elif token == "splice":
            out.append(Wanted(token, token, splice_workers))
        elif token == "pooler":
            out.append(Wanted(token, token, workers))
        elif token == "odyssey":
            out += [Wanted(f"odyssey{n}", "odyssey", n) for n in odyssey_workers]
        elif m and int(m.group(2)) > 0:
            out.append(Wanted(token, m.group(1), int(m.group(2))))
        else:
            raise ValueError(
                f"unknown target {token!r} (known: {', '.join(KINDS)}, poolerN, odysseyN)"
            )
    seen: set[str] = set()
    return [w for w in out if not (w.name in seen or seen.add(w.name))]


def scaling_targets(counts: list[int]) -> list[Wanted]:
    """SCALE_WORKERS: direct and pgbouncer once, pooler and odyssey at every count."""
    out = [Wanted("direct", "direct"), Wanted("pgbouncer", "pgbouncer")]
    for n in counts:
        out += [Wanted(f"pooler{n}", "pooler", n), Wanted(f"odyssey{n}", "odyssey", n)]
    return out


def parse_counts(text: str) -> list[int]:
    """ "1,2,4,8" -> [1, 2, 4, 8]; ValueError on anything but positive integers."""
    counts = [int(part) for part in text.replace(" ", "").split(",") if part]
    if not counts or min(counts) < 1:
        raise ValueError(f"worker counts must be positive integers: {text!r}")
    return sorted(set(counts))


def make_target(want: Wanted, pg_port: int, tmp: Path, binaries: dict[str, Path]) -> Target:
    if want.kind == "direct":
        return Direct(want.name, pg_port)
    if want.kind == "pgbouncer":
        return PgBouncer(pick_port(), pg_port, tmp / "pgbouncer", binaries["pgbouncer"])
    if want.kind == "odyssey":
        assert want.workers is not None
        return Odyssey(
            want.name, pick_port(), pg_port, tmp / "odyssey", want.workers, binaries["odyssey"]
        )
    if want.kind == "pooler":
        assert want.workers is not None
        return Pooler(want.name, pick_port(), pg_port, tmp / "pooler", want.workers)
    if want.kind == "poolsplice":
        return PoolSplice(want.name, pick_port(), pg_port, tmp / "poolsplice")
    assert want.kind == "splice" and want.workers is not None
    return Splice(want.name, pick_port(), pg_port, tmp / "splice", want.workers)
