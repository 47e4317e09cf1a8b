"""Real clients and hostile startups against a real `pooler serve`.

psql, psycopg (sync and async), raw sockets speaking SSLRequest / GSSENCRequest, protocol
versions the pooler must refuse, garbage startup packets, and a client that never finishes
its startup (closed after `client_login_timeout`).
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import struct
import subprocess
import time

import psycopg
import pytest
from harness import HOST, make_config, patience, route, wait_until

SSL_REQUEST = struct.pack("!ii", 8, 80877103)
GSSENC_REQUEST = struct.pack("!ii", 8, 80877104)


def startup_packet(user: str = "postgres", database: str = "p0", version: int = 196608, **extra):
    body = struct.pack("!i", version)
    for key, value in {"user": user, "database": database, **extra}.items():
        body += key.encode() + b"\0" + value.encode() + b"\0"
    body += b"\0"
    return struct.pack("!i", len(body) + 4) + body


def read_messages(sock: socket.socket, until: bytes = b"ZE", timeout: float = 5) -> list:
    """Read backend messages until one whose type is in ``until`` (or EOF)."""
    sock.settimeout(timeout)
    data = b""
    out: list[tuple[bytes, bytes]] = []
    while True:
        while len(data) >= 5:
            length = struct.unpack("!i", data[1:5])[0]
            if len(data) < 1 + length:
                break
            out.append((data[:1], data[5 : 1 + length]))
            data = data[1 + length :]
            if out[-1][0] in until:
                return out
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            if data:
                out.append((b"?", data))
            return out
        data += chunk


def error_fields(body: bytes) -> dict[str, str]:
    return {chr(p[0]): p[1:].decode() for p in body.split(b"\0") if p}


def ended(sock: socket.socket, timeout: float = 5) -> bytes:
    """Everything the pooler sends until it closes the connection (raises after
    `patience(timeout)` s)."""
    sock.settimeout(patience(timeout))
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk


def psql(pg, p, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    argv = [pg.binary("psql"), "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1"]
    argv += ["-h", HOST, "-p", str(p.port), "-U", "postgres", "-d", "p0", *args]
    env = {**os.environ, "PGSSLMODE": "disable", "PGCONNECT_TIMEOUT": "10"}
    return subprocess.run(
        argv, input=stdin, env=env, capture_output=True, text=True, timeout=30, check=False
    )


# -- psql ---------------------------------------------------------------------------------


@pytest.mark.parametrize("pool", ["session", "transaction"])
def test_psql_command(pooler, pg, pool):
    p = pooler(make_config(route(pool=pool)))
    out = psql(pg, p, "-c", "select 1")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "1"


def test_psql_script_with_copy(pooler, pg, tmp_path):
    p = pooler(make_config(route(pool="session")))
    data = tmp_path / "rows.csv"
    data.write_text("".join(f"{i},row {i}\n" for i in range(500)))
    dump = tmp_path / "out.csv"
    script = f"""
