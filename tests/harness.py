"""Integration-test harness: ports, waiting, config rendering and a `pooler serve` process.

Modelled on pgbouncer's test/utils.py. The fixtures that use it live in tests/conftest.py:

* ``pg`` (session): a :class:`pooler.pgcluster.PgCluster` with the test roles and databases;
* ``pooler`` (function): a factory ``pooler(config) -> Pooler`` that starts ``pooler serve``.

Config text may contain the placeholders ``{port}`` (the pooler's listen port), ``{pg_port}``
(PostgreSQL's port) and ``{workdir}`` (the pooler's private directory). They are replaced
literally — odyssey's ``{``/``}`` block braces are left alone (no ``str.format``).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Self, TypeVar

import psycopg

from pooler.pgcluster import PgNotInstalledError, conninfo, find_bindir, port_is_free

T = TypeVar("T")

HOST = "127.0.0.1"

# Roles and databases of the session `pg` fixture (see tests/conftest.py).
SCRAM_USER, SCRAM_PW = "scram_user", "scram_pw"
MD5_USER, MD5_PW = "md5_user", "md5_pw"
PLAIN_USER, PLAIN_PW = "plain_user", "plain_pw"
DATABASES = ("p0", "p1", "p2")

LOG_FORMAT = r"%p %t %l [%i %s] (%c) %m\n"


def require_pg() -> None:
    """Skip the calling test/fixture when PostgreSQL is not installed (fail instead on CI)."""
    import pytest

    try:
        find_bindir()
    except PgNotInstalledError as exc:
        if os.environ.get("CI"):
            pytest.fail(str(exc), pytrace=False)
        pytest.skip(str(exc))


# -- waiting -----------------------------------------------------------------------------


# Every wait below gives up after `timeout * WAIT_SCALE` seconds. A test's timeouts say how long
# a condition may take on an idle machine; on a loaded 2-core one (CI, eight suites at once) it
# can take several times that, and a wait that is only ever long when the test fails costs
# nothing when it passes. Durations are measured in bench/, never asserted here.
WAIT_SCALE = float(os.environ.get("POOLER_TEST_WAIT_SCALE", "3"))


def patience(timeout: float) -> float:
    """Seconds a wait of nominal `timeout` seconds may really take (see WAIT_SCALE)."""
    return timeout * WAIT_SCALE


class WaitTimeoutError(AssertionError):
    """wait_until() gave up."""


def wait_until(
    predicate: Callable[[], T],
    timeout: float = 10.0,
    interval: float = 0.02,
    message: str | Callable[[], str] | None = None,
) -> T:
    """Call ``predicate`` until it returns something truthy and return that value.

    Raises :class:`WaitTimeoutError` (an AssertionError) after ``patience(timeout)`` seconds;
    ``message`` (or a callable producing it, evaluated at timeout) explains what was awaited.
    Exceptions raised by the predicate propagate at once.
    """
    limit = patience(timeout)
    deadline = time.monotonic() + limit
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            raise WaitTimeoutError(
                f"timed out after {limit:g} s waiting for {text or getattr(predicate, '__name__', predicate)}"
            )
        time.sleep(interval)


async def async_wait_until(
    predicate: Callable[[], Any],
    timeout: float = 10.0,
    interval: float = 0.02,
    message: str | Callable[[], str] | None = None,
) -> Any:
    """wait_until() for async tests: ``predicate`` may be a plain or an async function."""
    import asyncio
    import inspect

    limit = patience(timeout)
    deadline = time.monotonic() + limit
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            raise WaitTimeoutError(f"timed out after {limit:g} s waiting for {text or predicate}")
        await asyncio.sleep(interval)


# -- ports -------------------------------------------------------------------------------

# Below the Linux ephemeral range (32768-60999) so an outgoing connection never holds one.
PORT_RANGE = (20000, 32000)
_LOCK_DIR = Path(tempfile.gettempdir()) / "pooler-test-ports"
_held_ports: dict[int, int] = {}  # port -> fd of its flock'ed lock file
_cursor: int | None = None


def _worker_index() -> int:
    match = re.search(r"\d+", os.environ.get("PYTEST_XDIST_WORKER", ""))
    return int(match.group()) if match else 0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on, reserved for this process.

    Safe under pytest-xdist and concurrent test runs on one machine: each candidate port is
    claimed with an exclusive flock on ``$TMPDIR/pooler-test-ports/<port>.lock`` (held until
    :func:`release_port` or process exit, so a crashed run frees its ports), then checked with
    a bind. Each worker starts at its own offset and walks forward, so a port released by one
    test is not handed out again until the range wraps.
    """
    global _cursor
    lo, hi = PORT_RANGE
    span = hi - lo
    if _cursor is None:
        _cursor = _worker_index() * 1500 + (os.getpid() % 64) * 16
    _LOCK_DIR.mkdir(exist_ok=True)
    with contextlib.suppress(OSError):
        _LOCK_DIR.chmod(0o1777)
    for _ in range(span):
        port = lo + _cursor % span
        _cursor += 1
        if port in _held_ports:
            continue
        try:
            fd = os.open(_LOCK_DIR / f"{port}.lock", os.O_CREAT | os.O_RDONLY, 0o666)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue
        if not port_is_free(port):
            os.close(fd)
            continue
        _held_ports[port] = fd
        return port
    raise RuntimeError(f"no free TCP port in {PORT_RANGE}")


