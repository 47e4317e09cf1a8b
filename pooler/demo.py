"""`pooler demo`: a throwaway PostgreSQL plus `pooler serve sample.conf` in front of it.

The PostgreSQL cluster lives in a temp dir (initdb as the ``postgres`` OS user when run as root)
and is made to match the storage of sample.conf: role ``readonly`` (SCRAM) and database
``order`` with a small ``orders`` table. A copy of the config in a temp dir is served (the
dashboard's editor writes to it, never to the file in the checkout); if a port of sample.conf
(PostgreSQL 15432, listen 6432) is taken, the copy uses a free one. The commands printed run
as shown: `pooler` is the path of this installation's script unless that is what PATH finds.
Ctrl-C (or SIGTERM) stops the pooler and PostgreSQL and removes the temp dirs.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from pooler.pgcluster import PgCluster, PgError, PgNotInstalledError, port_is_free
from pooler.sql import quote_ident

SERVE_COMMAND = (sys.executable, "-m", "pooler", "serve")
DEFAULT_PG_PORT = 15432
DEFAULT_LISTEN_PORT = 6432
STORAGE = "order"
ROUTE_DB, ROUTE_USER, ROUTE_PASSWORD = "order_app", "app", "123456"
CONSOLE_DB, CONSOLE_USER = "console", "admin"

SEED_SQL = """
CREATE TABLE orders (id serial PRIMARY KEY, item text NOT NULL, qty int NOT NULL);
INSERT INTO orders (item, qty) VALUES
    ('espresso', 2), ('croissant', 1), ('flat white', 3), ('baguette', 1), ('macaron', 12);
GRANT SELECT ON orders TO {role};
"""

# "port N" inside a block: group 1 is everything before the number.
_STORAGE_PORT = r'(storage\s+"{name}"\s*\{{[^}}]*?\bport\s+)(\d+)'
_LISTEN_PORT = r"(listen\s*\{[^}]*?\bport\s+)(\d+)"


def _option(text: str, key: str, default: str) -> str:
    m = re.search(rf'^\s*{key}\s+"([^"]*)"', text, re.MULTILINE)
    return m.group(1) if m else default


def _port(pattern: str, text: str, default: int) -> int:
    m = re.search(pattern, text)
    return int(m.group(2)) if m else default


def _pick_port(preferred: int) -> int:
    """``preferred`` if free, else the next free port above it (then any free port)."""
    for port in range(preferred, preferred + 200):
        if port < 65536 and port_is_free(port):
            return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int) -> bool:
    return not port_is_free(port)


def default_sample_conf() -> Path:
    """sample.conf: shipped in the package (pooler/sample.conf), else the source tree's root
    (editable install), else the current directory."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "sample.conf", here.parent / "sample.conf", Path("sample.conf")):
        if candidate.is_file():
            return candidate
    return here.parent / "sample.conf"  # run_demo reports it as unreadable


def rewrite_ports(text: str, pg_port: int, listen_port: int) -> str:
    """sample.conf text with the port of storage "order" and of the listen block replaced."""
    text = re.sub(_STORAGE_PORT.format(name=re.escape(STORAGE)), rf"\g<1>{pg_port}", text, count=1)
    return re.sub(_LISTEN_PORT, rf"\g<1>{listen_port}", text, count=1)


def pooler_command() -> str:
    """How to run this installation's `pooler` from a shell: `pooler` when PATH finds this
    one, else the script's path (a venv not activated), else `python -m pooler`."""
    script = Path(sys.executable).parent / "pooler"
    found = shutil.which("pooler")
    if found is not None and script.is_file() and os.path.samefile(found, script):
        return "pooler"
    if script.is_file():
        return shlex.quote(str(script))
    return f"{shlex.quote(sys.executable)} -m pooler"


def psql_command(bindir: Path) -> str:
    """`psql` when PATH has it, else the one next to the PostgreSQL binaries in use."""
    if shutil.which("psql") is not None:
        return "psql"
    return shlex.quote(str(bindir / "psql"))


def _say(text: str = "") -> None:
    print(text, flush=True)


