"""TLS through a real `pooler serve`: the listen side (psql / psycopg with sslmode require and
verify-full, `tls` modes, `cert` authentication by client-certificate CN, hostssl routing) and
the storage side (libpq sslmode semantics against a PostgreSQL started with ssl=on).

Certificates are made here with trustme: one CA signs the pooler's certificate (SAN localhost
and 127.0.0.1), the client certificates (CN alice, mallory, postgres) and the ssl PostgreSQL's
certificate (SAN 127.0.0.1 only, so verify_full to "localhost" must fail); a second CA is the
wrong one.
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import struct
import subprocess
from pathlib import Path
from types import SimpleNamespace

import psycopg
import pytest
import trustme
from harness import HOST, Raw, free_port, make_config, release_port, require_pg, route, storage

from pooler.pgcluster import PG_OS_USER, PgCluster

SSL_REQUEST = struct.pack("!ii", 8, 80877103)


def startup_packet(user: str = "postgres", database: str = "p0") -> bytes:
    body = struct.pack("!i", 196608)
    for key, value in {"user": user, "database": database}.items():
        body += key.encode() + b"\0" + value.encode() + b"\0"
    body += b"\0"
    return struct.pack("!i", len(body) + 4) + body


def first_error(data: bytes) -> dict[str, str]:
    """Fields of the first ErrorResponse in raw backend output."""
    while len(data) >= 5:
        length = struct.unpack("!i", data[1:5])[0]
        if data[:1] == b"E":
            body = data[5 : 1 + length]
            return {chr(p[0]): p[1:].decode() for p in body.split(b"\0") if p}
        data = data[1 + length :]
    raise AssertionError(f"no ErrorResponse in {data!r}")


def read_all(sock: socket.socket | ssl.SSLSocket, timeout: float = 5) -> bytes:
    sock.settimeout(timeout)
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, ssl.SSLError):
            return data
        if not chunk:
            return data
        data += chunk


def tls_startup_error(
    port: int, ca: str, client: tuple[str, str] | None, database: str = "p0"
) -> dict[str, str]:
    """SSLRequest, handshake (with an optional client certificate), StartupMessage: the
    fields of the ErrorResponse that must follow (psycopg gives no SQLSTATE for a failed
    connection)."""
    ctx = ssl.create_default_context(cafile=ca)
    if client is not None:
        ctx.load_cert_chain(*client)
    with socket.create_connection((HOST, port), timeout=5) as raw:
        raw.sendall(SSL_REQUEST)
        assert raw.recv(1) == b"S"
        with ctx.wrap_socket(raw, server_hostname="localhost") as sock:
            sock.sendall(startup_packet(database=database))
            return first_error(read_all(sock))


# -- certificates ----------------------------------------------------------------------


def _write_key(path: Path, blob: trustme.Blob) -> str:
    blob.write_to_path(str(path))
    path.chmod(0o600)  # libpq refuses a client key others can read
    return str(path)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    d = tmp_path_factory.mktemp("tls")
    ca, wrong_ca = trustme.CA(), trustme.CA()
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    wrong_ca.cert_pem.write_to_path(str(d / "wrong_ca.pem"))
    server = ca.issue_cert("localhost", "127.0.0.1", common_name="localhost")
    server.cert_chain_pems[0].write_to_path(str(d / "server.pem"))
    _write_key(d / "server.key", server.private_key_pem)
    ns = SimpleNamespace(
        dir=d,
        ca=str(d / "ca.pem"),
        wrong_ca=str(d / "wrong_ca.pem"),
        server_cert=str(d / "server.pem"),
        server_key=str(d / "server.key"),
        ca_obj=ca,
    )
    for cn in ("alice", "mallory", "postgres"):
        cert = ca.issue_cert(f"{cn}.example", common_name=cn)
        cert.cert_chain_pems[0].write_to_path(str(d / f"{cn}.pem"))
        setattr(ns, cn, (str(d / f"{cn}.pem"), _write_key(d / f"{cn}.key", cert.private_key_pem)))
    return ns


def tls_listen(certs: SimpleNamespace, mode: str, *, ca: bool = False) -> dict[str, str]:
    listen = {"tls": mode, "tls_cert_file": certs.server_cert, "tls_key_file": certs.server_key}
    if ca:
        listen["tls_ca_file"] = certs.ca
    return listen


# -- listen side -----------------------------------------------------------------------


def test_psql_sslmode_require_and_verify_full(pooler, pg, certs):
    p = pooler(make_config(route(), listen=tls_listen(certs, "require")))
    env = {**os.environ, "PGCONNECT_TIMEOUT": "10"}
    for conninfo in (
        f"host={HOST} port={p.port} user=postgres dbname=p0 sslmode=require",
        f"host=localhost hostaddr={HOST} port={p.port} user=postgres dbname=p0 "
        f"sslmode=verify-full sslrootcert={certs.ca}",
        f"host={HOST} port={p.port} user=postgres dbname=p0 "
        f"sslmode=verify-full sslrootcert={certs.ca}",
    ):
        out = subprocess.run(
            [pg.binary("psql"), conninfo, "-Atc", "select 41 + 1", "-c", r"\conninfo"],
            capture_output=True,
            text=True,
            env=env,
            timeout=20,
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith("42\n")
        assert "SSL connection" in out.stdout
    # verify-full with a CA that did not sign the pooler's certificate: refused by psql.
    out = subprocess.run(
        [
            pg.binary("psql"),
            f"host={HOST} port={p.port} user=postgres dbname=p0 sslmode=verify-full "
            f"sslrootcert={certs.wrong_ca}",
            "-c",
            "select 1",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=20,
    )
    assert out.returncode != 0
    assert "certificate verify failed" in out.stderr


def test_psycopg_through_tls_listen(pooler, certs):
    p = pooler(make_config(route(pool="transaction"), listen=tls_listen(certs, "require")))
    with p.connect("p0", sslmode="verify-full", sslrootcert=certs.ca) as conn:
        assert conn.pgconn.ssl_in_use
        assert conn.execute("select sum(x) from generate_series(1, 1000) x").fetchone()[0] == (
            500500
        )
        big = conn.execute("select repeat('x', 1000000)").fetchone()[0]
        assert len(big) == 1000000


def test_tls_protocols_bound_the_version(pooler, certs):
    listen = {**tls_listen(certs, "require"), "tls_protocols": "tlsv1.2"}
    p = pooler(make_config(route(), listen=listen))
    with p.connect("p0", sslmode="require") as conn:
        assert conn.pgconn.ssl_in_use
        assert conn.execute("select 1").fetchone()[0] == 1
    with pytest.raises(psycopg.OperationalError):
        p.connect("p0", sslmode="require", ssl_min_protocol_version="TLSv1.3")
    assert p.wait_for_log("TLS handshake failed")


def test_require_rejects_plaintext_startup(pooler, certs):
    p = pooler(make_config(route(), listen=tls_listen(certs, "require")))
    with socket.create_connection((HOST, p.port), timeout=5) as sock:
        sock.sendall(startup_packet())
        fields = first_error(read_all(sock))
    assert fields["S"] == "FATAL"
    assert fields["C"] == "08P01"
    assert "SSL is required" in fields["M"]
    with pytest.raises(psycopg.OperationalError, match="SSL is required"):
        p.connect("p0", sslmode="disable")
    # sslmode=prefer goes on with TLS
    with p.connect("p0", sslmode="prefer") as conn:
        assert conn.pgconn.ssl_in_use


def test_disable_answers_n_and_allow_takes_both(pooler, certs):
    p = pooler(make_config(route()))  # tls "disable" (the default)
    with socket.create_connection((HOST, p.port), timeout=5) as sock:
        sock.sendall(SSL_REQUEST)
        assert sock.recv(1) == b"N"
    with pytest.raises(psycopg.OperationalError, match="does not support SSL"):
        p.connect("p0", sslmode="require")

    q = pooler(make_config(route(), listen=tls_listen(certs, "allow")))
    with q.connect("p0", sslmode="require") as conn:
        assert conn.pgconn.ssl_in_use
    with q.connect("p0", sslmode="disable") as conn:
        assert not conn.pgconn.ssl_in_use
        assert conn.execute("select 1").fetchone()[0] == 1


def test_bytes_after_sslrequest_drop_the_client(pooler, certs):
    p = pooler(make_config(route(), listen=tls_listen(certs, "require")))
    with socket.create_connection((HOST, p.port), timeout=5) as sock:
        sock.sendall(SSL_REQUEST + startup_packet())  # no wait for the answer
        data = read_all(sock)
    assert data[:1] == b"E"  # no S: the extra bytes were already there
    fields = first_error(data)
    assert fields["C"] == "08P01"
    assert "received unencrypted data after SSL request" in fields["M"]
    with p.connect("p0", sslmode="require") as conn:  # the pooler is fine
        assert conn.execute("select 1").fetchone()[0] == 1


def test_verify_ca_listen_needs_a_client_certificate(pooler, certs):
    p = pooler(make_config(route(), listen=tls_listen(certs, "verify_ca", ca=True)))
    with pytest.raises(psycopg.OperationalError):
        p.connect("p0", sslmode="require", connect_timeout=5)
    cert, key = certs.alice
    with p.connect("p0", sslmode="verify-ca", sslrootcert=certs.ca, sslcert=cert, sslkey=key) as c:
        assert c.execute("select 1").fetchone()[0] == 1


def test_cert_authentication_by_common_name(pooler, certs):
    routes = [
        route("p0", "postgres", authentication="cert", auth_common_name="alice"),
        route("p1", "postgres", authentication="cert", auth_common_name=Raw("default")),
    ]
    p = pooler(make_config(routes, listen=tls_listen(certs, "require", ca=True)))

    def connect(db: str, who: str) -> psycopg.Connection:
        cert, key = getattr(certs, who)
        return p.connect(db, sslmode="require", sslrootcert=certs.ca, sslcert=cert, sslkey=key)

    with connect("p0", "alice") as conn:
        assert conn.execute("select current_user").fetchone()[0] == "postgres"
    with pytest.raises(psycopg.OperationalError, match="certificate authentication failed"):
        connect("p0", "mallory")
    fields = tls_startup_error(p.port, certs.ca, certs.mallory)
    assert (fields["S"], fields["C"]) == ("FATAL", "28000")
    assert fields["M"].endswith(
        'certificate authentication failed for user "postgres": '
        'common name "mallory" is not allowed'
    )
    fields = tls_startup_error(p.port, certs.ca, None)  # TLS without a client certificate
    assert fields["C"] == "28000"
    assert "requires a valid client certificate" in fields["M"]
    # `auth_common_name default`: the CN must be the rule's user name
    with connect("p1", "postgres") as conn:
        assert conn.execute("select 1").fetchone()[0] == 1
    assert tls_startup_error(p.port, certs.ca, certs.alice, "p1")["C"] == "28000"


def test_cert_authentication_needs_tls(pooler, certs):
    p = pooler(
        make_config(
            route("p0", "postgres", authentication="cert", auth_common_name="alice"),
            listen=tls_listen(certs, "allow", ca=True),
        )
    )
    with socket.create_connection((HOST, p.port), timeout=5) as sock:
        sock.sendall(startup_packet())
        fields = first_error(read_all(sock))
    assert fields["C"] == "28000"
    assert "connection is not TLS" in fields["M"]


def test_hostssl_and_hostnossl_rules_see_tls(pooler, certs):
    routes = [
        route().replace("user default {", "user default hostssl {"),
        route(authentication="block").replace("user default {", "user default hostnossl {"),
    ]
    p = pooler(make_config(routes, listen=tls_listen(certs, "allow")))
    with p.connect("p0", sslmode="require") as conn:
        assert conn.execute("select 1").fetchone()[0] == 1
    with pytest.raises(psycopg.OperationalError, match="user blocked"):
        p.connect("p0", sslmode="disable")


# -- storage side ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def ssl_pg(certs: SimpleNamespace):
    """A second PostgreSQL with ssl=on; its certificate is for 127.0.0.1 only."""
    require_pg()
    port = free_port()
    cluster = PgCluster(port, max_connections=50)
    cert = certs.ca_obj.issue_cert("127.0.0.1", common_name="127.0.0.1")
    tls_dir = cluster.basedir / "tls"
    tls_dir.mkdir()
    crt, key = tls_dir / "server.crt", tls_dir / "server.key"
    cert.cert_chain_pems[0].write_to_path(str(crt))
    cert.private_key_pem.write_to_path(str(key))
    for path in (tls_dir, crt, key):
        path.chmod(0o700 if path.is_dir() else 0o600)
        if cluster.as_root:
            shutil.chown(path, user=PG_OS_USER, group=None)
    cluster.settings.update(ssl=True, ssl_cert_file=str(crt), ssl_key_file=str(key))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.remove()
        release_port(port)


def _storage_config(ssl_pg: PgCluster, host: str = HOST, **tls: str) -> str:
    return make_config(
        route("postgres", "postgres", storage="ssl_pg", pool="transaction"),
        storages=[storage("ssl_pg", host=host, port=ssl_pg.port, **tls)],
    )


SSL_IN_USE = "select ssl from pg_stat_ssl where pid = pg_backend_pid()"


def test_storage_require_uses_tls(pooler, ssl_pg):
    p = pooler(_storage_config(ssl_pg, tls="require"))
    with p.connect("postgres") as conn:
        assert conn.execute(SSL_IN_USE).fetchone()[0] is True
    q = pooler(_storage_config(ssl_pg, tls="disable"))
    with q.connect("postgres") as conn:
        assert conn.execute(SSL_IN_USE).fetchone()[0] is False
    r = pooler(_storage_config(ssl_pg, tls="prefer"))
    with r.connect("postgres") as conn:
        assert conn.execute(SSL_IN_USE).fetchone()[0] is True


def test_storage_verify_with_the_right_and_the_wrong_ca(pooler, ssl_pg, certs):
    p = pooler(_storage_config(ssl_pg, tls="verify_full", tls_ca_file=certs.ca))
    with p.connect("postgres") as conn:
        assert conn.execute(SSL_IN_USE).fetchone()[0] is True
    # verify_ca does not look at the host name; verify_full does.
    q = pooler(_storage_config(ssl_pg, host="localhost", tls="verify_ca", tls_ca_file=certs.ca))
    with q.connect("postgres") as conn:
        assert conn.execute(SSL_IN_USE).fetchone()[0] is True
    r = pooler(_storage_config(ssl_pg, host="localhost", tls="verify_full", tls_ca_file=certs.ca))
    with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
        r.connect("postgres")
    w = pooler(_storage_config(ssl_pg, tls="verify_ca", tls_ca_file=certs.wrong_ca))
    with pytest.raises(psycopg.OperationalError) as info:
        w.connect("postgres")
    message = str(info.value)
    assert f"failed to connect to remote server {HOST}:{ssl_pg.port}" in message
    assert "certificate verify failed" in message
    w.wait_for_log("certificate verify failed")


def test_storage_require_against_a_server_without_ssl(pooler, pg):
    p = pooler(
        make_config(route(storage="plain"), storages=[storage("plain", tls="require")]),
    )
    with pytest.raises(psycopg.OperationalError, match="server does not support SSL"):
        p.connect("p0")
    q = pooler(make_config(route(storage="plain"), storages=[storage("plain", tls="prefer")]))
    with q.connect("p0") as conn:
        assert conn.execute("select 1").fetchone()[0] == 1