def release_port(port: int) -> None:
    """Give a port from :func:`free_port` back (others may claim it)."""
    fd = _held_ports.pop(port, None)
    if fd is not None:
        os.close(fd)


def is_listening(port: int, host: str = HOST) -> bool:
    """True when some socket listens on TCP ``port`` (any local address). Read from
    /proc/net/tcp{,6} when possible so the check opens no connection (which the pooler would
    log); elsewhere, try to connect to host:port."""
    suffix = f":{port:04X}"
    try:
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            with contextlib.suppress(FileNotFoundError), open(table) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    if fields[3] == "0A" and fields[1].endswith(suffix):  # 0A = LISTEN
                        return True
        if Path("/proc/net/tcp").exists():
            return False
    except OSError:
        pass
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


# -- config rendering --------------------------------------------------------------------


class Raw(str):
    """A config value written as is (no quotes): ``Raw("{pg_port}")``."""


def _value(value: Any) -> str:
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float):
        return str(value)
    return '"' + str(value) + '"'


def _name(name: str) -> str:
    return "default" if name == "default" else _value(name)


def _lines(params: Mapping[str, Any], indent: str) -> list[str]:
    return [f"{indent}{k} {_value(v)}" for k, v in params.items() if v is not None]


PG_PORT = Raw("{pg_port}")


def storage(
    name: str = "postgres_server",
    *,
    type: str = "remote",
    host: str | None = HOST,
    port: Any = PG_PORT,
    **params: Any,
) -> str:
    """A ``storage`` block; ``type="local"`` drops host and port."""
    body: dict[str, Any] = {"type": type}
    if type == "remote":
        body.update(host=host, port=port)
    body.update(params)
    return "\n".join([f"storage {_value(name)} {{", *_lines(body, "\t"), "}"])


def route(
    database: str = "default",
    user: str = "default",
    *,
    authentication: str = "none",
    storage: str = "postgres_server",
    pool: str = "session",
    **params: Any,
) -> str:
    """A ``database { user { ... } }`` rule. ``"default"`` is the keyword, anything else is
    quoted. Extra keyword arguments become rule options in order (``None`` = left out)::

        route("p0", "scram_user", authentication="scram-sha-256", password="scram_pw",
              storage_password="scram_pw", pool="transaction", pool_size=2)
    """
    body = {"authentication": authentication, "storage": storage, "pool": pool, **params}
    return "\n".join(
        [
            f"database {_name(database)} {{",
            f"\tuser {_name(user)} {{",
            *_lines(body, "\t\t"),
            "\t}",
            "}",
        ]
    )


