"""Security checks (SPEC S12): no secret in any log line, no user enumeration through the
authentication challenge, wrong passwords cost what right ones cost.

Elsewhere: the control socket refuses another uid (test_control.py::test_other_uid_is_refused)
and is 0600 (test_control.py::test_every_request); console roles (test_console.py and
test_stat_role_cannot_run_admin_commands below).
"""

from __future__ import annotations

import base64
import re
import socket
import statistics
import struct
import time

import psycopg
import pytest
from harness import (
    HOST,
    MD5_PW,
    MD5_USER,
    PLAIN_PW,
    PLAIN_USER,
    SCRAM_PW,
    SCRAM_USER,
    free_port,
    make_config,
    release_port,
    route,
    wait_until,
)
from wire import error_fields, read_until, startup_packet

from pooler.protocol import auth, build, messages

AUTH_QUERY = "SELECT usename, passwd FROM pg_shadow WHERE usename = $1"
DEFAULT_PW = "default-rule-pw-7731"
WRONG_PW = "wrong-pw-5519"


def _secrets(scram_secret: str, md5_hash: str) -> list[str]:
    parsed = auth.parse_scram_secret(scram_secret)
    assert parsed is not None
    b64 = base64.b64encode
    return [
        SCRAM_PW, MD5_PW, PLAIN_PW, DEFAULT_PW, WRONG_PW, scram_secret, md5_hash, md5_hash[3:],
        b64(parsed.stored_key).decode(), b64(parsed.server_key).decode(),
        parsed.stored_key.hex(), parsed.server_key.hex(),
    ]  # fmt: skip


def test_no_secret_in_any_log_line(pooler):
    scram_secret = auth.make_scram_secret(SCRAM_PW)
    md5_hash = auth.md5_password_hash(MD5_USER, MD5_PW)
    routes = [
        route("p0", SCRAM_USER, authentication="scram-sha-256", password=scram_secret,
              storage_password=SCRAM_PW, pool="transaction"),
        route("p1", MD5_USER, authentication="md5", password=md5_hash, pool="session"),
        route("p2", PLAIN_USER, authentication="clear_text", password=PLAIN_PW,
              pool="transaction"),
        route("p2", "default", authentication="md5", password=DEFAULT_PW,
              storage_user=MD5_USER, storage_password=MD5_PW, pool="transaction"),
    ]  # fmt: skip
    p = pooler(
        make_config(routes, log_debug=True, log_session=True, log_query=True, log_config=True)
    )
    for db, user, password in [
        ("p0", SCRAM_USER, SCRAM_PW),
        ("p1", MD5_USER, MD5_PW),
        ("p2", PLAIN_USER, PLAIN_PW),
        ("p2", "someone", DEFAULT_PW),
    ]:
        with p.connect(db, user, password) as conn:
            conn.execute("select 1")
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            p.connect(db, user, WRONG_PW)
    # a password in startup options and in a query are the client's business, not secrets
    # of ours; the pooler must not echo the password message of a failed login either
    text = p.log_text()
    assert "password authentication failed" in text  # the failures were logged
    for secret in _secrets(scram_secret, md5_hash):
        assert secret not in text, f"secret {secret!r} in the pooler log"


# -- user enumeration ----------------------------------------------------------------------


def _first_auth_request(p, database, user):
    """The first answer to a startup packet: ("R", auth code) or ("E", SQLSTATE)."""
    with socket.create_connection((HOST, p.port), timeout=5) as sock:
        sock.sendall(startup_packet(user, database))
        kind, body = read_until(sock, b"RE")[0]
    if kind == ord("E"):
        return "E", error_fields(body)["C"]
    return "R", struct.unpack("!i", body[:4])[0]


@pytest.mark.parametrize("method", ["md5", "scram-sha-256", "clear_text"])
def test_default_rule_challenges_unknown_users_like_known_ones(pooler, method):
    p = pooler(make_config(route("p0", "default", authentication=method, password=DEFAULT_PW)))
    known = _first_auth_request(p, "p0", "postgres")
    unknown = _first_auth_request(p, "p0", "no_such_user_at_all")
    assert known[0] == "R" and known == unknown


