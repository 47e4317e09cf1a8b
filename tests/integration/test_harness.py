"""The test harness itself: waiting, ports, config rendering and the Pooler process wrapper.

Most tests drive a tiny fake server (FAKE_SERVER below) instead of `pooler serve`, so they check
the harness, not the proxy. `test_serve_exit_at_start_is_reported` runs the real `pooler serve`.
"""

from __future__ import annotations

import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import psycopg
import pytest
from harness import (
    PORT_RANGE,
    Pooler,
    PoolerStartError,
    WaitTimeoutError,
    free_port,
    is_listening,
    make_config,
    release_port,
    require_pg,
    route,
    storage,
    wait_until,
)

from pooler.pgcluster import PgCluster, port_is_free

FAKE_SERVER = r"""
import os, re, signal, socket, sys, time
conf = open(sys.argv[1]).read()
print("fake server starting", flush=True)
if "CRASH" in conf:
    print("error: bad config", flush=True)
    sys.exit(3)
if "NOLISTEN" in conf:
    time.sleep(120)
port = int(re.search(r"listen\s*\{[^}]*?port\s+(\d+)", conf).group(1))
sock = socket.socket()
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.bind(("127.0.0.1", port))
sock.listen()
signal.signal(signal.SIGHUP, lambda *a: print("reloaded", flush=True))
if "IGNORE_TERM" in conf:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
else:
    signal.signal(signal.SIGTERM, lambda *a: (print("terminating", flush=True), sys.exit(0)))
print(f"listening on {port}", flush=True)
if os.environ.get("NOTIFY_SOCKET", "").startswith("@"):  # sd_notify, as pooler serve does
    socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(
        b"READY=1", "\0" + os.environ["NOTIFY_SOCKET"][1:]
    )
if "TRACEBACK" in conf:
    print("Traceback (most recent call last):\n  ...\nRuntimeError: kaboom", flush=True)
while True:
    signal.pause()
"""


@pytest.fixture
def fake_command(tmp_path: Path) -> list[str]:
    script = tmp_path / "fake_server.py"
    script.write_text(FAKE_SERVER)
    return [sys.executable, str(script), "{config}"]


@pytest.fixture
def fake(tmp_path: Path, fake_command: list[str]):
    """A factory of Pooler objects around the fake server; all closed at teardown."""
    made: list[Pooler] = []

    def factory(config: str = "", **kw) -> Pooler:
        p = Pooler(
            tmp_path / f"fake{len(made)}", make_config() + config, command=fake_command, **kw
        )
        made.append(p)
        return p

    yield factory
    for p in made:
        p.close()


# -- wait_until / ports -----------------------------------------------------------------


def test_wait_until_returns_the_truthy_value() -> None:
    calls = []

    def pred():
        calls.append(1)
        return len(calls) >= 3 and "done"

    assert wait_until(pred, timeout=5, interval=0.001) == "done"
    assert len(calls) == 3


def test_wait_until_times_out_with_message() -> None:
    with pytest.raises(WaitTimeoutError, match="the moon"):
        wait_until(lambda: False, timeout=0.05, message="the moon")
    with pytest.raises(WaitTimeoutError, match="lazy 42"):
        wait_until(lambda: None, timeout=0.05, message=lambda: "lazy 42")


def test_free_port_gives_distinct_bindable_ports() -> None:
    ports = [free_port() for _ in range(20)]
    try:
        assert len(set(ports)) == 20
        assert all(20000 <= p < 32000 for p in ports)
        for p in ports:
            with socket.socket() as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(("127.0.0.1", p))
    finally:
        for p in ports:
            release_port(p)