CONSOLE_ROUTE = route("console", "admin", storage="local", role="admin")


def make_config(
    routes: str | Iterable[str] | None = None,
    *,
    storages: str | Iterable[str] | None = None,
    console: bool = True,
    listen: Mapping[str, Any] | None = None,
    **globals: Any,
) -> str:
    """Render a typical test config (placeholders left in for the Pooler to fill).

    * globals: ``log_to_stdout yes``, ``log_format "%p %t %l [%i %s] (%c) %m\\n"``,
      ``workers 1``, overridden/extended by ``**globals`` (``None`` drops a default);
    * ``listen { host "127.0.0.1"; port {port} }`` plus ``listen`` extras;
    * ``storages``: default one remote storage "postgres_server" at 127.0.0.1:{pg_port};
    * ``routes``: default ``route()`` (any db, any user, no auth, session pool, client's own
      db/user on the server);
    * ``console=True`` adds storage "local" and the admin console route (db "console", user
      "admin", no auth).
    """
    glob: dict[str, Any] = {"log_to_stdout": True, "log_format": LOG_FORMAT, "workers": 1}
    glob.update(globals)
    listen_params = {"host": HOST, "port": Raw("{port}"), **(listen or {})}
    if storages is None:
        storage_blocks = [storage()]
    elif isinstance(storages, str):
        storage_blocks = [storages]
    else:
        storage_blocks = list(storages)
    if routes is None:
        route_blocks = [route()]
    elif isinstance(routes, str):
        route_blocks = [routes]
    else:
        route_blocks = list(routes)
    if console:
        storage_blocks.append(storage("local", type="local"))
        route_blocks.append(CONSOLE_ROUTE)
    parts = [
        "\n".join(_lines(glob, "")),
        "\n".join(["listen {", *_lines(listen_params, "\t"), "}"]),
        *storage_blocks,
        *route_blocks,
    ]
    return "\n\n".join(parts) + "\n"


# -- the pooler process ------------------------------------------------------------------


class PoolerStartError(RuntimeError):
    """`pooler serve` exited (or never listened) during start; carries its exit code and log."""

    def __init__(self, message: str, returncode: int | None, log: str) -> None:
        super().__init__(f"{message}\n--- pooler log ---\n{log}--- end of pooler log ---")
        self.returncode = returncode
        self.log = log


SERVE_COMMAND: tuple[str, ...] = (sys.executable, "-m", "pooler", "serve", "{config}")