def run_demo(
    sample_conf: Path,
    *,
    echo: Callable[[str], None] = _say,
    serve_command: Sequence[str] | None = None,
) -> int:
    """Run the demo until Ctrl-C/SIGTERM or until `pooler serve` exits; return an exit code.

    ``serve_command`` replaces ``[python, -m, pooler, serve]`` (the config path is appended);
    tests use it.

    0 after Ctrl-C/SIGTERM, the serve process's exit code (or 1) if it stopped on its own,
    1 if PostgreSQL is missing or fails to start.
    """
    sample_conf = Path(sample_conf).resolve()
    try:
        text = sample_conf.read_text()
    except OSError as exc:
        echo(f"pooler demo: cannot read {sample_conf}: {exc}")
        return 1

    storage_re = _STORAGE_PORT.format(name=re.escape(STORAGE))
    want_pg = _port(storage_re, text, DEFAULT_PG_PORT)
    want_listen = _port(_LISTEN_PORT, text, DEFAULT_LISTEN_PORT)
    # The route that uses the storage names the role, password and database (one route).
    storage_user = _option(text, "storage_user", "readonly")
    storage_password = _option(text, "storage_password", "readonly_123")
    storage_db = _option(text, "storage_db", "order")

    def on_signal(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    # SIGINT too: a shell may start us with SIGINT ignored (background job), and then Python
    # would not raise KeyboardInterrupt on Ctrl-C / kill -INT.
    previous: dict[signal.Signals, Any] = {}
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        with contextlib.suppress(ValueError):  # not in the main thread
            previous[sig] = signal.signal(sig, on_signal)

    cluster: PgCluster | None = None
    serve: subprocess.Popen[bytes] | None = None
    tmpdir: Path | None = None
    code = 0
    try:
        pg_port = _pick_port(want_pg)
        listen_port = _pick_port(want_listen)
        if pg_port != want_pg:
            echo(f"port {want_pg} is taken: PostgreSQL will use {pg_port}")
        if listen_port != want_listen:
            echo(f"port {want_listen} is taken: pooler will listen on {listen_port}")
        tmpdir = Path(tempfile.mkdtemp(prefix="pooler-demo-"))
        conf = tmpdir / sample_conf.name
        conf.write_text(rewrite_ports(text, pg_port, listen_port))
        echo(f"serving a copy of {sample_conf}: {conf}")

        echo(f"starting a throwaway PostgreSQL on 127.0.0.1:{pg_port} ...")
        t0 = time.monotonic()
        cluster = PgCluster(pg_port, max_connections=100)
        cluster.start()
        cluster.create_role(storage_user, storage_password, "scram-sha-256")
        cluster.create_database(storage_db)
        cluster.psql(SEED_SQL.format(role=quote_ident(storage_user)), db=storage_db)
        echo(
            f"PostgreSQL ready in {time.monotonic() - t0:.1f} s (data in {cluster.datadir}); "
            f'role "{storage_user}", database "{storage_db}" with table orders'
        )

        argv = [*(serve_command or SERVE_COMMAND), str(conf)]
        pooler = pooler_command()
        echo(f"starting: {pooler} serve {shlex.quote(str(conf))}")
        serve = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
        while serve.poll() is None and not _listening(listen_port):
            time.sleep(0.05)
        if serve.poll() is None:
            echo("")
            psql = psql_command(cluster.bindir)
            quoted = shlex.quote(str(conf))
            echo(f"pooler is listening on 127.0.0.1:{listen_port}. Try:")
            echo(
                f'  {psql} "host=127.0.0.1 port={listen_port} dbname={ROUTE_DB} '
                f'user={ROUTE_USER} password={ROUTE_PASSWORD}" -c "select * from orders"'
            )
            echo(
                f'  {psql} "host=127.0.0.1 port={listen_port} dbname={CONSOLE_DB} '
                f'user={CONSOLE_USER}" -c "show pools"'
            )
            echo(f"  {pooler} tui {quoted}")
            echo(f"  {pooler} reload {quoted}")
            echo(
                f"  (PostgreSQL directly: {psql} "
                f'"{cluster.dsn(storage_db, storage_user, storage_password)}")'
            )
            echo("Press Ctrl-C to stop and remove everything.")
            echo("")
            serve.wait()
        rc = serve.returncode
        code = rc if rc > 0 else (0 if rc == 0 else 1)
        echo(f"pooler serve exited with code {rc}; stopping the demo")
    except KeyboardInterrupt:
        echo("")
        echo("stopping the demo ...")
        code = 0
    except PgNotInstalledError as exc:
        echo(f"pooler demo: {exc}")
        code = 1
    except PgError as exc:
        echo(f"pooler demo: PostgreSQL failed: {exc}")
        code = 1
    finally:
        # Cleanup must not be cut short by a second Ctrl-C.
        with contextlib.suppress(ValueError):
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            if serve is not None and serve.poll() is None:
                serve.terminate()
                try:
                    serve.wait(10)
                except subprocess.TimeoutExpired:
                    serve.kill()
                    serve.wait()
            if cluster is not None:
                cluster.remove()
            if tmpdir is not None:
                shutil.rmtree(tmpdir, ignore_errors=True)
            if cluster is not None or tmpdir is not None:
                echo("demo stopped; temp files removed")
        finally:
            with contextlib.suppress(ValueError, TypeError):
                for sig, handler in previous.items():
                    signal.signal(sig, handler)
    return code
