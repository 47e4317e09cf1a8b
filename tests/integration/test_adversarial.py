"""The attacker's and the careless client's bytes, each answered as PostgreSQL answers them
(checked against PostgreSQL 15 and pgbouncer 1.25.2 by hand, see docs/reliability.md), while
well-behaved clients of the same workers notice nothing and no worker restarts.

Complements test_clients.py (garbage startups, protocol versions), test_fuzz_live.py
(mutated sessions, hostile lengths), test_hostile_clients.py (stalls, slow readers),
test_security.py and test_control.py.
"""

from __future__ import annotations

import json
import os
import socket
import struct

import pytest
from fuzzlib import GoodClients
from harness import HOST, free_port, make_config, patience, release_port, route, wait_until
from wire import control, error_fields, read_to_eof, split_messages, startup_packet, workers

from pooler.control.client import default_control_path
from pooler.protocol import build

SSL_REQUEST = struct.pack("!ii", 8, 80877103)
GSSENC_REQUEST = struct.pack("!ii", 8, 80877104)
Z = ord("Z")


def answers(port: int, *steps: bytes, shut: bool = False) -> tuple[bytes, list[tuple[int, bytes]]]:
    """Send `steps` (an SSLRequest/GSSENCRequest step is answered with one byte, read
    before the next step), optionally half-close, and read until the pooler closes.
    Returns (the one-byte answers, the typed messages after them)."""
    with socket.create_connection((HOST, port), timeout=patience(5)) as sock:
        single = first = b""
        for step in steps:
            sock.sendall(step)
            if step in (SSL_REQUEST, GSSENC_REQUEST):
                answer = sock.recv(1)
                if answer != b"N":
                    first = answer  # the start of an ErrorResponse
                    break
                single += answer
        if shut:
            sock.shutdown(socket.SHUT_WR)
        data = first + read_to_eof(sock, timeout=patience(5))
    if data[:1] == b"N" and not single:  # (an answer to a request sent with other bytes)
        single, data = b"N", data[1:]
    messages, rest = split_messages(data)
    assert rest == b"", rest
    return single, messages


def fatal(messages: list[tuple[int, bytes]]) -> tuple[str, str]:
    """(SQLSTATE, message) of the FATAL that ends `messages` (without the pooler's
    `pooler: <client id>: ` prefix)."""
    assert messages and messages[-1][0] == ord("E"), messages
    fields = error_fields(messages[-1][1])
    assert fields["S"] == "FATAL", fields
    return fields["C"], fields["M"].split(": ", 2)[-1]


@pytest.fixture
def watched(pooler):
    """A pooler (2 workers, transaction pool) with two good clients querying throughout;
    on leaving, they saw no error and the workers never restarted."""
    p = pooler(
        make_config(
            route("p0", pool="transaction", pool_size=4, pool_timeout=5000),
            workers=2,
            listen={"client_login_timeout": 5000},
        )
    )
    before = workers(p)
    with GoodClients(p) as good:
        wait_until(lambda: good.queries >= 10 or good.errors, timeout=10)
        yield p
        served = good.queries
        wait_until(lambda: good.queries >= served + 10 or good.errors, timeout=10)
    assert not good.errors, good.errors
    after = workers(p)
    assert [(w.pid, w.restarts) for w in after] == [(w.pid, 0) for w in before], after


UNSUPPORTED_SSL = "unsupported frontend protocol 1234.5679: server supports 3.0 to 3.0"
UNSUPPORTED_GSS = "unsupported frontend protocol 1234.5680: server supports 3.0 to 3.0"


def test_encryption_requests_once_each_as_postgresql(watched):
    port, login = watched.port, startup_packet()
    # a second SSLRequest (GSSENCRequest) is read as a startup packet of protocol
    # 1234.5679 (5680) and refused; pgbouncer 1.25 answers N for ever
    single, messages = answers(port, SSL_REQUEST, SSL_REQUEST, login)
    assert single == b"N" and fatal(messages) == ("0A000", UNSUPPORTED_SSL)
    single, messages = answers(port, GSSENC_REQUEST, GSSENC_REQUEST, login)
    assert single == b"N" and fatal(messages) == ("0A000", UNSUPPORTED_GSS)
    single, messages = answers(port, SSL_REQUEST, GSSENC_REQUEST, SSL_REQUEST, login)
    assert single == b"NN" and fatal(messages)[0] == "0A000"
    # one of each, in either order, is what libpq does: the login goes on
    for order in ((GSSENC_REQUEST, SSL_REQUEST), (SSL_REQUEST, GSSENC_REQUEST)):
        single, messages = answers(port, *order, login, build.terminate())
        assert single == b"NN" and messages[-1][0] == Z, messages