class Pooler:
    """One ``pooler serve`` process with its config file and log in ``workdir``.

    ``command`` is the argv (``{config}`` is replaced by the config path); the default runs
    ``python -m pooler serve CONFIG``. stdout and stderr go to ``workdir/pooler.log``.
    """

    def __init__(
        self,
        workdir: Path,
        config: str,
        *,
        port: int | None = None,
        pg_port: int | None = None,
        command: Sequence[str] = SERVE_COMMAND,
        env: Mapping[str, str] | None = None,
        start_timeout: float = 15.0,
        stop_timeout: float = 10.0,
    ) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._own_port = port is None
        self.port = free_port() if port is None else port
        self.pg_port = pg_port
        self.command = list(command)
        self.env = dict(env or {})
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.config_path = self.workdir / "pooler.conf"
        self.log_path = self.workdir / "pooler.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.start_failed = False
        self.check_log = True  # the fixture fails the test on a Traceback in the log
        self.config_text = ""
        self.write_config(config)
        # sd_notify(3) datagrams (READY=1, RELOADING=1, STOPPING=1) from the supervisor:
        # start() waits for READY=1, i.e. until every worker serves
        self.notify_address = f"@pooler-test-{os.getpid()}-{id(self):x}"
        self._notify_socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._notify_socket.bind("\0" + self.notify_address[1:])
        self._notify_socket.setblocking(False)
        self.notifications: list[str] = []

    # config ----------------------------------------------------------------------------

    def render(self, text: str) -> str:
        """Replace ``{port}``, ``{pg_port}`` and ``{workdir}`` in config text."""
        text = text.replace("{port}", str(self.port)).replace("{workdir}", str(self.workdir))
        if self.pg_port is not None:
            text = text.replace("{pg_port}", str(self.pg_port))
        return text

    def write_config(self, text: str) -> Path:
        """Render and write the config file atomically (a reload is up to the caller)."""
        self.config_text = self.render(text)
        tmp = self.config_path.with_name(self.config_path.name + ".tmp")
        tmp.write_text(self.config_text)
        tmp.replace(self.config_path)
        return self.config_path

    # lifecycle -------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def returncode(self) -> int | None:
        return self.proc.poll() if self.proc else None

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float | None = None) -> Self:
        """Start the process and wait until it listens on :attr:`port`.

        Raises :class:`PoolerStartError` (with the exit code and the log) when the process
        exits first or does not listen within ``timeout`` (default ``start_timeout``).
        """
        if self.is_running():
            raise RuntimeError("pooler is already running")
        timeout = self.start_timeout if timeout is None else timeout
        argv = [arg.replace("{config}", str(self.config_path)) for arg in self.command]
        env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "PYTHONFAULTHANDLER": "1",
            "NOTIFY_SOCKET": self.notify_address,
            **self.env,
        }
        self.notified()
        self.notifications.clear()
        offset = self.log_offset()
        self.start_failed = False
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                env=env,
                start_new_session=True,  # its own process group: stop() reaps workers too
            )
        try:
            wait_until(
                lambda: self.proc.poll() is not None or "READY=1" in self.notified(),
                timeout=timeout,
                interval=0.01,
            )
        except WaitTimeoutError:
            self.start_failed = True
            self.stop()
            raise PoolerStartError(
                f"pooler was not ready on {HOST}:{self.port} within {patience(timeout):g} s "
                f"({' '.join(argv)})",
                None,
                self.log_text(offset),
            ) from None
        if self.proc.poll() is not None:
            self.start_failed = True
            code = self.proc.returncode
            self._reap_group()
            raise PoolerStartError(
                f"pooler exited with code {code} during start ({' '.join(argv)})",
                code,
                self.log_text(offset),
            )
        return self

    def notified(self) -> list[str]:
        """Every sd_notify line received since the last start, in order."""
        while True:
            try:
                datagram = self._notify_socket.recv(4096)
            except BlockingIOError:
                return self.notifications
            self.notifications.extend(datagram.decode().splitlines())

    def signal(self, sig: int) -> None:
        """Send a signal to the main (supervisor) process."""
        if self.proc is None:
            raise RuntimeError("pooler was not started")
        os.kill(self.proc.pid, sig)

    def reload(self) -> None:
        """SIGHUP: odyssey's (and our) reload signal."""
        self.signal(signal.SIGHUP)

    def wait_exit(self, timeout: float = 10.0) -> int:
        """Wait for the process to exit on its own; return the exit code."""
        if self.proc is None:
            raise RuntimeError("pooler was not started")
        try:
            return self.proc.wait(patience(timeout))
        except subprocess.TimeoutExpired:
            raise WaitTimeoutError(
                f"pooler (pid {self.proc.pid}) still running after {patience(timeout):g} s"
            ) from None

    def stop(self, timeout: float | None = None) -> int | None:
        """SIGTERM, then SIGKILL (whole process group) after ``timeout``; return the exit code.

        Idempotent; any process left in the group afterwards (e.g. a worker) is killed.
        """
        if self.proc is None:
            return None
        timeout = self.stop_timeout if timeout is None else timeout
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._reap_group()
                self.proc.wait()
        self._reap_group()
        return self.proc.returncode

    def _reap_group(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)

    def restart(self, timeout: float | None = None) -> Self:
        """stop() then start() on the same port with the current config file."""
        self.stop()
        return self.start(timeout)

    def close(self) -> None:
        """stop() and give the port back."""
        self.stop()
        self._notify_socket.close()
        if self._own_port:
            release_port(self.port)

    def __enter__(self) -> Self:
        return self.start() if not self.is_running() else self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # logs ------------------------------------------------------------------------------

    def log_offset(self) -> int:
        """Current size of the log; pass it as ``since`` to look only at newer lines."""
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def log_text(self, since: int = 0) -> str:
        try:
            with self.log_path.open("rb") as f:
                f.seek(since)
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def log_contains(self, regex: str | re.Pattern[str], since: int = 0) -> bool:
        """``re.search`` (MULTILINE) over the log from byte ``since``."""
        return self._search(regex, since) is not None

    def _search(self, regex: str | re.Pattern[str], since: int) -> re.Match[str] | None:
        pattern = regex if isinstance(regex, re.Pattern) else re.compile(regex, re.MULTILINE)
        return pattern.search(self.log_text(since))

    def wait_for_log(
        self, regex: str | re.Pattern[str], timeout: float = 10.0, since: int = 0
    ) -> re.Match[str]:
        """Wait until the log (from byte ``since``) matches; return the match."""
        return wait_until(
            lambda: self._search(regex, since),
            timeout=timeout,
            message=lambda: f"{regex!r} in the pooler log:\n{self.log_text(since)[-4000:]}",
        )

    def assert_log_clean(self) -> None:
        """Fail when the log shows a Python traceback."""
        text = self.log_text()
        if "Traceback (most recent call last)" in text:
            raise AssertionError(f"pooler log has a Python traceback:\n{text[-8000:]}")

    # clients ---------------------------------------------------------------------------

    def dsn(
        self,
        dbname: str = "postgres",
        user: str = "postgres",
        password: str | None = None,
        **extra: Any,
    ) -> str:
        """libpq connection string to the pooler."""
        return conninfo(
            host=HOST,
            port=self.port,
            dbname=dbname,
            user=user,
            password=password,
            sslmode=extra.pop("sslmode", "disable"),
            connect_timeout=extra.pop("connect_timeout", round(patience(10))),
            **extra,
        )

    def connect(
        self,
        dbname: str = "postgres",
        user: str = "postgres",
        password: str | None = None,
        *,
        autocommit: bool = True,
        **kw: Any,
    ) -> psycopg.Connection[Any]:
        """A psycopg 3 connection through the pooler (autocommit by default)."""
        return psycopg.connect(self.dsn(dbname, user, password, **kw), autocommit=autocommit)

    async def aconnect(
        self,
        dbname: str = "postgres",
        user: str = "postgres",
        password: str | None = None,
        *,
        autocommit: bool = True,
        **kw: Any,
    ) -> psycopg.AsyncConnection[Any]:
        """An async psycopg 3 connection through the pooler (autocommit by default)."""
        return await psycopg.AsyncConnection.connect(
            self.dsn(dbname, user, password, **kw), autocommit=autocommit
        )

    def sql(
        self,
        query: str,
        params: Sequence[Any] | Mapping[str, Any] | None = None,
        *,
        dbname: str = "postgres",
        user: str = "postgres",
        password: str | None = None,
        **kw: Any,
    ) -> list[tuple[Any, ...]]:
        """Run one query on a fresh connection; return its rows ([] if none)."""
        with self.connect(dbname, user, password, **kw) as conn:
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description else []

    def admin(
        self, query: str, *, dbname: str = "console", user: str = "admin"
    ) -> list[tuple[Any, ...]]:
        """A console command (simple query protocol) as make_config()'s console route."""
        with self.connect(dbname, user) as conn:
            cur = conn.execute(query)
            return cur.fetchall() if cur.description else []

    def __repr__(self) -> str:
        return f"<Pooler port={self.port} pid={self.pid} {self.workdir}>"