def test_free_port_is_exclusive_across_processes() -> None:
    # Another process (as another xdist worker would) never gets a port we hold.
    held = [free_port() for _ in range(5)]
    try:
        code = (
            "import sys; sys.path.insert(0, %r); import os;"
            "os.environ['PYTEST_XDIST_WORKER'] = 'gw0';"
            "import harness; harness._cursor = %d;"
            "print(harness.free_port())"
        )
        tests_dir = str(Path(__file__).resolve().parents[1])
        cursor = held[0] - PORT_RANGE[0]  # its walk starts exactly at our first held port
        out = subprocess.run(
            [sys.executable, "-c", code % (tests_dir, cursor)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert int(out) not in held
    finally:
        for p in held:
            release_port(p)


# -- config rendering -------------------------------------------------------------------


def test_make_config_default_shape() -> None:
    text = make_config()
    assert 'log_format "%p %t %l [%i %s] (%c) %m\\n"' in text
    assert "log_to_stdout yes" in text
    assert "workers 1" in text
    assert 'listen {\n\thost "127.0.0.1"\n\tport {port}\n}' in text
    assert (
        'storage "postgres_server" {\n\ttype "remote"\n\thost "127.0.0.1"\n\tport {pg_port}\n}'
        in text
    )
    assert 'database default {\n\tuser default {\n\t\tauthentication "none"' in text
    assert 'database "console" {\n\tuser "admin" {' in text


def test_make_config_overrides() -> None:
    text = make_config(
        [route("p0", "scram_user", authentication="scram-sha-256", password="pw", pool_size=2)],
        storages=[storage(), storage("other", port=5433)],
        console=False,
        workers=2,
        log_debug=True,
        log_to_stdout=None,
    )
    assert "workers 2" in text and "log_debug yes" in text
    assert "log_to_stdout" not in text and "console" not in text
    assert "\tport 5433" in text
    assert 'database "p0" {\n\tuser "scram_user" {' in text
    assert "\t\tpool_size 2\n" in text and '\t\tpassword "pw"\n' in text


def test_placeholders_are_rendered(tmp_path: Path) -> None:
    p = Pooler(tmp_path, make_config() + "# {workdir}\n", pg_port=5999)
    try:
        text = p.config_path.read_text()
        assert f"port {p.port}\n" in text and "port 5999\n" in text
        assert f"# {tmp_path}" in text and "{port}" not in text
    finally:
        p.close()


def test_make_config_passes_pooler_check(tmp_path: Path) -> None:
    conf = tmp_path / "t.conf"
    conf.write_text(make_config().replace("{port}", "6432").replace("{pg_port}", "5432"))
    proc = subprocess.run(
        [sys.executable, "-m", "pooler", "check", str(conf)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


# -- the Pooler process wrapper (fake server) -------------------------------------------


def test_start_waits_until_listening_then_stop(fake) -> None:
    p = fake().start()
    assert p.is_running() and is_listening(p.port)
    assert p.log_contains(rf"^listening on {p.port}$")
    assert p.stop() == 0
    assert not p.is_running() and not is_listening(p.port)
    assert p.log_contains("terminating")


def test_signal_and_wait_for_log(fake) -> None:
    p = fake().start()
    mark = p.log_offset()
    p.reload()
    assert p.wait_for_log("reloaded", since=mark).group() == "reloaded"
    assert not p.log_contains("listening", since=mark)
    with pytest.raises(WaitTimeoutError, match="never-printed"):
        p.wait_for_log("never-printed", timeout=0.1)


def test_restart_gives_a_new_process_on_the_same_port(fake) -> None:
    p = fake().start()
    pid, port = p.pid, p.port
    p.restart()
    assert p.pid != pid and p.port == port and is_listening(port)
    assert len(p.log_text().split("listening on")) == 3  # log is appended across restarts


def test_stop_escalates_to_sigkill(fake) -> None:
    p = fake("# IGNORE_TERM\n").start()
    assert p.stop(timeout=0.3) == -signal.SIGKILL


def test_exit_during_start_raises_with_log(fake) -> None:
    p = fake("# CRASH\n")
    with pytest.raises(PoolerStartError, match=r"(?s)exited with code 3.*error: bad config") as ei:
        p.start()
    assert ei.value.returncode == 3
    assert "error: bad config" in ei.value.log
    assert p.start_failed


def test_no_listen_within_timeout_raises(fake) -> None:
    p = fake("# NOLISTEN\n", start_timeout=0.3)
    with pytest.raises(PoolerStartError, match="was not ready") as ei:
        p.start()
    assert ei.value.returncode is None
    assert "fake server starting" in ei.value.log
    assert not p.is_running()


def test_assert_log_clean_finds_tracebacks(fake) -> None:
    clean = fake().start()
    clean.assert_log_clean()
    dirty = fake("# TRACEBACK\n").start()
    dirty.wait_for_log("kaboom")
    with pytest.raises(AssertionError, match="RuntimeError: kaboom"):
        dirty.assert_log_clean()


# -- the fixtures -----------------------------------------------------------------------


@pytest.mark.pg
def test_pg_fixture(pg: PgCluster) -> None:
    assert pg.psql("show max_connections") == "300"
    assert pg.psql("select datname from pg_database where datname like 'p_' order by 1") == (
        "p0\np1\np2"
    )
    assert pg.psql("select count(*) from pgbench_accounts", db="p0") == "100000"
    users = pg.psql("select rolname from pg_roles where rolname like '%\\_user' order by 1")
    assert users.split() == ["md5_user", "plain_user", "scram_user"]


@pytest.mark.pg
def test_pooler_fixture_renders_pg_port(pooler, pg: PgCluster, fake_command: list[str]) -> None:
    p = pooler(command=fake_command)
    assert f"\tport {pg.port}\n" in p.config_path.read_text()
    assert p.is_running()


@pytest.mark.pg
def test_serve_exit_at_start_is_reported(pooler) -> None:
    """A config error makes `pooler serve` exit 1 before listening; the fixture says so with
    the exit code and the log, which names the problem."""
    bad = make_config(route(storage="no_such_storage"))
    with pytest.raises(PoolerStartError) as ei:
        pooler(bad)
    assert ei.value.returncode == 1, ei.value.log
    assert "no_such_storage" in ei.value.log
    assert "Traceback" not in ei.value.log


# -- `pooler demo` (pooler.demo.run_demo) -----------------------------------------------

SAMPLE_CONF = Path(__file__).resolve().parents[2] / "sample.conf"


def test_demo_rewrites_ports() -> None:
    from pooler.demo import rewrite_ports

    text = SAMPLE_CONF.read_text()
    assert re.search(r"^\tport 15432$", text, re.M) and re.search(r"^\tport 6432$", text, re.M)
    new = rewrite_ports(text, 25001, 25002)
    assert re.search(r'storage "order" \{[^}]*\bport 25001\n', new)
    assert re.search(r"listen \{[^}]*\bport 25002\n", new)
    assert "15432\n" not in new and "port 6432" not in new
    assert new.count("\n") == text.count("\n")


@pytest.mark.pg
def test_demo_runs_and_cleans_up_on_ctrl_c(tmp_path: Path, fake_command: list[str]) -> None:
    """run_demo with a fake `serve`: PostgreSQL gets role/db/table of sample.conf, the psql
    hints are printed, and SIGINT stops everything and removes the temp dir."""
    from pooler.demo import rewrite_ports

    require_pg()
    pg_port, listen_port = free_port(), free_port()
    conf = tmp_path / "sample.conf"
    conf.write_text(rewrite_ports(SAMPLE_CONF.read_text(), pg_port, listen_port))
    code = (
        "import sys; from pathlib import Path; from pooler.demo import run_demo;"
        f"sys.exit(run_demo(Path({str(conf)!r}), serve_command={fake_command[:-1]!r}))"
    )
    # The ports are ours (flock), so the demo must be able to bind them.
    release_port(pg_port)
    release_port(listen_port)
    proc = subprocess.Popen(
        [sys.executable, "-u", "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        wait_until(
            lambda: any("Press Ctrl-C" in line for line in lines) or proc.poll() is not None,
            timeout=30,
            message=lambda: "the demo banner:\n" + "".join(lines),
        )
        out = "".join(lines)
        assert proc.poll() is None, out
        assert (
            f'psql "host=127.0.0.1 port={listen_port} dbname=order_app user=app password=123456"'
            in out
        )
        assert f'psql "host=127.0.0.1 port={listen_port} dbname=console user=admin"' in out
        # the commands run as printed (issue 17): the pooler command of this installation, a
        # copy of the config (the dashboard's editor must not rewrite the user's file)
        tui_line = next(line for line in lines if " tui " in line)
        argv = shlex.split(tui_line)
        assert argv[1] == "tui" and Path(argv[2]) != conf
        assert Path(argv[2]).read_text() == conf.read_text()
        helped = subprocess.run([*argv[:2], "--help"], capture_output=True, text=True, timeout=30)
        assert helped.returncode == 0 and "[CONFIG]" in helped.stdout, helped
        reload_line = next(line for line in lines if " reload " in line)
        assert shlex.split(reload_line) == [argv[0], "reload", argv[2]]
        dsn = re.search(r'PostgreSQL directly: psql "([^"]+)"', out).group(1)
        assert f"port={pg_port}" in dsn and "user=readonly" in dsn
        with psycopg.connect(dsn) as conn:
            assert conn.execute("select count(*) from orders").fetchone() == (5,)
        datadir = Path(re.search(r"data in (\S+)\)", out).group(1))
        assert datadir.exists()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
        reader.join(5)
        out = "".join(lines)
        assert "demo stopped; temp files removed" in out, out
        assert not datadir.exists() and not Path(argv[2]).exists()
        assert conf.read_text() == rewrite_ports(SAMPLE_CONF.read_text(), pg_port, listen_port)
        assert port_is_free(pg_port) and port_is_free(listen_port)
    finally:
        if proc.poll() is None:  # a failed assertion: the demo still cleans up after itself
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.mark.pg
def test_demo_reports_serve_exit(tmp_path: Path) -> None:
    from pooler.demo import rewrite_ports, run_demo

    require_pg()
    pg_port, listen_port = free_port(), free_port()
    release_port(pg_port)
    release_port(listen_port)
    conf = tmp_path / "sample.conf"
    conf.write_text(rewrite_ports(SAMPLE_CONF.read_text(), pg_port, listen_port))
    out: list[str] = []
    code = run_demo(
        conf,
        echo=out.append,
        serve_command=[sys.executable, "-c", "import sys; print('no serve'); sys.exit(4)"],
    )
    assert code == 4
    assert "pooler serve exited with code 4; stopping the demo" in out
    assert out[-1] == "demo stopped; temp files removed"
    assert port_is_free(pg_port)
