"""md5 and SCRAM-SHA-256, both sides, against known values and scramp."""

from __future__ import annotations

import hashlib
from base64 import b64decode, b64encode

import pytest
import scramp

from pooler.protocol import auth
from pooler.protocol.auth import ScramClient, ScramServer
from pooler.protocol.errors import AuthFailed, ProtocolError

SALT = b"\x01\x02\x03\x04"

# --------------------------------------------------------------------------- md5


def test_md5_known_value():
    # the well-known pg_authid value for user postgres / password postgres
    assert auth.md5_password_hash("postgres", "postgres") == "md53175bce1d3201d16594cebf9d7eb3f9d"


def test_md5_response_matches_postgres_algorithm():
    inner = hashlib.md5(b"secretalice").hexdigest()
    expected = "md5" + hashlib.md5(inner.encode() + SALT).hexdigest()
    assert auth.md5_response("alice", "secret", SALT) == expected
    stored = auth.md5_password_hash("alice", "secret")
    assert auth.md5_response("alice", stored, SALT) == expected
    assert auth.verify_md5(expected, "alice", "secret", SALT)
    assert auth.verify_md5(expected, "alice", stored, SALT)
    assert not auth.verify_md5(expected, "alice", "wrong", SALT)
    assert not auth.verify_md5(expected, "bob", "secret", SALT)  # user is part of the hash
    assert not auth.verify_md5(expected, "alice", "secret", b"\0\0\0\0")
    assert not auth.verify_md5(expected, "alice", auth.make_scram_secret("secret"), SALT)


def test_verify_cleartext_all_kinds():
    for configured in (
        "secret",
        auth.md5_password_hash("alice", "secret"),
        auth.make_scram_secret("secret"),
    ):
        assert auth.verify_cleartext("secret", configured, "alice")
        assert not auth.verify_cleartext("Secret", configured, "alice")
        assert not auth.verify_cleartext("", configured, "alice")


def test_password_kind():
    assert auth.password_kind("secret") == "plain"
    assert auth.password_kind(auth.md5_password_hash("u", "p")) == "md5"
    assert auth.password_kind(auth.make_scram_secret("p")) == "scram"
    assert auth.password_kind("md5notreallyahash") == "plain"
    assert auth.password_kind("SCRAM-SHA-256$broken") == "plain"


# --------------------------------------------------------------------------- SCRAM secrets


def test_scram_secret_matches_scramp():
    salt = bytes(range(16))
    secret = auth.make_scram_secret("pencil", salt=salt, iterations=4096)
    s_salt, stored, server, _i = scramp.ScramMechanism().make_auth_info(
        "pencil", iteration_count=4096, salt=salt
    )
    assert secret == (
        f"SCRAM-SHA-256$4096:{b64encode(s_salt).decode()}"
        f"${b64encode(stored).decode()}:{b64encode(server).decode()}"
    )
    parsed = auth.parse_scram_secret(secret)
    assert parsed.iterations == 4096 and parsed.salt == salt and parsed.stored_key == stored
    assert str(parsed) == secret
    assert b64encode(stored).decode() not in repr(parsed)


def test_non_ascii_password_saslprep():
    # U+00A0 (no-break space) maps to a space under SASLprep, as in PostgreSQL
    secret = auth.make_scram_secret("pass\u00a0word")
    assert auth.verify_cleartext("pass word", secret, "u")


def test_ascii_control_chars_used_as_is():
    secret = auth.make_scram_secret("tab\there")
    assert auth.verify_cleartext("tab\there", secret, "u")
    assert _exchange(ScramServer(secret), ScramClient("u", "tab\there"))


# --------------------------------------------------------------------------- SCRAM exchanges


def _exchange(server: ScramServer, client: ScramClient) -> bool:
    mech = client.choose_mechanism(list(server.mechanisms))
    server_first = server.handle_client_first(client.client_first(), mech)
    server_final = server.handle_client_final(client.handle_server_first(server_first))
    client.handle_server_final(server_final)
    return client.done and server.done


@pytest.mark.parametrize(
    "configured", ["s3cret", auth.make_scram_secret("s3cret")], ids=["plain", "scram-secret"]
)
def test_scram_full_exchange(configured):
    assert _exchange(ScramServer(configured), ScramClient("alice", "s3cret"))


def test_scram_stored_secret_low_iterations():
    secret = auth.make_scram_secret("pw", iterations=16)  # PostgreSQL >= 16 allows this
    assert _exchange(ScramServer(secret), ScramClient("bob", "pw"))


@pytest.mark.parametrize(
    "configured", ["s3cret", auth.make_scram_secret("s3cret")], ids=["plain", "scram-secret"]
)
def test_scram_wrong_password(configured):
    server, client = ScramServer(configured), ScramClient("alice", "wrong")
    client_final = client.handle_server_first(server.handle_client_first(client.client_first()))
    with pytest.raises(AuthFailed) as ei:
        server.handle_client_final(client_final)
    assert ei.value.sqlstate == "28P01"
    assert "s3cret" not in str(ei.value) and "wrong" not in repr(ei.value)
    assert not server.done and server.recovered_keys is None


def test_scram_mock_always_fails():
    server, client = ScramServer(None, user="ghost"), ScramClient("ghost", "anything")
    first = server.handle_client_first(client.client_first())
    # the salt is stable per user name, as with PostgreSQL's mock authentication
    salt = first.split(b",")[1]
    assert (
        salt == ScramServer(None, user="ghost").handle_client_first(b"n,,n=,r=abc").split(b",")[1]
    )
    with pytest.raises(AuthFailed):
        server.handle_client_final(client.handle_server_first(first))