def test_plaintext_sent_with_an_encryption_request_is_refused(watched):
    # CVE-2021-23214: bytes that came with the request, before the answer, were not
    # protected by what the answer started; PostgreSQL and pgbouncer refuse them even
    # when the answer is N (tests/integration/test_tls.py: the same when it is S)
    for request, name in (
        (SSL_REQUEST, "SSL request"),
        (GSSENC_REQUEST, "GSSAPI encryption request"),
    ):
        for extra in (startup_packet(), b"\0"):
            single, messages = answers(watched.port, request + extra)
            assert single == b""
            assert fatal(messages) == ("08P01", f"received unencrypted data after {name}")


def test_replication_connections_are_refused_not_downgraded(pooler):
    # PostgreSQL, pgbouncer >= 1.23 and odyssey relay the replication protocol; the pooler
    # does not, and used to hand such a client an ordinary session, whose first
    # IDENTIFY_SYSTEM was a syntax error
    p = pooler(make_config(route("p0", pool="session")))
    for value, sqlstate in [("database", "0A000"), ("true", "0A000"), ("on", "0A000"),
                            ("1", "0A000"), ("Yes", "0A000"), ("bogus", "22023"), ("", "22023")]:  # fmt: skip
        _, messages = answers(p.port, startup_packet(replication=value))
        code, message = fatal(messages)
        assert code == sqlstate, (value, message)
        if sqlstate == "22023":  # PostgreSQL's words
            assert message == f'invalid value for parameter "replication": "{value}"'
    for ordinary in ("false", "off", "0", "no"):
        _, messages = answers(p.port, startup_packet(replication=ordinary), build.terminate())
        assert messages[-1][0] == Z, messages


def _typed(messages: list[tuple[int, bytes]]) -> str:
    return "".join(chr(kind) for kind, _ in messages)


def test_half_closed_client_gets_its_answers_then_eof(pooler):
    # A client that sends its query and shuts its socket for writing (a script piping into
    # a socket) gets the answers, as from PostgreSQL, then the close; it used to get
    # only the close. In session and transaction pools, and while it waits for a server.
    p = pooler(
        make_config(
            [
                route("p0", pool="transaction", pool_size=1, pool_timeout=10000),
                route("p1", pool="session"),
            ],
            workers=1,
        )
    )
    query = build.query("select pg_sleep(0.3), 42")
    for db in ("p0", "p1"):
        _, messages = answers(p.port, startup_packet(database=db), query, shut=True)
        assert _typed(messages).endswith("ZTDCZ"), messages
        assert messages[-3][1].endswith(b"42")
    # pipelined extended protocol, half-closed before the Sync's answer
    batch = build.parse("", "select 7") + build.bind("", "") + build.execute() + build.sync()
    _, messages = answers(p.port, startup_packet(), batch, shut=True)
    assert _typed(messages).endswith("Z12DCZ"), messages
    # nothing owed, or half a message (small, or streamed to the server) that can never be
    # answered: closed at once, as before
    _, messages = answers(p.port, startup_packet(), shut=True)
    assert _typed(messages).endswith("KZ"), messages
    for db in ("p0", "p1"):
        for half in (query[:-3], b"Q" + struct.pack("!i", 5_000_004) + b"select '" * 100_000):
            with socket.create_connection((HOST, p.port), timeout=patience(5)) as sock:
                sock.sendall(startup_packet(database=db))
                read_until_ready(sock)  # (a login takes at most 128 KB pipelined behind it)
                sock.sendall(half)
                sock.shutdown(socket.SHUT_WR)
                assert read_to_eof(sock, timeout=patience(5)) == b""  # no hang, no answer

    with p.connect("p0") as holder:  # takes the only server of p0 ...
        holder.execute("begin")
        holder.execute("select 1")
        with socket.create_connection((HOST, p.port), timeout=patience(5)) as sock:
            sock.sendall(startup_packet())
            read_until_ready(sock)
            sock.sendall(build.query("select 43"))
            sock.shutdown(socket.SHUT_WR)  # ... while this one waits for it
            wait_until(lambda: any(r[0] == "p0" and r[3] for r in p.admin("show pools")))
            holder.execute("commit")
            messages, rest = split_messages(read_to_eof(sock, timeout=patience(5)))
            assert rest == b""
        assert _typed(messages) == "TDCZ" and messages[1][1].endswith(b"43"), messages
    assert p.sql("select 44", dbname="p0") == [(44,)]

    # A client that dies mid-query closes its socket whole, which the pooler cannot tell
    # from a half-close: answers slower than HALF_CLOSE_GRACE (2 s) are not waited for, the
    # server is cancelled and serves the next client (not after the 30 s of the query)
    with socket.create_connection((HOST, p.port), timeout=patience(5)) as sock:
        sock.sendall(startup_packet())
        read_until_ready(sock)
        sock.sendall(build.query("select pg_sleep(30)"))
        wait_until(lambda: any(r[0] == "p0" and r[6] for r in p.admin("show pools")))
    assert p.sql("select 45", dbname="p0") == [(45,)]  # (pool_timeout 10 s)