@pytest.mark.parametrize("method", ["md5", "scram-sha-256"])
def test_auth_query_unknown_user_gets_a_full_challenge(pooler, method):
    internal = route("postgres", "postgres", pool="session", pool_routing="internal")
    users = route("p0", "default", authentication=method, auth_query=AUTH_QUERY,
                  auth_query_db="postgres", auth_query_user="postgres", pool="transaction")  # fmt: skip
    p = pooler(make_config([internal, users]))
    user = SCRAM_USER if method == "scram-sha-256" else MD5_USER
    known = _first_auth_request(p, "p0", user)
    unknown = _first_auth_request(p, "p0", "no_such_user_at_all")
    assert known[0] == "R" and known == unknown
    if method == "scram-sha-256":  # the mock exchange runs to the end, then fails as usual
        state = _scram_login(p, "no_such_user_at_all", "whatever")
        assert state == ("E", "28P01")


def test_user_specific_rules_reveal_missing_routes(pooler):
    # Documented limitation (docs/reliability.md): routing happens before authentication, as
    # in odyssey; a user without any rule gets 3D000 "route ... not found" at once. Add a
    # `user default` rule with a password (or `authentication block`) to avoid this.
    p = pooler(make_config(route("p0", SCRAM_USER, authentication="scram-sha-256",
                                 password=SCRAM_PW)))  # fmt: skip
    assert _first_auth_request(p, "p0", SCRAM_USER)[0] == "R"
    assert _first_auth_request(p, "p0", "no_such_user_at_all") == ("E", "3D000")


# -- timing --------------------------------------------------------------------------------


def _md5_login(p, user, password):
    with socket.create_connection((HOST, p.port), timeout=5) as sock:
        sock.sendall(startup_packet(user, "p0"))
        kind, body = read_until(sock, b"RE")[0]
        salt = body[4:8]
        answer = build.password_message(auth.md5_response(user, password, salt))
        t0 = time.perf_counter()
        sock.sendall(answer)
        kind, body = read_until(sock, b"RE")[0]
        took = time.perf_counter() - t0
    return took, chr(kind)


def _scram_login(p, user, password, timed=False):
    with socket.create_connection((HOST, p.port), timeout=5) as sock:
        sock.sendall(startup_packet(user, "p0"))
        kind, body = read_until(sock, b"RE")[0]
        request = messages.decode_authentication(body)
        client = auth.ScramClient(user, password)
        mech = client.choose_mechanism(request.mechanisms)
        sock.sendall(build.sasl_initial_response(mech, client.client_first()))
        kind, body = read_until(sock, b"RE")[0]
        data = messages.decode_authentication(body).data
        final = build.sasl_response(client.handle_server_first(data))
        t0 = time.perf_counter()
        sock.sendall(final)
        kind, body = read_until(sock, b"RE")[0]
        took = time.perf_counter() - t0
    if timed:
        return took, chr(kind)
    return ("E", error_fields(body)["C"]) if kind == ord("E") else ("R", 0)


@pytest.mark.parametrize("method", ["md5", "scram-sha-256"])
def test_wrong_password_costs_what_a_right_one_costs(pooler, method):
    p = pooler(
        make_config(
            route("p0", "default", authentication=method, password=DEFAULT_PW,
                  storage_user=MD5_USER, storage_password=MD5_PW, pool="transaction")
        )
    )  # fmt: skip
    login = _md5_login if method == "md5" else (lambda *a: _scram_login(*a, timed=True))
    p.sql("select 1", dbname="p0", user="x", password=DEFAULT_PW)  # warm: route params known
    right, wrong = [], []
    for _ in range(15):
        took, kind = login(p, "x", DEFAULT_PW)
        assert kind == "R"
        right.append(took)
        took, kind = login(p, "x", WRONG_PW)
        assert kind == "E"
        wrong.append(took)
    r, w = statistics.median(right), statistics.median(wrong)
    print(f"{method}: right {r * 1e3:.2f} ms, wrong {w * 1e3:.2f} ms")
    assert abs(r - w) < 0.005 + 0.5 * max(r, w), (right, wrong)


# -- console roles ---------------------------------------------------------------------------


