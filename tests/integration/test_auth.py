"""Client (frontend) and server (backend) authentication through a real `pooler serve`.

Frontend: odyssey's `none`, `block`, `clear_text`, `md5` and `scram-sha-256` (reference §2.4),
with `password` configured as plain text, as PostgreSQL's md5 hash and as a SCRAM secret.
Backend: PostgreSQL asks the pooler for SCRAM (scram_user), md5 (md5_user) or a cleartext
password (plain_user); the password comes from `storage_password`, the rule's plain
`password` or the client's own cleartext password (reference §2.5).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import struct
import subprocess

import asyncpg
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
    make_config,
    route,
)

from pooler.protocol.auth import make_scram_secret

# A client identity PostgreSQL does not know: the server login goes as `postgres` (trusted),
# so only the pooler's own client authentication is under test.
CLIENT, CLIENT_PW = "alice", "alice-secret-pw"
WRONG_PW = "definitely-not-it"

LOUD = {"log_debug": True, "log_session": True, "log_query": True}


def md5_hash(password: str, user: str) -> str:
    """PostgreSQL's stored md5 form: "md5" + md5(password || user)."""
    return "md5" + hashlib.md5((password + user).encode()).hexdigest()


def stored(form: str, password: str, user: str) -> str:
    if form == "plain":
        return password
    if form == "md5":
        return md5_hash(password, user)
    return make_scram_secret(password)


def startup_reply(port: int, database: str, user: str) -> tuple[str, dict[str, str]]:
    """Send a v3 StartupMessage over a raw socket; return ("E", fields) for an
    ErrorResponse, ("R", {"code": n}) for an authentication request."""
    body = struct.pack("!i", 196608)
    for key, value in (("user", user), ("database", database)):
        body += key.encode() + b"\0" + value.encode() + b"\0"
    body += b"\0"
    with socket.create_connection((HOST, port), timeout=5) as sock:
        sock.sendall(struct.pack("!i", len(body) + 4) + body)
        data = b""
        while len(data) < 5 or len(data) < 1 + struct.unpack("!i", data[1:5])[0]:
            chunk = sock.recv(4096)
            if not chunk:
                raise AssertionError(f"connection closed after {data!r}")
            data += chunk
    kind = chr(data[0])
    length = struct.unpack("!i", data[1:5])[0]
    payload = data[5 : 1 + length]
    if kind == "R":
        return kind, {"code": str(struct.unpack("!i", payload[:4])[0])}
    fields = {}
    for part in payload.split(b"\0"):
        if part:
            fields[chr(part[0])] = part[1:].decode()
    return kind, fields


def current_user(p, dbname: str, user: str, password: str | None = None, **kw) -> str:
    return p.sql("select current_user", dbname=dbname, user=user, password=password, **kw)[0][0]


def assert_no_passwords(p, *passwords: str) -> None:
    text = p.log_text()
    assert text, "the pooler log is empty"
    for secret in passwords:
        assert secret not in text, f"password {secret!r} appears in the pooler log"


# -- frontend: none and block --------------------------------------------------------------


def test_auth_none_accepts_any_password(pooler):
    p = pooler(make_config(route("p0", CLIENT, authentication="none", storage_user="postgres")))
    assert current_user(p, "p0", CLIENT) == "postgres"
    assert current_user(p, "p0", CLIENT, "whatever") == "postgres"


def test_auth_block_refuses_with_28000(pooler):
    p = pooler(make_config(route("p0", CLIENT, authentication="block", storage_user="postgres")))
    kind, fields = startup_reply(p.port, "p0", CLIENT)
    assert kind == "E"
    assert fields["S"] == "FATAL"
    assert fields["C"] == "28000"
    assert fields["M"].startswith("pooler: ")
    assert fields["M"].endswith(f"user blocked: p0 {CLIENT}")
    with pytest.raises(psycopg.OperationalError, match=f"user blocked: p0 {CLIENT}"):
        p.connect("p0", CLIENT)
    assert p.is_running()


# -- frontend: password methods x stored forms -------------------------------------------

CASES = [
    ("clear_text", "plain"),
    ("clear_text", "md5"),
    ("clear_text", "scram"),
    ("md5", "plain"),
    ("md5", "md5"),
    ("scram-sha-256", "plain"),
    ("scram-sha-256", "scram"),
]


@pytest.mark.parametrize(("method", "form"), CASES)
def test_client_password_methods(pooler, method, form):
    password = stored(form, CLIENT_PW, CLIENT)
    p = pooler(
        make_config(
            route("p0", CLIENT, authentication=method, password=password, storage_user="postgres"),
            **LOUD,
        )
    )
    assert current_user(p, "p0", CLIENT, CLIENT_PW) == "postgres"
    with pytest.raises(
        psycopg.OperationalError, match=f'password authentication failed for user "{CLIENT}"'
    ):
        p.connect("p0", CLIENT, WRONG_PW)
    with pytest.raises(psycopg.OperationalError):
        p.connect("p0", CLIENT)  # no password at all: libpq gives up or the pooler refuses
    # still serving after the failures
    assert current_user(p, "p0", CLIENT, CLIENT_PW) == "postgres"
    assert_no_passwords(p, CLIENT_PW, WRONG_PW, password)