create temp table t (a int, b text);
\\copy t from '{data}' csv
select count(*), sum(a) from t;
\\copy (select * from t where a < 10 order by a) to '{dump}' csv
begin;
insert into t values (1000, 'x');
rollback;
select count(*) from t;
"""
    out = psql(pg, p, stdin=script)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [f"500|{sum(range(500))}", "500"]
    assert dump.read_text().splitlines() == [f"{i},row {i}" for i in range(10)]


def test_psql_error_then_continue(pooler, pg):
    p = pooler(make_config(route(pool="transaction")))
    out = psql(pg, p, "-v", "ON_ERROR_STOP=0", stdin="select 1/0;\nselect 42;\n")
    assert "division by zero" in out.stderr
    assert out.stdout.strip() == "42"


# -- psycopg async ------------------------------------------------------------------------


async def test_psycopg_async(pooler):
    p = pooler(make_config(route(pool="transaction")))
    async with await p.aconnect("p0", prepare_threshold=None) as conn:
        cur = await conn.execute("select %s::int + 1", (41,))
        assert (await cur.fetchone())[0] == 42
        async with conn.transaction():
            await conn.execute("select 1")
        cur = await conn.execute("select count(*) from pgbench_branches")
        assert (await cur.fetchone())[0] == 1


# -- SSL / GSS negotiation ----------------------------------------------------------------


def test_ssl_request_gets_n_and_plain_startup_continues(pooler):
    p = pooler(make_config(route()))
    with socket.create_connection((HOST, p.port), timeout=5) as sock:
        sock.sendall(SSL_REQUEST)
        assert sock.recv(1) == b"N"
        sock.sendall(startup_packet())
        kinds = [k for k, _ in read_messages(sock)]
        assert kinds[0] == b"R" and kinds[-1] == b"Z", kinds
        sock.sendall(b"X\0\0\0\4")


def test_sslmode_prefer_connects_without_tls(pooler):
    p = pooler(make_config(route()))
    with p.connect("p0", sslmode="prefer") as conn:
        assert not conn.pgconn.ssl_in_use
        assert conn.execute("select 1").fetchone()[0] == 1


def test_sslmode_require_fails_cleanly(pooler):
    p = pooler(make_config(route()))
    with pytest.raises(psycopg.OperationalError, match=r"(?i)ssl"):
        p.connect("p0", sslmode="require")
    assert p.is_running()
    with p.connect("p0") as conn:
        assert conn.execute("select 1").fetchone()[0] == 1


def test_gssenc_request_gets_n(pooler):
    p = pooler(make_config(route()))
    with socket.create_connection((HOST, p.port), timeout=5) as sock:
        sock.sendall(GSSENC_REQUEST)
        assert sock.recv(1) == b"N"
        sock.sendall(SSL_REQUEST)  # libpq's order with gssencmode=prefer, sslmode=prefer
        assert sock.recv(1) == b"N"
        sock.sendall(startup_packet())
        kinds = [k for k, _ in read_messages(sock)]
        assert kinds[-1] == b"Z", kinds


def test_gssencmode_prefer_connects(pooler):
    p = pooler(make_config(route()))
    with p.connect("p0", gssencmode="prefer", sslmode="prefer") as conn:
        assert conn.execute("select 1").fetchone()[0] == 1


# -- protocol versions --------------------------------------------------------------------


def test_protocol_2_is_refused(pooler):
    p = pooler(make_config(route()))
    with socket.create_connection((HOST, p.port), timeout=5) as sock:
        sock.sendall(startup_packet(version=0x00020000))
        reply = ended(sock)
    assert reply[:1] == b"E"
    assert b"unsupported frontend protocol" in reply
    with p.connect("p0") as conn:
        assert conn.execute("select 1").fetchone()[0] == 1


def test_protocol_4_is_refused(pooler):
    p = pooler(make_config(route()))
    with socket.create_connection((HOST, p.port), timeout=5) as sock:
        sock.sendall(startup_packet(version=0x00040000))
        reply = ended(sock)
    assert reply[:1] == b"E"
    assert b"unsupported frontend protocol" in reply


def test_newer_minor_version_is_negotiated_down(pooler):
    # PostgreSQL answers 3.x (x > what it speaks) and unknown _pq_. options with
    # NegotiateProtocolVersion ('v') and carries on with 3.0
    p = pooler(make_config(route()))
    with socket.create_connection((HOST, p.port), timeout=5) as sock:
        sock.sendall(startup_packet(version=0x00030063, **{"_pq_.not_a_thing": "1"}))
        messages = read_messages(sock)
        kinds = [k for k, _ in messages]
        assert kinds[0] == b"v", messages
        assert kinds[-1] == b"Z", messages
        newest = struct.unpack("!i", messages[0][1][:4])[0]
        assert newest >> 16 == 3
        assert b"_pq_.not_a_thing" in messages[0][1]


# -- garbage startup packets ----------------------------------------------------------------


GARBAGE = {
    "random": random.Random(1234).randbytes(64),
    "zero_length": struct.pack("!i", 0),
    "short_length": struct.pack("!ii", 4, 196608),
    "negative_length": struct.pack("!i", -5) + b"\0" * 8,
    "huge_length": struct.pack("!ii", 0x7FFFFFFF, 196608) + b"user\0x\0",
    "no_terminator": struct.pack("!ii", 16, 196608) + b"user\0bob",
    "odd_param": struct.pack("!ii", 14, 196608) + b"user\0\0",
    "no_user": startup_packet(user=""),
    "unknown_code": struct.pack("!ii", 8, 1234),
    "truncated": startup_packet()[:10],
    "http": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
}


@pytest.mark.parametrize("name", list(GARBAGE))
def test_garbage_startup_gets_error_or_close(pooler, name):
    p = pooler(make_config(route(pool="transaction"), listen={"client_login_timeout": 2000}))
    with p.connect("p0") as good:
        assert good.execute("select 1").fetchone()[0] == 1
        with socket.create_connection((HOST, p.port), timeout=5) as sock:
            sock.sendall(GARBAGE[name])
            sock.shutdown(socket.SHUT_WR)  # nothing more is coming
            reply = ended(sock)
        assert reply == b"" or reply[:1] == b"E", reply
        if reply:
            length = struct.unpack("!i", reply[1:5])[0]
            fields = error_fields(reply[5 : 1 + length])
            assert fields["S"] == "FATAL"
            assert fields["C"]
        assert good.execute("select 2").fetchone()[0] == 2
    assert p.is_running()
    with p.connect("p0") as fresh:
        assert fresh.execute("select 3").fetchone()[0] == 3


def test_random_startups_do_not_disturb_other_clients(pooler):
    p = pooler(make_config(route(pool="transaction"), listen={"client_login_timeout": 1000}))
    rng = random.Random(42)
    with p.connect("p0") as good:
        for i in range(40):
            payload = rng.randbytes(rng.randrange(1, 200))
            if i % 2:  # a plausible length and protocol code, garbage afterwards
                payload = struct.pack("!ii", len(payload) + 8, 196608) + payload
            with socket.create_connection((HOST, p.port), timeout=5) as sock:
                with contextlib.suppress(OSError):
                    sock.sendall(payload)
                    sock.shutdown(socket.SHUT_WR)
                reply = ended(sock, timeout=5)
            assert reply == b"" or reply[:1] in (b"E", b"R", b"N"), reply
            assert good.execute(f"select {i}").fetchone()[0] == i  # no auto-prepare
    assert p.is_running()


# -- login timeout ------------------------------------------------------------------------


@pytest.mark.parametrize("sent", [b"", struct.pack("!i", 64), startup_packet()[:12]])
def test_slow_startup_is_closed_after_client_login_timeout(pooler, sent):
    p = pooler(make_config(route(), listen={"client_login_timeout": 500}))
    with socket.create_connection((HOST, p.port), timeout=5) as sock:
        started = time.monotonic()
        if sent:
            sock.sendall(sent)
        reply = ended(sock)
        elapsed = time.monotonic() - started
    assert elapsed > 0.3, elapsed  # not before the timeout
    assert reply == b"" or reply[:1] == b"E", reply
    p.wait_for_log("client login timed out")  # and by it
    with p.connect("p0") as conn:
        assert conn.execute("select 1").fetchone()[0] == 1


def test_slow_password_is_closed_after_client_login_timeout(pooler):
    p = pooler(
        make_config(
            route(authentication="clear_text", password="pw", storage_user="postgres"),
            listen={"client_login_timeout": 500},
        )
    )
    with socket.create_connection((HOST, p.port), timeout=5) as sock:
        sock.sendall(startup_packet(user="bob"))
        messages = read_messages(sock, until=b"R")
        assert messages[0][0] == b"R"  # asked for a password, which never comes
        ended(sock)
    p.wait_for_log("client login timed out")


def test_many_slow_clients_do_not_block_a_good_one(pooler):
    p = pooler(make_config(route(), listen={"client_login_timeout": 800}))
    socks = [socket.create_connection((HOST, p.port), timeout=5) for _ in range(30)]
    try:
        for s in socks:
            s.sendall(struct.pack("!i", 100))
        with p.connect("p0") as conn:
            assert conn.execute("select 1").fetchone()[0] == 1

        def all_closed() -> bool:
            for s in socks:
                s.settimeout(0.01)
                try:
                    while s.recv(65536):
                        pass  # the error message, then EOF
                except TimeoutError:
                    return False
                except OSError:
                    pass
            return True

        wait_until(all_closed, timeout=5, message="the slow clients to be closed")
    finally:
        for s in socks:
            s.close()