def test_stat_role_cannot_run_admin_commands(pooler):
    cfg = make_config([route(), route("console", "stat", storage="local", role="stat")])
    p = pooler(cfg)
    with psycopg.connect(p.dsn("console", "stat"), autocommit=True) as conn:
        for command in (
            "reload",
            "pause",
            "resume",
            "reconnect",
            "kill p0",
            "kill_client c1",
            "shutdown",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="Unsuitable user role"):
                conn.execute(command)
        conn.execute("show pools")  # still fine
    assert p.is_running()
    assert p.sql("select 1", dbname="p0") == [(1,)]


# -- auth_query --------------------------------------------------------------------------------

AQ_READER = "aq_reader_nosc"  # its sessions run with standard_conforming_strings = off
CRAFTED_USER = "zz\\' UNION SELECT $$zz$$, $$hunter2$$ --"


@pytest.fixture
def aq_reader(pg):
    pg.create_role(AQ_READER, method="trust", superuser=True)
    pg.psql(f"ALTER ROLE {AQ_READER} SET standard_conforming_strings = off")
    yield AQ_READER
    pg.psql(f"DROP ROLE IF EXISTS {AQ_READER}")


def test_auth_query_user_name_is_a_bound_parameter(pooler, aq_reader):
    # With standard_conforming_strings off, a backslash escapes a quote: a user name pasted
    # into the SQL text as a quoted literal breaks out of it and makes the auth_query return
    # a password of the attacker's choice. Bound as $1, it is only ever a value.
    internal = route("postgres", aq_reader, pool="session", pool_routing="internal")
    users = route("p0", "default", authentication="clear_text", auth_query=AUTH_QUERY,
                  auth_query_db="postgres", auth_query_user=aq_reader, storage_user="postgres",
                  pool="transaction")  # fmt: skip
    p = pooler(make_config([internal, users]))
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        p.connect("p0", CRAFTED_USER, "hunter2")
    # the auth_query still works for real users (and ran with the setting off)
    with p.connect("p0", PLAIN_USER, PLAIN_PW) as conn:
        assert conn.execute("select current_user").fetchone()[0] == "postgres"


# -- /metrics --------------------------------------------------------------------------------


def _answers_http(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2) as sock:
            sock.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
            return sock.recv(12).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


@pytest.mark.parametrize("configured", [None, "127.0.0.2"])
def test_metrics_listen_only_where_told(pooler, configured):
    # Listening on 127.0.0.1, /metrics must not answer on another address (127.0.0.2 is
    # loopback too, so this needs no network: a wildcard bind would answer there).
    port = free_port()
    try:
        extra = {"promhttp_server_port": port}
        if configured:
            extra["promhttp_server_host"] = configured
        p = pooler(make_config(**extra))
        where = configured or "127.0.0.1"
        elsewhere = "127.0.0.1" if configured else "127.0.0.2"
        p.wait_for_log(rf"serving /metrics on {re.escape(where)}:{port}")
        assert _answers_http(where, port)
        assert not _answers_http(elsewhere, port)
    finally:
        release_port(port)


def _metric(port: int, name: str) -> float | None:
    """The sum of a metric's samples on /metrics (None when it is not there)."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    values = [float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + "{")]
    return sum(values) if values else None


def test_auth_query_cache_forgets_failures_and_is_counted(pooler):
    # 20,000 failed logins with 4,000-character user names used to add 85 MB to a worker
    # for good: failures are kept briefly, the cache is bounded and shows in /metrics.
    port = free_port()
    try:
        internal = route("postgres", "postgres", pool="session", pool_routing="internal")
        users = route("p0", "default", authentication="md5", auth_query=AUTH_QUERY,
                      auth_query_db="postgres", auth_query_user="postgres", pool="transaction")  # fmt: skip
        p = pooler(make_config([internal, users], promhttp_server_port=port, stats_interval=1))
        for i in range(40):
            user = f"nobody{i}_" + "x" * 4000
            assert _md5_login(p, user, "whatever")[1] == "E"
        wait_until(lambda: _metric(port, "pooler_worker_auth_cache_entries") == 40, timeout=10)
        assert _metric(port, "pooler_worker_auth_cache_bytes") < 40 * 1000  # not 40 × 4 KB
        wait_until(lambda: _metric(port, "pooler_worker_auth_cache_entries") == 0, timeout=10)
        with p.connect("p0", MD5_USER, MD5_PW) as conn:  # a real user still logs in
            assert conn.execute("select current_user").fetchone()[0] == MD5_USER
    finally:
        release_port(port)