@pytest.mark.parametrize("method", ["clear_text", "md5", "scram-sha-256"])
async def test_wrong_password_is_fatal_28p01(pooler, method):
    p = pooler(
        make_config(
            route("p0", CLIENT, authentication=method, password=CLIENT_PW, storage_user="postgres")
        )
    )
    with pytest.raises(asyncpg.InvalidPasswordError) as info:
        await asyncpg.connect(
            host=HOST, port=p.port, user=CLIENT, password=WRONG_PW, database="p0", ssl=False
        )
    assert info.value.sqlstate == "28P01"
    assert str(info.value).startswith("pooler: ")
    assert f'password authentication failed for user "{CLIENT}"' in str(info.value)
    conn = await asyncpg.connect(
        host=HOST, port=p.port, user=CLIENT, password=CLIENT_PW, database="p0", ssl=False
    )
    try:
        assert await conn.fetchval("select 1") == 1
    finally:
        await conn.close()


def test_psql_with_md5_and_scram_client_auth(pooler, pg):
    p = pooler(
        make_config(
            [
                route(
                    "p1", CLIENT, authentication="md5", password=CLIENT_PW, storage_user="postgres"
                ),
                route(
                    "p2",
                    CLIENT,
                    authentication="scram-sha-256",
                    password=make_scram_secret(CLIENT_PW),
                    storage_user="postgres",
                ),
            ]
        )
    )
    for db in ("p1", "p2"):
        argv = [pg.binary("psql"), "-X", "-At", "-h", HOST, "-p", str(p.port), "-U", CLIENT]
        argv += ["-d", db, "-c", "select current_database()"]
        env = {**os.environ, "PGPASSWORD": CLIENT_PW, "PGSSLMODE": "disable"}
        out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=20, check=False)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == db


# -- backend: the pooler logs in to PostgreSQL -----------------------------------------


@pytest.mark.parametrize(
    ("user", "password"),
    [(SCRAM_USER, SCRAM_PW), (MD5_USER, MD5_PW), (PLAIN_USER, PLAIN_PW)],
    ids=["scram", "md5", "cleartext"],
)
def test_backend_login_with_storage_password(pooler, pg, user, password):
    p = pooler(
        make_config(
            [
                # the client's own name is the server user
                route("p0", user, authentication="none", storage_password=password),
                # a wildcard rule with an explicit storage_user
                route("p1", authentication="none", storage_user=user, storage_password=password),
            ],
            **LOUD,
        )
    )
    assert current_user(p, "p0", user) == user
    assert current_user(p, "p1", "somebody") == user
    # PostgreSQL really asked for that method (log_connections names it)
    assert_no_passwords(p, password)


@pytest.mark.parametrize(
    ("user", "password"),
    [(SCRAM_USER, SCRAM_PW), (MD5_USER, MD5_PW), (PLAIN_USER, PLAIN_PW)],
    ids=["scram", "md5", "cleartext"],
)
def test_wrong_storage_password_fails_cleanly(pooler, user, password):
    p = pooler(
        make_config(
            [
                route("p0", user, authentication="none", storage_password=WRONG_PW),
                route("p1", user, authentication="none", storage_password=password),
            ],
            **LOUD,
        )
    )
    for _ in range(3):
        with pytest.raises(psycopg.OperationalError) as info:
            p.connect("p0", user)
        assert "pooler: " in str(info.value)
    assert p.is_running()
    # other routes (and a retry) are unaffected
    assert current_user(p, "p1", user) == user
    assert_no_passwords(p, password, WRONG_PW)


@pytest.mark.parametrize("pool", ["session", "transaction"])
def test_clear_text_client_password_is_used_for_server_login(pooler, pool):
    # the rule stores only a SCRAM secret: the pooler cannot log in to PostgreSQL with it,
    # so it must reuse the cleartext password the client sent
    p = pooler(
        make_config(
            route(
                "p0",
                SCRAM_USER,
                authentication="clear_text",
                password=make_scram_secret(SCRAM_PW),
                pool=pool,
            ),
            **LOUD,
        )
    )
    with p.connect("p0", SCRAM_USER, SCRAM_PW) as conn:
        assert conn.execute("select current_user").fetchone()[0] == SCRAM_USER
        assert conn.execute("select 2").fetchone()[0] == 2
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        p.connect("p0", SCRAM_USER, WRONG_PW)
    assert_no_passwords(p, SCRAM_PW, WRONG_PW)


