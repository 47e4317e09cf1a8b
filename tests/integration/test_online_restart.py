"""Online restart (issue 18 item 8): SIGUSR2 with `enable_online_restart` (the default) starts
a new `pooler serve` on the same command line; it takes over the listen sockets and the
control socket, and the old process drains and exits. No login refused, no transaction cut.
Real PostgreSQL, real `pooler serve`, pgbench and psycopg clients."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import threading
import urllib.request
from pathlib import Path

import psycopg
import pytest
from harness import HOST, free_port, make_config, release_port, route, wait_until
from test_supervisor import worker_pids

from pooler.control.client import ControlClient, default_control_path

pytestmark = pytest.mark.timeout(300)

HANDED = re.compile(r"new process pid (\d+) serves; this process \(pid (\d+)\)")


def config(pool: str = "transaction", **extra: object) -> str:
    extra.setdefault("workers", 2)
    extra.setdefault("graceful_shutdown_timeout_ms", 30000)
    return make_config(route(pool=pool, pool_size=4), **extra)


def handed_over(p, since: int = 0) -> int:
    """Wait for the old process's hand-over line; the new process's pid."""
    wait_until(lambda: HANDED.search(p.log_text(since)) or p.returncode is not None, timeout=20)
    match = HANDED.search(p.log_text(since))
    assert match, (
        f"pooler exited with {p.returncode}, no new process took over:\n"
        + p.log_text(since)[-3000:]
    )
    return int(match.group(1))


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"


def stop_new(pid: int) -> None:
    """SIGTERM the new process (the fixture only knows the old one) and wait for it."""
    if alive(pid):
        os.kill(pid, signal.SIGTERM)
        wait_until(lambda: not alive(pid), timeout=30)


class Loop:
    """Threads each looping: log in, run one short transaction, log out. A failed login is a
    refused login; an error after it is a cut transaction."""

    def __init__(self, dsn: str, threads: int = 3) -> None:
        self.dsn = dsn
        self.refused: list[str] = []
        self.cut: list[str] = []
        self.done = 0
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                conn = psycopg.connect(self.dsn, connect_timeout=10)
            except psycopg.Error as exc:
                with self._lock:
                    self.refused.append(str(exc))
                continue
            try:
                with conn.transaction():
                    conn.execute("select pg_backend_pid()")
                    conn.execute("select count(*) from pg_class")
                    conn.execute("select 1")
                with self._lock:
                    self.done += 1
            except psycopg.Error as exc:
                with self._lock:
                    self.cut.append(str(exc))
            finally:
                conn.close()

    def __enter__(self) -> Loop:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(30)

    def at_least(self, count: int) -> None:
        wait_until(lambda: self.done >= count, timeout=20)


def test_restart_under_load_refuses_no_login_and_cuts_no_transaction(pooler, pg):
    p = pooler(config())
    old = p.pid
    old_workers = worker_pids(old)
    # a new connection per transaction (-C), 2 clients x 400 TPC-B transactions at 40/s
    load = ["-n", "-C", "-c", "2", "-j", "2", "-R", "40", "-t", "400", "-P", "1", "p0"]
    pgbench = subprocess.Popen(
        [str(pg.binary("pgbench")), "-h", HOST, "-p", str(p.port), "-U", "postgres", *load],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        with Loop(p.dsn("p0")) as loop:
            loop.at_least(20)
            since = p.log_offset()
            p.signal(signal.SIGUSR2)
            new = handed_over(p, since)
            assert p.wait_exit(timeout=30) == 0  # the old one drained and left
            assert not any(alive(pid) for pid in old_workers)
            after = loop.done
            loop.at_least(after + 20)  # logins and transactions on the new process alone
            assert pgbench.poll() is None, "pgbench ended before the hand-over was over"
        out, _ = pgbench.communicate(timeout=120)
        print(f"psycopg loop: {loop.done} transactions, {after} before the old one exited")
        print(out[-600:])
        assert loop.refused == [] and loop.cut == [], (loop.refused, loop.cut)
        assert pgbench.returncode == 0, out
        assert "number of failed transactions: 0 " in out, out
        assert "aborted" not in out, out
        assert re.search(r"number of transactions actually processed: 800/800", out), out
        assert alive(new) and len(worker_pids(new)) == 2
    finally:
        if pgbench.poll() is None:
            pgbench.kill()
            pgbench.wait()
    stop_new(new)


def test_open_transaction_finishes_and_the_client_is_told_at_its_boundary(pooler):
    p = pooler(config())
    conn = p.connect("p0")
    conn.execute("begin")
    conn.execute("create temp table t (x int)")  # (pins nothing: transaction pool)
    since = p.log_offset()
    p.signal(signal.SIGUSR2)
    new = handed_over(p, since)
    p.wait_for_log(r"worker \d drains 1 clients", since=since)  # (its worker: the others 0)
    conn.execute("insert into t values (1)")
    assert conn.execute("select count(*) from t").fetchone() == (1,)
    conn.execute("commit")  # the transaction opened before the hand-over ends normally
    # at that boundary the old process lets it go, with why (FATAL 08006; whether the client
    # reads it before the connection's end depends on the network: libpq may see the reset)
    p.wait_for_log(r"pooler is restarting \(online restart\), connect again", since=since)
    with pytest.raises(psycopg.OperationalError):
        conn.execute("select 1")
    assert p.wait_exit(timeout=30) == 0
    assert p.sql("select 1", dbname="p0") == [(1,)]  # the new process serves
    stop_new(new)


def test_control_socket_answers_the_new_process(pooler):
    p = pooler(config())
    control = default_control_path(p.config_path)
    wait_until(control.exists)

    async def status_pid() -> int:
        async with ControlClient(control) as client:
            return (await client.status()).pid

    assert asyncio.run(status_pid()) == p.pid
    since = p.log_offset()
    p.notified()
    p.notifications.clear()
    p.signal(signal.SIGUSR2)
    new = handed_over(p, since)
    assert asyncio.run(status_pid()) == new
    # systemd (from the old process, the main pid until then): the service goes on, its
    # main pid is the new process; never STOPPING=1
    wait_until(lambda: f"MAINPID={new}" in p.notified())
    assert "READY=1" in p.notified() and "STOPPING=1" not in p.notified()
    assert p.wait_exit(timeout=30) == 0
    assert control.exists()  # the old one's exit left the new one's socket in place
    assert asyncio.run(status_pid()) == new
    stop_new(new)


def test_failing_new_process_leaves_the_old_one_serving(pooler):
    p = pooler(config())
    workers = worker_pids(p.pid)
    good = p.config_path.read_text()
    p.write_config(good.replace("pool_size 4", "pool_size x"))
    since = p.log_offset()
    p.signal(signal.SIGUSR2)
    line = p.wait_for_log(r"online restart failed: new process \(pid \d+\) (.*)", since=since)
    assert "invalid config" in line.group(1) and "pool_size" in line.group(1)
    assert "goes on serving" in line.group(0)
    assert p.is_running() and worker_pids(p.pid) == workers
    assert p.sql("select 1", dbname="p0") == [(1,)]
    p.write_config(good)  # fixed: the next SIGUSR2 hands over
    since = p.log_offset()
    p.signal(signal.SIGUSR2)
    new = handed_over(p, since)
    assert p.wait_exit(timeout=30) == 0
    stop_new(new)


def test_second_sigusr2_during_a_restart_is_ignored(pooler):
    p = pooler(config())
    since = p.log_offset()
    p.signal(signal.SIGUSR2)
    p.wait_for_log(r"new process started, pid", since=since)
    p.signal(signal.SIGUSR2)
    p.wait_for_log("online restart signal ignored - a new process is starting already", since=since)
    new = handed_over(p, since)
    assert p.wait_exit(timeout=30) == 0
    assert len(re.findall(r"new process started", p.log_text(since))) == 1
    assert p.sql("select 1", dbname="p0") == [(1,)]
    stop_new(new)


def test_sigusr2_with_online_restart_off_is_ignored(pooler):
    p = pooler(config(enable_online_restart=False))
    workers = worker_pids(p.pid)
    since = p.log_offset()
    os.killpg(p.pid, signal.SIGUSR2)  # the whole group: workers must not die of it either
    p.wait_for_log("online restart signal ignored - feature is disabled in config", since=since)
    assert p.is_running() and worker_pids(p.pid) == workers
    assert p.sql("select 1", dbname="p0") == [(1,)]
    assert "new process" not in p.log_text(since)


def test_session_clients_stay_until_they_leave_with_drop_disabled(pooler):
    """`conn_drop_options { drop_enabled no }` (odyssey's online-restart test): a session
    client of the old process keeps its session until it leaves; new logins go to the new
    process meanwhile."""
    text = config("session").replace(
        "\nlisten {", "\nconn_drop_options {\n\tdrop_enabled no\n}\n\nlisten {", 1
    )
    p = pooler(text)
    conn = p.connect("p0")
    conn.execute("set application_name = 'kept'")
    since = p.log_offset()
    p.signal(signal.SIGUSR2)
    new = handed_over(p, since)
    with p.connect("p0") as other:
        assert other.execute("select 1").fetchone() == (1,)
    assert p.is_running()
    assert conn.execute("show application_name").fetchone() == ("kept",)
    p.signal(signal.SIGUSR2)  # to the draining one: the new process is the one to signal
    p.wait_for_log(rf"signal ignored - this process \(pid {p.pid}\) handed over to pid {new}")
    assert len(re.findall(r"new process started", p.log_text(since))) == 1
    conn.close()
    assert p.wait_exit(timeout=30) == 0  # its last client left: it exits
    stop_new(new)


def test_pid_file_and_metrics_are_the_new_process_after(pooler):
    """pid_file names the new process (the old one's exit leaves it alone) and /metrics
    (promhttp_server_port) is served by the new process once the old one is gone."""
    port = free_port()
    try:
        p = pooler(config(pid_file="{workdir}/pooler.pid", promhttp_server_port=port))
        pid_file = p.workdir / "pooler.pid"
        assert pid_file.read_text().strip() == str(p.pid)
        since = p.log_offset()
        p.signal(signal.SIGUSR2)
        new = handed_over(p, since)
        assert p.wait_exit(timeout=30) == 0
        assert pid_file.read_text().strip() == str(new)
        assert "cannot serve /metrics" not in p.log_text(since)
        with urllib.request.urlopen(f"http://{HOST}:{port}/metrics", timeout=5) as reply:
            assert reply.status == 200 and b"pooler_" in reply.read()
        stop_new(new)
        assert not pid_file.exists()  # the new one removes its own at exit
    finally:
        release_port(port)


def test_idle_session_client_is_let_go_at_the_drop_rate(pooler):
    """Default `conn_drop_options` (drop_enabled yes, rate 1, interval_ms 1000): a session
    client idle a whole interval is let go with the reason, and the old process exits."""
    p = pooler(config("session"))
    conn = p.connect("p0")
    assert conn.execute("select 1").fetchone() == (1,)
    since = p.log_offset()
    p.signal(signal.SIGUSR2)
    new = handed_over(p, since)
    p.wait_for_log(r"pooler is restarting \(online restart\), connect again", since=since)
    assert p.wait_exit(timeout=30) == 0
    with pytest.raises(psycopg.OperationalError):
        conn.execute("select 1")
    conn.close()
    stop_new(new)


def test_virtual_begin_is_a_transaction_the_drain_does_not_cut(pooler):
    """`virtual_transaction yes`: a BEGIN answered by the pooler leaves the client holding no
    server, yet it is in a transaction: the drain must not let it go as idle. The witness, an
    idle client on the same worker, shows the idle drop ran meanwhile."""
    text = make_config(
        route(pool="transaction", pool_size=4),
        workers=1,
        virtual_transaction=True,
        graceful_shutdown_timeout_ms=30000,
    ).replace("\nlisten {", "\nconn_drop_options {\n\trate 10\n\tinterval_ms 100\n}\n\nlisten {", 1)
    p = pooler(text)
    witness = p.connect("p0")
    assert witness.execute("select 1").fetchone() == (1,)
    conn = p.connect("p0")
    conn.execute("begin")  # answered virtually
    since = p.log_offset()
    p.signal(signal.SIGUSR2)
    new = handed_over(p, since)
    p.wait_for_log(r"pooler is restarting \(online restart\), connect again", since=since)
    with pytest.raises(psycopg.OperationalError):
        witness.execute("select 1")  # the idle one was let go
    assert conn.execute("select 2").fetchone() == (2,)  # the open one was not
    conn.execute("commit")
    assert p.wait_exit(timeout=30) == 0
    conn.close()
    witness.close()
    stop_new(new)
