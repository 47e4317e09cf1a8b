"""Odyssey configs as they are: where pooler used to behave differently from odyssey 1.5.3 on
the same config and clients (issue 18, "behaviour that differs from odyssey")."""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

import psycopg
import pytest
from harness import (
    HOST,
    PoolerStartError,
    free_port,
    make_config,
    release_port,
    route,
    storage,
    wait_until,
)
from test_supervisor import worker_pids
from wire import error_fields, read_until, startup_packet


def local_port(conn) -> int:
    """The client-side port of a psycopg connection (what the pooler sees as the peer's)."""
    with socket.socket(fileno=os.dup(conn.fileno())) as sock:
        return sock.getsockname()[1]


def test_unopenable_log_file_is_one_error_line_naming_it(pooler):
    p = pooler(make_config(log_file="{workdir}/no/such/dir/pooler.log"), start=False)
    with pytest.raises(PoolerStartError) as failed:
        p.start()
    assert failed.value.returncode == 3  # a start-up failure (SPEC exit codes)
    log = failed.value.log
    assert "Traceback" not in log
    assert f"failed to open log file '{p.workdir}/no/such/dir/pooler.log'" in log


def test_internal_rule_beside_the_client_rule_for_the_same_user(pooler):
    """The common odyssey pattern: an internal rule for auth_query/watchdog and the client rule
    for the same user. Clients go to the client-visible one."""
    internal = route("p0", "postgres", pool="session", pool_routing="internal")
    visible = route("p0", "postgres", pool="transaction")
    p = pooler(make_config([internal, visible]))
    assert p.sql("select current_database()", dbname="p0") == [("p0",)]
    assert p.log_contains(r"route 'p0\.postgres' to 'p0\.postgres'")
    assert not p.log_contains("is redefined")


@pytest.mark.parametrize("pool", ["session", "transaction"])
def test_application_name_add_host(pooler, pool):
    """odyssey 1.5.3: `AAA - 127.0.0.1:PORT` on the server, and reported to the client."""
    p = pooler(make_config(route("p0", "postgres", pool=pool, application_name_add_host=True)))
    with p.connect("p0", application_name="AAA") as conn:
        expected = f"AAA - 127.0.0.1:{local_port(conn)}"
        row = conn.execute(
            "select application_name from pg_stat_activity where pid = pg_backend_pid()"
        ).fetchone()
        assert row == (expected,)
        assert conn.execute("show application_name").fetchone() == (expected,)
        assert conn.info.parameter_status("application_name") == expected
    with p.connect("p0") as conn:  # none given: "unknown"
        assert (
            conn.execute("show application_name").fetchone()[0].startswith("unknown - 127.0.0.1:")
        )


@pytest.fixture
def login_warning(pg):
    """PostgreSQL WARNs at every login of postgres into p2 (an invalid per-role setting)."""
    pg.psql("alter role postgres in database p2 set default_tablespace = 'nosuch'")
    try:
        yield 'invalid value for parameter "default_tablespace": "nosuch"'
    finally:
        pg.psql("alter role postgres in database p2 reset default_tablespace")


def login_messages(p, database: str) -> list[tuple[int, bytes]]:
    with socket.create_connection((HOST, p.port), timeout=10) as sock:
        sock.sendall(startup_packet("postgres", database))
        return read_until(sock, b"ZE", timeout=10)


@pytest.mark.parametrize("pool", ["session", "transaction"])
def test_login_warning_of_the_server_is_passed_on(pooler, login_warning, pool):
    """A WARNING PostgreSQL sends at login reaches the client whose login opened that server,
    in session and transaction pools (odyssey 1.5.3 does the same)."""
    p = pooler(make_config(route("p2", "postgres", pool=pool)))
    found = login_messages(p, "p2")
    assert found[-1][0] == ord("Z")
    notices = [error_fields(body) for kind, body in found if kind == ord("N")]
    assert [(n["S"], n["M"]) for n in notices] == [("WARNING", login_warning)]


def test_min_pool_size_servers_open_at_start_and_on_a_raising_reload(pooler, pg):
    """odyssey pre-opens min_pool_size servers without waiting for a client; with several
    workers they open that many between them (odyssey's pool is one per process)."""
    where = "datname = 'p1' and usename = 'postgres' and backend_type = 'client backend'"

    def servers() -> int:
        return int(pg.psql(f"select count(*) from pg_stat_activity where {where}").split()[-1])

    def config(size: int) -> str:
        rule = route("p1", "postgres", pool="transaction", pool_size=8, min_pool_size=size)
        return make_config(rule, workers=2)

    p = pooler(config(3))
    wait_until(lambda: servers() == 3, timeout=10, message="3 servers opened at start")
    p.write_config(config(5))
    p.reload()
    wait_until(lambda: servers() == 5, timeout=10, message="5 servers after the reload")
    assert p.sql("select 1", dbname="p1") == [(1,)]
    assert servers() == 5