def test_plain_route_password_is_used_for_server_login(pooler):
    # md5 client auth with a plain `password`: the same password logs in to PostgreSQL
    p = pooler(make_config(route("p0", MD5_USER, authentication="md5", password=MD5_PW), **LOUD))
    assert current_user(p, "p0", MD5_USER, MD5_PW) == MD5_USER
    assert_no_passwords(p, MD5_PW)


def test_stored_md5_route_password_logs_in_to_md5_server(pooler):
    # odyssey §2.5: "if the configured password is already an md5… string it is used as
    # the inner hash" when PostgreSQL asks for md5
    p = pooler(
        make_config(
            route("p0", MD5_USER, authentication="md5", password=md5_hash(MD5_PW, MD5_USER))
        )
    )
    assert current_user(p, "p0", MD5_USER, MD5_PW) == MD5_USER


def test_no_password_for_server_login_is_an_error(pooler):
    p = pooler(make_config(route("p0", SCRAM_USER, authentication="none")))
    with pytest.raises(psycopg.OperationalError, match="pooler: "):
        p.connect("p0", SCRAM_USER)
    assert p.is_running()


async def test_asyncpg_scram_end_to_end(pooler):
    p = pooler(
        make_config(
            route(
                "p0",
                SCRAM_USER,
                authentication="scram-sha-256",
                password=make_scram_secret(SCRAM_PW),
                storage_password=SCRAM_PW,
                pool="session",
            ),
            **LOUD,
        )
    )
    conn = await asyncpg.connect(
        host=HOST, port=p.port, user=SCRAM_USER, password=SCRAM_PW, database="p0", ssl=False
    )
    try:
        assert await conn.fetchval("select current_user") == SCRAM_USER
        assert await conn.fetchval("select $1::int * 2", 21) == 42
        rows = await conn.fetch("select aid from pgbench_accounts where aid <= $1", 3)
        assert [r["aid"] for r in rows] == [1, 2, 3]
    finally:
        await conn.close()
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(
            host=HOST, port=p.port, user=SCRAM_USER, password=WRONG_PW, database="p0", ssl=False
        )
    assert_no_passwords(p, SCRAM_PW, WRONG_PW)


# -- broken authentication exchanges -------------------------------------------------------


def _auth_exchange(port: int, user: str, answer: bytes) -> bytes:
    """Startup as ``user``, wait for the authentication request, send ``answer`` raw and
    return everything the pooler sends until it closes."""
    body = struct.pack("!i", 196608) + b"user\0" + user.encode() + b"\0database\0p0\0\0"
    with socket.create_connection((HOST, port), timeout=5) as sock:
        sock.sendall(struct.pack("!i", len(body) + 4) + body)
        first = sock.recv(5)
        assert first[:1] == b"R", first
        length = struct.unpack("!i", first[1:5])[0]
        rest = b""
        while len(rest) < length - 4:
            rest += sock.recv(length - 4 - len(rest))
        sock.sendall(answer)
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)
        data = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            data += chunk
    return data


def _password_message(payload: bytes) -> bytes:
    return b"p" + struct.pack("!i", len(payload) + 4) + payload


BROKEN_ANSWERS = {
    "query_instead_of_password": b"Q" + struct.pack("!i", 13) + b"select 1\0",
    "terminate": b"X\0\0\0\4",
    "empty_password": _password_message(b""),
    "not_utf8": _password_message(b"\xff\xfe\xfd\0"),
    "garbage_sasl": _password_message(b"\x01\x02garbage"),
    "sasl_wrong_mechanism": _password_message(b"SCRAM-SHA-1\0" + struct.pack("!i", 3) + b"abc"),
    "sasl_bad_length": _password_message(b"SCRAM-SHA-256\0" + struct.pack("!i", 1000) + b"n,,"),
    "huge_length": b"p" + struct.pack("!i", 0x7FFFFFF0),
}


@pytest.mark.parametrize("answer", list(BROKEN_ANSWERS))
def test_broken_auth_answer_is_refused_cleanly(pooler, answer):
    methods = {"u_clear": "clear_text", "u_md5": "md5", "u_scram": "scram-sha-256"}
    p = pooler(
        make_config(
            [
                route(
                    "p0", user, authentication=method, password=CLIENT_PW, storage_user="postgres"
                )
                for user, method in methods.items()
            ]
        )
    )
    for user in methods:
        reply = _auth_exchange(p.port, user, BROKEN_ANSWERS[answer])
        # an ErrorResponse (never AuthenticationOk) or a plain close
        assert reply == b"" or reply[:1] == b"E", (user, reply)
        assert b"R\0\0\0\x08\0\0\0\0" not in reply
    assert p.is_running()
    for user in methods:
        assert current_user(p, "p0", user, CLIENT_PW) == "postgres"