def read_until_ready(sock: socket.socket) -> bytes:
    sock.settimeout(patience(5))
    data = b""
    while not data.endswith(build.ready_for_query("I")):
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    return data


def _control_lines(path, *lines: bytes) -> list[dict]:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(patience(5))
        sock.connect(str(path))
        replies = []
        for line in lines:
            sock.sendall(line + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(65536)
                assert chunk, (line[:80], data)
                data += chunk
            replies.append(json.loads(data))
        return replies


def test_control_socket_refuses_malformed_requests_and_stays_open(pooler):
    p = pooler(make_config(route("p0")))
    path = default_control_path(p.config_path)
    wait_until(path.exists, timeout=10)
    status = b'{"version": 1, "type": "status", "id": 9}'
    malformed = [
        (b"[" * 100_000, "bad_json"),  # used to raise RecursionError: a traceback
        (b'{"version": 1, "type": "status", "id": ' + b"[" * 50_000 + b"]" * 50_000 + b"}",
         "bad_json"),
        (b'{"version": 1, "type": "status", "id": {"a": 1}}', "bad_request"),
        (b'{"version": 1, "type": "subscribe", "topics": "stats"}', "bad_request"),
        (b'{"version": 1, "type": "subscribe", "topics": [["stats"]]}', "bad_request"),
        (b'{"version": 1, "type": "pause", "database": {"a": 1}}', "bad_request"),
        (b'{"version": 1, "type": "kill_client", "client_id": [1, 2]}', "bad_request"),
        (b'{"version": 1, "type": "config_validate", "text": 5}', "bad_request"),
        (b'{"version": 1, "type": "pause", "database": true}', "bad_request"),
    ]  # fmt: skip
    for line, code in malformed:
        error, ok = _control_lines(path, line, status)
        assert error["ok"] is False and error["error"]["code"] == code, (line[:80], error)
        assert ok["ok"] is True and ok["id"] == 9, ok
    assert control(p, "status").paused is False  # pause with a bad database did nothing
    assert p.sql("select 1", dbname="p0") == [(1,)]


def test_password_packet_is_one_string_and_refused_parameters_keep_their_sqlstate(pooler):
    p = pooler(
        make_config(
            [
                route("p0", "u_clear", authentication="clear_text", password="pw",
                      storage_user="postgres", pool="transaction"),
                route("p0", "u_md5", authentication="md5", password="pw",
                      storage_user="postgres", pool="transaction"),
                route("p0", pool="transaction"),
            ]
        )
    )  # fmt: skip
    # a cleartext password (an md5 answer) is one C string, as PostgreSQL reads it: a NUL
    # inside or none at the end was stripped, and `pw\0\0` or `pw` logged in
    for user in ("u_clear", "u_md5"):
        for body in (b"pw\0junk\0", b"pw", b"pw\0\0", b""):
            password = b"p" + struct.pack("!i", len(body) + 4) + body
            _, messages = answers(p.port, startup_packet(user), password)
            assert fatal(messages) == ("08P01", "invalid password packet size"), (user, body)
    _, messages = answers(p.port, startup_packet("u_clear"), build.password_message("pw"),
                          build.terminate())  # fmt: skip
    assert messages[-1][0] == Z, messages
    # a startup parameter PostgreSQL refuses fails the login or the first query with
    # PostgreSQL's SQLSTATE (it was 08006, "connection failure", which drivers retry)
    for param, sqlstate in (("no_such_guc", "42704"), ("client_encoding", "22023")):
        login = startup_packet(**{param: "nope"})
        _, messages = answers(p.port, login, build.query("select 1"))
        code, message = fatal(messages)  # (at login, or at the first query)
        assert code == sqlstate, message


def _http(port: int, request: bytes) -> bytes:
    with socket.create_connection((HOST, port), timeout=patience(5)) as sock:
        sock.sendall(request)
        return read_to_eof(sock, timeout=patience(12))


def test_metrics_endpoint_survives_bad_http_and_connection_floods(pooler):
    port = free_port()
    try:
        p = pooler(make_config(route("p0"), promhttp_server_port=port))
        p.wait_for_log(rf"serving /metrics on 127.0.0.1:{port}")
        for request, status in [
            (b"GET /metrics HTTP/1.0\r\n\r\n", b"HTTP/1.1 200"),
            (b"GET /nothing HTTP/1.0\r\n\r\n", b"HTTP/1.1 404"),
            (b"POST /metrics HTTP/1.0\r\n\r\n", b"HTTP/1.1 405"),
            (b"GET\r\n\r\n", b""),
            (b"\r\n\r\n", b""),
            (b"\xff\xfe\x00\x01 \x80 \r\n\r\n", b"HTTP/1.1 404"),
            (b"GET /metrics HTTP/1.0\r\nX: " + b"x" * 200_000 + b"\r\n\r\n", b""),
        ]:
            assert _http(port, request).startswith(status), request[:40]
        # hundreds of silent connections: each used to hold a supervisor descriptor for
        # 10 s (thousands would take them all: no worker restart, no control socket)
        fds = len(os.listdir(f"/proc/{p.pid}/fd"))
        silent = [socket.create_connection((HOST, port), timeout=5) for _ in range(300)]
        try:
            wait_until(lambda: len(os.listdir(f"/proc/{p.pid}/fd")) >= fds + 32)  # accepted
            assert len(os.listdir(f"/proc/{p.pid}/fd")) < fds + 100
            assert control(p, "status").workers == 1  # the supervisor still serves
        finally:
            for sock in silent:
                sock.close()
        wait_until(
            lambda: _http(port, b"GET /metrics HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.1 200")
        )
        assert p.sql("select 1", dbname="p0") == [(1,)]
    finally:
        release_port(port)


def test_tls_handshake_stalls_end_at_the_login_timeout(pooler, tmp_path):
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1")
    cert, key = tmp_path / "server.pem", tmp_path / "server.key"
    server.cert_chain_pems[0].write_to_path(str(cert))
    server.private_key_pem.write_to_path(str(key))
    listen = {"tls": "require", "tls_cert_file": str(cert), "tls_key_file": str(key),
              "client_login_timeout": 1000}  # fmt: skip
    p = pooler(make_config(route("p0"), listen=listen))
    stalled = []
    try:
        for hello in (b"", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"):  # none, a piece
            sock = socket.create_connection((HOST, p.port), timeout=patience(5))
            sock.sendall(SSL_REQUEST)
            assert sock.recv(1) == b"S"
            sock.sendall(hello)
            stalled.append(sock)
        # a CancelRequest needs no TLS, as with PostgreSQL: read and closed without a word
        with socket.create_connection((HOST, p.port), timeout=patience(5)) as sock:
            sock.sendall(build.cancel_request(12345, 678))
            assert read_to_eof(sock, timeout=patience(5)) == b""
        with p.connect("p0", sslmode="require") as conn:  # others log in meanwhile
            assert conn.execute("select 1").fetchone()[0] == 1
        for sock in stalled:  # closed by client_login_timeout (the handshake's own is 60 s)
            read_to_eof(sock, timeout=patience(5))
        # a handshake that fails at once (not TLS at all)
        with socket.create_connection((HOST, p.port), timeout=patience(5)) as sock:
            sock.sendall(SSL_REQUEST)
            assert sock.recv(1) == b"S"
            sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
            read_to_eof(sock, timeout=patience(5))
        # none of them is still counted as the worker's client (they were, for good: the
        # handshake had the socket, so the client's connection_lost never came, and a
        # drain waited for them until its timeout)
        wait_until(lambda: workers(p)[0].clients == 0, message=lambda: f"{workers(p)}")
    finally:
        for sock in stalled:
            sock.close()


def test_console_answers_every_message_type_as_postgresql_would(pooler):
    p = pooler(make_config([route("p0"), route("console", "stat", storage="local", role="stat")]))
    login = startup_packet("stat", "console")
    show = build.query("show version")
    function_call = b"F" + struct.pack("!iihhh", 14, 1598, 0, 0, 0)
    # a FunctionCall is answered with an error and a ReadyForQuery (the client waits for
    # one: it used to get none and hung); CopyData, CopyDone, CopyFail and Flush outside
    # COPY are ignored; an extended-protocol batch gets one error, then its Sync is answered
    for steps, kinds in [
        ((function_call, show), "EZTDCZ"),
        ((build.copy_data(b"x"), build.copy_done(), build.copy_fail("x"), build.flush(), show),
         "TDCZ"),
        ((build.parse("", "show version") + build.bind("", "") + build.execute() + build.sync(),
          show), "EZTDCZ"),
    ]:  # fmt: skip
        _, messages = answers(p.port, login, *steps, build.terminate())
        assert _typed(messages).endswith("KZ" + kinds), messages
    # a type no frontend sends: FATAL 08P01, as PostgreSQL and pgbouncer answer it
    for mtype in (b"z", b"\0", b"p"):
        _, messages = answers(p.port, login, mtype + struct.pack("!i", 4), show)
        assert fatal(messages) == ("08P01", f"invalid frontend message type {mtype[0]}")
    assert p.sql("select 1", dbname="p0") == [(1,)]
