"""Keys that odyssey configs set and pooler named `accepted, not implemented` until the corpus
sweep (issue 18): storage `balancing { show_notice_messages }`, route `pool_attach_check`."""

from __future__ import annotations

import os
import signal
import socket
import struct
from pathlib import Path

import psycopg
import pytest
from harness import HOST, Raw, make_config, route, storage, wait_until
from test_supervisor import worker_pids
from wire import error_fields, read_until, startup_packet


def login_notices(p, database: str = "p0") -> list[str]:
    with socket.create_connection((HOST, p.port), timeout=10) as sock:
        sock.sendall(startup_packet("postgres", database))
        found = read_until(sock, b"ZE", timeout=10)
    assert found[-1][0] == ord("Z"), found
    return [error_fields(body)["M"] for kind, body in found if kind == ord("N")]


def balanced_storage(**balancing: str) -> str:
    """A storage of two hosts (PostgreSQL twice) with a `balancing` block."""
    text = storage(host=Raw('"127.0.0.1:{pg_port},127.0.0.1:{pg_port}"'), port=None)
    body = " ".join(f"{key} {value}" for key, value in balancing.items())
    return text[:-1] + f'\tbalancing {{ method "roundrobin" {{}} {body} }}\n}}'


@pytest.mark.parametrize("pool", ["session", "transaction"])
def test_show_notice_messages_tells_the_client_which_host_it_was_balanced_to(pooler, pool):
    p = pooler(
        make_config(
            route("p0", "postgres", pool=pool),
            storages=balanced_storage(show_notice_messages="yes"),
        )
    )
    assert login_notices(p) == [f"balancing (roundrobin): connected to 127.0.0.1:{p.pg_port}"]


def test_without_show_notice_messages_the_login_has_no_notice(pooler):
    p = pooler(
        make_config(route("p0", "postgres"), storages=balanced_storage(show_notice_messages="no"))
    )
    assert login_notices(p) == []


def query_message(sql: str) -> bytes:
    body = sql.encode() + b"\0"
    return b"Q" + struct.pack("!i", len(body) + 4) + body


def process_state(pid: int) -> str:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2]


def test_a_server_postgres_closed_while_the_worker_was_stopped_is_not_given_to_a_client(pooler, pg):
    """The worker is stopped while a client asks for a server and PostgreSQL then terminates
    the route's idle server, so the worker reads both at once. Whichever it looks at first
    (epoll's order is not promised), the client's query runs: with pool_attach_check (the
    default) a dead idle server is noticed before use (tests/unit/server/test_attach_check.py
    covers that order alone)."""
    p = pooler(make_config(route("p0", "postgres", pool="transaction")))
    (worker,) = worker_pids(p.pid)
    with socket.create_connection((HOST, p.port), timeout=10) as sock:
        sock.sendall(startup_packet("postgres", "p0"))
        assert read_until(sock, b"ZE")[-1][0] == ord("Z")
        sock.sendall(query_message("select pg_backend_pid()"))
        answer = read_until(sock, b"ZE")
        (pid,) = [body for kind, body in answer if kind == ord("D")]
        backend = int(pid[6:])  # (one column: count, length, text)
        os.kill(worker, signal.SIGSTOP)
        try:
            wait_until(lambda: process_state(worker) == "T", message="the worker is stopped")
            sock.sendall(query_message("select 42"))
            pg.psql(f"select pg_terminate_backend({backend})")
            wait_until(
                lambda: not pg.psql(f"select 1 from pg_stat_activity where pid = {backend}"),
                message="the backend is gone",
            )
        finally:
            os.kill(worker, signal.SIGCONT)
        answer = read_until(sock, b"ZE")
    assert [kind for kind, _ in answer] == [ord(k) for k in "TDCZ"], answer


def test_show_host_utilization_with_the_host_watcher(pooler):
    p = pooler(make_config(enable_host_watcher=True))
    p.wait_for_log("host watcher started")
    with p.connect("console", "admin") as conn:
        cur = conn.execute("show host_utilization")
        assert [(c.name, c.type_code) for c in cur.description] == [("cpu", 700), ("mem", 700)]
        assert cur.statusmessage == "HOST_UTILIZATION"

        def sampled_twice():
            ((cpu, mem),) = conn.execute("show host_utilization").fetchall()
            return mem > 0 and 0 <= cpu <= 100 and mem <= 100

        wait_until(sampled_twice, message="CPU and memory use sampled")


def test_show_host_utilization_without_the_host_watcher_says_it_is_off(pooler):
    p = pooler(make_config())
    with pytest.raises(psycopg.Error, match=r"host watcher is off \(enable_host_watcher no\)"):
        p.admin("show host_utilization")
