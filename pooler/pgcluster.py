"""A throwaway PostgreSQL cluster: initdb in a temp dir, start, stop, psql, roles, databases.

Used by `pooler demo`, the integration tests (tests/harness.py) and the benchmarks. It needs the
PostgreSQL server binaries (`initdb`, `pg_ctl`, `postgres`) and the `psql` client, found through
``pg_config --bindir`` (or the ``POOLER_PG_BINDIR`` environment variable); nothing else.

PostgreSQL refuses to run as root, so when the current user is root every server-side command
runs as the ``postgres`` OS user (``runuser -u postgres --``) and the cluster's directory is
handed to that user. Client tools (``psql``, ``pgbench``) run as the current user over TCP.

Authentication (pg_hba.conf), first match wins:

* Unix socket: ``trust`` for everyone;
* 127.0.0.1: ``trust`` for the superuser ``postgres``;
* one rule per role created with :meth:`PgCluster.create_role` (its ``method``);
* 127.0.0.1, anyone else: ``md5`` (which does SCRAM for a SCRAM-stored password).

Over 500 lines for a reason: it is one class, the life of one throwaway cluster (initdb, its
postgresql.conf and pg_hba.conf, start, stop, standby, roles, databases, psql and pgbench as
its clients), with the binary lookup it needs. A tool of the demo, the tests and the
benchmarks; the server never loads it.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Self

from pooler.sql import quote_ident, quote_literal

__all__ = [
    "PgCluster",
    "PgError",
    "PgNotInstalledError",
    "conninfo",
    "find_bindir",
    "port_is_free",
]

SUPERUSER = "postgres"
PG_OS_USER = "postgres"
HOST = "127.0.0.1"

AUTH_METHODS = ("scram-sha-256", "md5", "password", "trust", "reject")

INSTALL_HINT = (
    "PostgreSQL server binaries not found (need initdb, pg_ctl, postgres and psql). "
    "On Debian/Ubuntu: `apt-get install postgresql`; or set POOLER_PG_BINDIR to the "
    "directory that holds initdb."
)


class PgError(RuntimeError):
    """A PostgreSQL command failed; the message carries its output."""


class PgNotInstalledError(PgError):
    """The PostgreSQL binaries are not installed (or not found)."""


def find_bindir() -> Path:
    """Return the directory with initdb/pg_ctl/postgres, or raise :class:`PgNotInstalledError`.

    Order: ``$POOLER_PG_BINDIR``, ``pg_config --bindir``, the newest /usr/lib/postgresql/*/bin.
    """
    candidates: list[Path] = []
    env = os.environ.get("POOLER_PG_BINDIR")
    if env:
        candidates.append(Path(env))
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()
            if out:
                candidates.append(Path(out))

    def version_key(p: Path) -> tuple[int, ...]:
        return tuple(int(x) for x in re.findall(r"\d+", p.parent.name)) or (0,)

    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version_key, reverse=True)
    for cand in candidates:
        if all((cand / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres")):
            return cand
    tried = ", ".join(str(c) for c in candidates) or "nothing (no pg_config on PATH)"
    raise PgNotInstalledError(f"{INSTALL_HINT} Looked in: {tried}.")


def port_is_free(port: int, host: str = HOST) -> bool:
    """True when nothing listens on host:port and we may bind it (SO_REUSEADDR, as servers do)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _conf_string(value: str) -> str:
    """A postgresql.conf string value (quotes doubled; backslash is its escape character)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def _conninfo_value(value: Any) -> str:
    text = str(value)
    if text and not re.search(r"[\s'\\]", text):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def conninfo(**params: Any) -> str:
    """Render libpq ``key=value`` connection string; ``None`` values are left out."""
    return " ".join(f"{k}={_conninfo_value(v)}" for k, v in params.items() if v is not None)


_live_clusters: set[PgCluster] = set()  # throwaway clusters not yet removed


@atexit.register
def _remove_leftovers() -> None:
    """Do not leave servers running when the interpreter exits without remove()."""
    for cluster in list(_live_clusters):
        with contextlib.suppress(Exception):
            cluster.remove()


class PgCluster:
    """One PostgreSQL instance listening on 127.0.0.1:``port`` and a private Unix socket dir.

    ``datadir=None`` puts the data directory in a fresh temp dir that :meth:`remove` deletes
    (and that is removed at interpreter exit if nobody did). A given ``datadir`` is kept: it is
    initialized by :meth:`start` only if empty, and left running at exit unless stopped.
    Logs and the Unix socket always live in a temp dir (:attr:`basedir`).
    ``settings`` are extra postgresql.conf lines (name -> value, strings are quoted).

    Typical use::

        with PgCluster(15432) as pg:          # init() + start(); stop() + remove() on exit
            pg.create_role("app", "secret")
            pg.create_database("appdb", owner="app")
            print(pg.psql("select 1"))
    """

    def __init__(
        self,
        port: int,
        *,
        datadir: str | os.PathLike[str] | None = None,
        fsync: bool = False,
        max_connections: int = 200,
        settings: Mapping[str, Any] | None = None,
        bindir: str | os.PathLike[str] | None = None,
        start_timeout: float = 60.0,
    ) -> None:
        self.port = int(port)
        self.host = HOST
        self.fsync = fsync
        self.max_connections = max_connections
        self.settings: dict[str, Any] = dict(settings or {})
        self.start_timeout = start_timeout
        self._bindir = Path(bindir) if bindir else None
        self.as_root = hasattr(os, "geteuid") and os.geteuid() == 0
        self.basedir = Path(tempfile.mkdtemp(prefix="pooler-pg-"))
        self._owns_datadir = datadir is None
        self.datadir = Path(datadir) if datadir else self.basedir / "data"
        self.socket_dir = self.basedir / "run"
        self.logfile = self.basedir / "postgres.log"
        self.role_rules: list[str] = []
        self._initialized = False
        self._running = False
        if self._owns_datadir:
            _live_clusters.add(self)  # a throwaway cluster does not outlive the interpreter

    # -- binaries -----------------------------------------------------------------------

    @property
    def bindir(self) -> Path:
        if self._bindir is None:
            self._bindir = find_bindir()
        return self._bindir

    def binary(self, name: str) -> str:
        """Path of a PostgreSQL program (server bindir first, then PATH)."""
        path = self.bindir / name
        if path.is_file():
            return str(path)
        found = shutil.which(name)
        if found:
            return found
        raise PgNotInstalledError(f"{name} not found in {self.bindir} nor on PATH. {INSTALL_HINT}")

    def _server_cmd(self, argv: list[str]) -> list[str]:
        if self.as_root:
            runuser = shutil.which("runuser")
            if runuser is None:
                raise PgError("running as root needs `runuser` (util-linux) to become postgres")
            return [runuser, "-u", PG_OS_USER, "--", *argv]
        return argv

    def _client_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["PGCONNECT_TIMEOUT"] = "10"
        env["PGSSLMODE"] = "disable"
        env.setdefault("LC_ALL", "C.UTF-8")
        return env

    def _run(
        self,
        argv: list[str],
        *,
        server: bool = False,
        input: str | None = None,
        timeout: float = 120.0,
        what: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        cmd = self._server_cmd(argv) if server else argv
        try:
            proc = subprocess.run(
                cmd,
                input=input,
                capture_output=True,
                text=True,
                timeout=timeout,
                cwd=self.basedir,
                env=self._client_env(),
                stdin=None if input is not None else subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired as exc:
            raise PgError(
                f"{what or argv[0]} timed out after {timeout} s: {shlex.join(cmd)}"
            ) from exc
        if proc.returncode != 0:
            out = (proc.stderr or "") + (proc.stdout or "")
            raise PgError(
                f"{what or Path(argv[0]).name} failed (exit {proc.returncode}): "
                f"{shlex.join(cmd)}\n{out.strip()}"
            )
        return proc

    # -- lifecycle ----------------------------------------------------------------------

    def _give_to_postgres(self, *paths: Path) -> None:
        """As root, hand paths to the postgres OS user (PostgreSQL refuses to run as root)."""
        if not self.as_root:
            return
        try:
            for path in paths:
                shutil.chown(path, user=PG_OS_USER, group=None)
        except LookupError:
            raise PgNotInstalledError(
                f"running as root needs the OS user {PG_OS_USER!r} (created by the "
                f"postgresql package) to run the server. {INSTALL_HINT}"
            ) from None

    def init(self) -> Self:
        """Run initdb and write postgresql.conf additions and pg_hba.conf."""
        initdb = self.binary("initdb")
        self.socket_dir.mkdir(exist_ok=True)
        self.datadir.mkdir(parents=True, exist_ok=True)
        self.basedir.chmod(0o755)  # the postgres user must reach the data dir and sockets
        self._give_to_postgres(self.basedir, self.socket_dir, self.datadir)
        self.datadir.chmod(0o700)
        self._run(
            [
                initdb,
                "-D",
                str(self.datadir),
                "-U",
                SUPERUSER,
                "-E",
                "UTF8",
                "--locale=C",
                "--auth-local=trust",
                "--auth-host=md5",
                "--no-sync",
            ],
            server=True,
            what="initdb",
        )
        self._write_conf()
        self._write_hba()
        self._initialized = True
        return self

    def _conf_lines(self) -> list[str]:
        base: dict[str, Any] = {
            "port": self.port,
            "listen_addresses": self.host,
            "unix_socket_directories": str(self.socket_dir),
            "max_connections": self.max_connections,
            "fsync": self.fsync,
            "synchronous_commit": self.fsync,
            "full_page_writes": self.fsync,
            "shared_buffers": "32MB",
            "password_encryption": "scram-sha-256",
            "logging_collector": False,
            "log_line_prefix": "%m [%p] %q%u@%d ",
            "log_min_messages": "warning",
            "max_wal_size": "1GB",
            "dynamic_shared_memory_type": "posix",
        }
        base.update(self.settings)
        lines = ["", "# --- added by pooler.pgcluster ---"]
        for name, value in base.items():
            if isinstance(value, bool):
                text = "on" if value else "off"
            elif isinstance(value, int | float):
                text = str(value)
            else:
                text = _conf_string(str(value))
            lines.append(f"{name} = {text}")
        return lines

    def _write_conf(self) -> None:
        conf = self.datadir / "postgresql.conf"
        with conf.open("a") as f:
            f.write("\n".join(self._conf_lines()) + "\n")

    def hba_lines(self) -> list[str]:
        """The pg_hba.conf rules, in order (see the module docstring)."""
        return [
            "# written by pooler.pgcluster; first match wins",
            "local all all trust",
            "local replication all trust",
            f"host all {SUPERUSER} {HOST}/32 trust",
            f"host replication {SUPERUSER} {HOST}/32 trust",
            *self.role_rules,
            f"host all all {HOST}/32 md5",
        ]

    def _write_hba(self) -> None:
        hba = self.datadir / "pg_hba.conf"
        tmp = hba.with_suffix(".tmp")
        tmp.write_text("\n".join(self.hba_lines()) + "\n")
        if self.as_root:
            shutil.chown(tmp, user=PG_OS_USER, group=None)
        tmp.replace(hba)

    def set_role_rules(self, rules: Iterable[str]) -> None:
        """Replace the per-role pg_hba.conf lines and reload a running server."""
        self.role_rules = list(rules)
        self._write_hba()
        if self._running:
            self.reload()

    def start(self) -> Self:
        """Start the server (``pg_ctl start -w``); initdb first if not done yet."""
        if not self._initialized and not (self.datadir / "PG_VERSION").exists():
            self.init()
        self._initialized = True
        if not self.logfile.exists():
            self.logfile.touch()
            self._give_to_postgres(self.logfile)
        if not self.socket_dir.exists():  # a datadir initialized by an earlier PgCluster
            self.socket_dir.mkdir()
            self.basedir.chmod(0o755)
            self._give_to_postgres(self.basedir, self.socket_dir)
        # Port and socket dir on the command line win over an older postgresql.conf.
        opts = f"-p {self.port} -k {shlex.quote(str(self.socket_dir))}"
        log_offset = self.logfile.stat().st_size if self.logfile.exists() else 0
        try:
            self._run(
                [
                    self.binary("pg_ctl"),
                    "start",
                    "-D",
                    str(self.datadir),
                    "-l",
                    str(self.logfile),
                    "-o",
                    opts,
                    "-w",
                    "-t",
                    str(int(self.start_timeout)),
                ],
                server=True,
                timeout=self.start_timeout + 10,
                what="pg_ctl start",
            )
        except PgError as exc:
            raise PgError(f"{exc}\n--- server log ---\n{self.log_text(log_offset)}") from None
        self._running = True
        return self

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``pg_ctl stop -m fast``); kill it if that fails. Idempotent."""
        if not (self.datadir / "postmaster.pid").exists():
            self._running = False
            return
        try:
            self._run(
                [self.binary("pg_ctl"), "stop", "-D", str(self.datadir), "-m", mode, "-w"],
                server=True,
                timeout=60,
                what="pg_ctl stop",
            )
        except PgError:
            self._kill_postmaster()
        self._running = False

    def _kill_postmaster(self) -> None:
        pidfile = self.datadir / "postmaster.pid"
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int(pidfile.read_text().splitlines()[0])
            os.kill(pid, signal.SIGQUIT)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                os.kill(pid, 0)
                time.sleep(0.05)
            os.kill(pid, signal.SIGKILL)

    def restart(self) -> Self:
        self.stop()
        return self.start()

    def reload(self) -> None:
        """Re-read postgresql.conf and pg_hba.conf."""
        self._run(
            [self.binary("pg_ctl"), "reload", "-D", str(self.datadir)],
            server=True,
            what="pg_ctl reload",
        )

    def is_running(self) -> bool:
        if not (self.datadir / "postmaster.pid").exists():
            return False
        try:
            self._run(
                [self.binary("pg_ctl"), "status", "-D", str(self.datadir)],
                server=True,
                what="pg_ctl status",
            )
        except PgError:
            return False
        return True

    def remove(self) -> None:
        """Stop the server and delete the temp dir (log, sockets, and the data dir unless the
        caller passed ``datadir``, which is left in place). Idempotent."""
        with contextlib.suppress(PgError):
            self.stop(mode="immediate" if self._owns_datadir else "fast")
        if (self.datadir / "postmaster.pid").exists():
            self._kill_postmaster()
        self._running = False
        shutil.rmtree(self.basedir, ignore_errors=True)
        _live_clusters.discard(self)

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def __repr__(self) -> str:
        state = "running" if self._running else "stopped"
        return f"<PgCluster {self.host}:{self.port} {state} {self.datadir}>"

    # -- clients ------------------------------------------------------------------------

    def dsn(
        self,
        dbname: str = "postgres",
        user: str = SUPERUSER,
        password: str | None = None,
        **extra: Any,
    ) -> str:
        """libpq connection string to this server over TCP."""
        return conninfo(
            host=self.host, port=self.port, dbname=dbname, user=user, password=password, **extra
        )

    def psql(self, sql: str, db: str = "postgres", *, user: str = SUPERUSER) -> str:
        """Run SQL through psql (over TCP, stops at the first error); return its output.

        The output is unaligned and tuples-only (``-At``): one line per row, columns joined
        by ``|``; the trailing newline is stripped.
        """
        proc = self._run(
            [
                self.binary("psql"),
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                self.dsn(db, user),
                "-f",
                "-",
            ],
            input=sql,
            what="psql",
        )
        return proc.stdout.rstrip("\n")

    def pgbench(self, *args: str, db: str = "postgres", user: str = SUPERUSER) -> str:
        """Run pgbench against this server; returns its combined output."""
        proc = self._run(
            [
                self.binary("pgbench"),
                "-h",
                self.host,
                "-p",
                str(self.port),
                "-U",
                user,
                *args,
                db,
            ],
            what="pgbench",
            timeout=600,
        )
        return proc.stdout + proc.stderr

    def create_role(
        self,
        name: str,
        password: str | None = None,
        method: str = "scram-sha-256",
        *,
        superuser: bool = False,
        options: str = "",
    ) -> None:
        """CREATE ROLE ... LOGIN, and a pg_hba.conf rule for it over 127.0.0.1.

        ``method``: ``scram-sha-256``, ``md5`` (the password is stored md5-hashed),
        ``password`` (cleartext on the wire), ``trust`` or ``reject``.
        ``password=None`` with a password method leaves the role without a password
        (so it cannot log in over TCP); pass ``method="trust"`` for a password-less login.
        """
        if method not in AUTH_METHODS:
            raise ValueError(f"method must be one of {AUTH_METHODS}, not {method!r}")
        attrs = "LOGIN SUPERUSER" if superuser else "LOGIN"
        if options:
            attrs += " " + options
        sql = []
        if method == "md5":
            sql.append("SET password_encryption = 'md5';")
        pw = f" PASSWORD {quote_literal(password)}" if password is not None else ""
        sql.append(f"CREATE ROLE {quote_ident(name)} {attrs}{pw};")
        self.psql("\n".join(sql))
        self.set_role_rules([*self.role_rules, f"host all {quote_ident(name)} {HOST}/32 {method}"])

    def standby(self, port: int) -> PgCluster:
        """A streaming replica of this (running) server on ``port``, started: its data
        directory is a ``pg_basebackup -R`` of this one (the primary's pg_hba.conf lets the
        superuser replicate over 127.0.0.1). :meth:`remove` it when done."""
        replica = PgCluster(port, bindir=self.bindir, start_timeout=self.start_timeout)
        replica.basedir.chmod(0o755)
        replica._give_to_postgres(replica.basedir)
        replica._run(
            [
                self.binary("pg_basebackup"),
                "-D",
                str(replica.datadir),
                "-R",  # standby.signal and primary_conninfo
                "-X",
                "stream",
                "-c",
                "fast",
                "--no-sync",
                "-d",
                self.dsn(),
            ],
            server=True,
            what="pg_basebackup",
        )
        return replica.start()

    def create_database(self, name: str, owner: str | None = None, template: str = "") -> None:
        sql = f"CREATE DATABASE {quote_ident(name)}"
        if owner:
            sql += f" OWNER {quote_ident(owner)}"
        if template:
            sql += f" TEMPLATE {quote_ident(template)}"
        self.psql(sql + ";")

    # -- logs ---------------------------------------------------------------------------

    def log_text(self, offset: int = 0) -> str:
        """The server log (from byte ``offset``)."""
        try:
            with self.logfile.open("rb") as f:
                f.seek(offset)
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""