def test_libpq_style_empty_username():
    secret = auth.make_scram_secret("pw")
    server = ScramServer(secret)
    client = ScramClient("", "pw")
    assert client.client_first().startswith(b"n,,n=,r=")
    client_final = client.handle_server_first(
        server.handle_client_first(b"n,,n=,r=" + client._nonce.encode())
    )
    assert server.handle_client_final(client_final)


def test_scramp_client_against_our_server():
    c = scramp.ScramClient(["SCRAM-SHA-256"], "alice", "pw")
    s = ScramServer(auth.make_scram_secret("pw"))
    c.set_server_first(s.handle_client_first(c.get_client_first().encode()).decode())
    c.set_server_final(s.handle_client_final(c.get_client_final().encode()).decode())


def test_our_client_against_scramp_server():
    m = scramp.ScramMechanism()
    info = m.make_auth_info("pw")
    s = m.make_server(lambda _user: info)
    c = ScramClient("alice", "pw")
    s.set_client_first(c.client_first().decode())
    s.set_client_final(c.handle_server_first(s.get_server_first().encode()).decode())
    c.handle_server_final(s.get_server_final().encode())
    assert c.done


def test_rfc7677_client_vector():
    c = ScramClient("user", "pencil")
    c._nonce = "rOprNGfwEbeRWgbNEkqO"
    assert c.client_first() == b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
    final = c.handle_server_first(
        b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
    )
    assert final == (
        b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
        b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
    )
    c.handle_server_final(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
    assert c.done


def test_client_rejects_fake_server_signature():
    server, client = ScramServer("pw"), ScramClient("u", "pw")
    server_final = server.handle_client_final(
        client.handle_server_first(server.handle_client_first(client.client_first()))
    )
    forged = b"v=" + b64encode(bytes(32))
    assert server_final != forged
    with pytest.raises(AuthFailed):
        client.handle_server_final(forged)


def test_scram_passthrough_with_recovered_keys():
    secret = auth.make_scram_secret("pw")
    front = ScramServer(secret)
    assert _exchange(front, ScramClient("u", "pw"))
    keys = front.recovered_keys
    assert keys is not None and "client_key" not in repr(keys)
    # the "backend" stores the same secret: the pooler logs in without the password
    assert _exchange(ScramServer(secret), ScramClient("u", keys=keys))
    # a backend with a different salt cannot be reached that way
    with pytest.raises(AuthFailed):
        _exchange(ScramServer(auth.make_scram_secret("pw")), ScramClient("u", keys=keys))


def test_server_rejects_md5_config():
    with pytest.raises(ValueError):
        ScramServer(auth.md5_password_hash("u", "p"))


@pytest.mark.parametrize(
    "first",
    [b"", b"x,,n=,r=a", b"p=tls-server-end-point,,n=,r=a", b"n,,r=abc", b"n,,n=,r=", b"\xff"],
)
def test_server_malformed_client_first(first):
    with pytest.raises(ProtocolError) as ei:
        ScramServer("pw").handle_client_first(first)
    assert ei.value.sqlstate == "08P01"


def test_server_unsupported_features():
    with pytest.raises(ProtocolError) as ei:
        ScramServer("pw").handle_client_first(b"n,a=bob,n=,r=abc")
    assert ei.value.sqlstate == "0A000"
    with pytest.raises(ProtocolError):
        ScramServer("pw").handle_client_first(b"n,,n=,r=abc", "SCRAM-SHA-256-PLUS")


def test_server_malformed_client_final():
    server = ScramServer("pw")
    first = server.handle_client_first(b"n,,n=,r=abc").decode()
    nonce = first.split(",")[0][2:]
    with pytest.raises(ProtocolError):
        server.handle_client_final(f"c=eSws,r={nonce},p={b64encode(bytes(32)).decode()}".encode())
    server = ScramServer("pw")
    server.handle_client_first(b"n,,n=,r=abc")
    with pytest.raises(ProtocolError):
        server.handle_client_final(b"c=biws,r=abcWRONG,p=" + b64encode(bytes(32)))
    with pytest.raises(ProtocolError):  # a second attempt is not allowed
        server.handle_client_final(b"c=biws")


def test_client_rejects_bad_server_first():
    c = ScramClient("u", "pw")
    c.client_first()
    with pytest.raises(ProtocolError):
        c.handle_server_first(b"r=someoneelse,s=QUJD,i=4096")
    c = ScramClient("u", "pw")
    c.client_first()
    with pytest.raises(AuthFailed):
        c.handle_server_first(b"e=invalid-proof")


def test_choose_mechanism():
    assert ScramClient.choose_mechanism(["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]) == "SCRAM-SHA-256"
    with pytest.raises(AuthFailed):
        ScramClient.choose_mechanism(["SCRAM-SHA-256-PLUS"])


def test_no_secrets_in_reprs():
    s = ScramServer("hunter2")
    c = ScramClient("u", "hunter2")
    assert "hunter2" not in repr(s) and "hunter2" not in repr(c)
    secret = auth.parse_scram_secret(auth.make_scram_secret("hunter2"))
    assert b64encode(secret.server_key).decode() not in repr(secret)
    assert b64decode(b64encode(secret.salt)) == secret.salt