def test_sigterm_right_after_a_reload_that_adds_workers_exits_at_once(pooler):
    """With no client, a graceful shutdown has nothing to wait for, even when it comes while a
    worker that the reload added is starting (that worker used to miss the shutdown order and
    was killed after graceful_shutdown_timeout_ms, 30 s, plus the kill grace)."""
    p = pooler(make_config(route(pool="transaction"), workers=1))
    p.write_config(make_config(route(pool="transaction"), workers=2))
    p.reload()
    p.signal(signal.SIGTERM)
    assert p.wait_exit(timeout=15) == 0
    assert p.log_contains(r"worker 1 started")


@pytest.mark.parametrize("pool", ["session", "transaction"])
def test_listen_storage_list_is_the_fallback_when_the_rules_storage_is_down(pooler, pool):
    """listen { storage "up" }: clients of that listener whose rule's storage cannot be
    reached are served by the listed storages, in order (odyssey master)."""
    down = free_port()  # nothing listens there
    try:
        config = make_config(
            route("p0", "postgres", storage="down", pool=pool, pool_size=2),
            storages=[storage("down", port=down), storage("up")],
            listen={"storage": "up"},
        )
        p = pooler(config)
        assert p.sql("select current_database()", dbname="p0") == [("p0",)]
        assert p.log_contains("trying fallback storage 'up'")
    finally:
        release_port(down)


@pytest.mark.parametrize("pool", ["session", "transaction"])
def test_virtual_processing_answers_odyssey_target_session_attrs(pooler, pool):
    p = pooler(make_config(route("p0", "postgres", pool=pool), virtual_processing=True))
    with p.connect("p0") as conn:
        notices: list[str] = []
        conn.add_notice_handler(lambda diag: notices.append(diag.message_primary or ""))
        assert conn.execute("show odyssey.target_session_attrs").fetchone() == ("any",)
        # (read-write: the only host is a primary, and the value steers the next servers)
        conn.execute("SET odyssey.target_session_attrs TO 'read-write'")
        assert conn.execute("SHOW odyssey.target_session_attrs").fetchone() == ("read-write",)
        with pytest.raises(psycopg.errors.InvalidParameterValue) as refused:
            conn.execute("set odyssey.target_session_attrs = 'bad'")
        assert 'invalid value for parameter "odyssey.target_session_attrs": "bad"' in str(
            refused.value
        )
        assert notices == ["processed virtually by pooler"] * 4
        with conn.transaction():  # answered inside a transaction too, its status kept
            conn.execute("select 1")
            assert conn.execute("show odyssey.target_session_attrs").fetchone() == ("read-write",)
            assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        assert conn.execute("select 2").fetchone() == (2,)


def test_set_application_name_gets_the_host_added(pooler):
    """odyssey rewrites `SET application_name` under application_name_add_host: the address
    is added (without the port it adds at login)."""
    p = pooler(make_config(route("p0", "postgres", application_name_add_host=True)))
    with p.connect("p0", application_name="AAA") as conn:
        conn.execute("set application_name = 'BBB'")
        assert conn.execute("show application_name").fetchone() == ("BBB - 127.0.0.1",)


def test_max_sigterms_to_die(pooler):
    """The max_sigterms_to_die-th SIGTERM ends the pooler at once with exit code 1, while the
    graceful shutdown of the first is still waiting for a transaction (odyssey)."""
    p = pooler(make_config(route("p0", "postgres", pool="transaction"), max_sigterms_to_die=2))
    conn = p.connect("p0")
    conn.execute("begin")
    conn.execute("select 1")  # a transaction the graceful shutdown waits for (30 s)
    p.signal(signal.SIGTERM)
    p.wait_for_log("termination signal received, shutting down")
    assert p.is_running()
    p.signal(signal.SIGTERM)
    assert p.wait_exit(timeout=10) == 1
    assert p.log_contains(r"termination signal received 2 times \(max_sigterms_to_die 2\)")
    wait_until(lambda: not worker_pids(p.pid), timeout=10)
    conn.close()


def test_priority_is_the_nice_value_of_supervisor_and_workers(pooler):
    p = pooler(make_config(route("p0", "postgres"), priority=5))

    def nice(pid: int) -> int:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat[stat.rindex(")") + 2 :].split()[16])  # field 19: nice

    workers = wait_until(lambda: worker_pids(p.pid))
    assert [nice(pid) for pid in [p.pid, *workers]] == [5] * (1 + len(workers))
