"""Which rule serves a client (odyssey reference §2.2), through a real `pooler serve`.

Each rule sends its clients to a different PostgreSQL database (`storage_db`), so
`select current_database()` tells which rule served a connection. Every rule logs in to
PostgreSQL as the trusted `postgres` role so the client's user name is free.
"""

from __future__ import annotations

import socket
import struct

import psycopg
import pytest
from harness import HOST, Raw, make_config, route

# rule -> backend database that identifies it
SPECIFIC, DB_ONLY, USER_ONLY, FALLBACK = "p0", "p1", "p2", "postgres"


def rule(database: str, user: str, selector: str = "", **keys) -> str:
    """route() with an odyssey address/conn-type selector after the user name."""
    keys.setdefault("storage_user", "postgres")
    text = route(database, user, **keys)
    if selector:
        name = "default" if user == "default" else f'"{user}"'
        text = text.replace(f"user {name} {{", f"user {name} {selector} {{", 1)
    return text


def served_by(p, dbname: str, user: str, **kw) -> str:
    return p.sql("select current_database()", dbname=dbname, user=user, **kw)[0][0]


def startup_error(port: int, database: str, user: str) -> dict[str, str]:
    """A raw v3 startup; the fields of the ErrorResponse that answers it."""
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
                break
            data += chunk
    assert data[:1] == b"E", f"expected an ErrorResponse, got {data!r}"
    fields = {}
    for part in data[5:].split(b"\0"):
        if part:
            fields[chr(part[0])] = part[1:].decode()
    return fields


# Least specific first in the file, so file order and specificity order differ.
MATRIX = [
    rule("default", "default", storage_db=FALLBACK),
    rule("default", "postgres", storage_db=USER_ONLY),
    rule("appdb", "default", storage_db=DB_ONLY),
    rule("appdb", "postgres", storage_db=SPECIFIC),
]


def test_specificity_order(pooler):
    p = pooler(make_config(MATRIX))
    assert served_by(p, "appdb", "postgres") == SPECIFIC  # db + user named
    assert served_by(p, "appdb", "bob") == DB_ONLY  # database "appdb" { user default }
    assert served_by(p, "otherdb", "postgres") == USER_ONLY  # database default { user "postgres" }
    assert served_by(p, "otherdb", "bob") == FALLBACK  # default / default


def test_specificity_does_not_depend_on_file_order(pooler):
    p = pooler(make_config(list(reversed(MATRIX))))
    assert served_by(p, "appdb", "postgres") == SPECIFIC
    assert served_by(p, "appdb", "bob") == DB_ONLY
    assert served_by(p, "otherdb", "postgres") == USER_ONLY
    assert served_by(p, "otherdb", "bob") == FALLBACK


def test_sequential_routing_uses_file_order(pooler):
    rules = [
        rule("appdb", "default", storage_db=DB_ONLY),
        rule("appdb", "postgres", storage_db=SPECIFIC),  # shadowed by the rule above
        rule("default", "postgres", storage_db=USER_ONLY),
        rule("default", "default", storage_db=FALLBACK),
    ]
    p = pooler(make_config(rules, sequential_routing=True))
    assert served_by(p, "appdb", "postgres") == DB_ONLY
    assert served_by(p, "appdb", "bob") == DB_ONLY
    assert served_by(p, "otherdb", "postgres") == USER_ONLY
    assert served_by(p, "otherdb", "bob") == FALLBACK
    # and with the default first in the file, it takes everything
    q = pooler(make_config(MATRIX, sequential_routing=True))
    assert served_by(q, "appdb", "postgres") == FALLBACK
    assert served_by(q, "otherdb", "bob") == FALLBACK


def test_quoted_default_is_an_ordinary_name(pooler):
    # `database "default"` is a database called default, not the wildcard
    p = pooler(
        make_config(
            [
                rule("QUOTED", "postgres", storage_db=SPECIFIC).replace('"QUOTED"', '"default"'),
                rule("default", "default", storage_db=FALLBACK),
            ]
        )
    )
    assert served_by(p, "default", "postgres") == SPECIFIC
    assert served_by(p, "other", "postgres") == FALLBACK


def test_address_selector(pooler):
    p = pooler(
        make_config(
            [
                rule("default", "default", storage_db=FALLBACK),
                rule("appdb", "default", '"10.0.0.0/8"', storage_db=DB_ONLY),
                rule("appdb", "default", '"127.0.0.1/32"', storage_db=SPECIFIC),
                rule("otherdb", "default", '"10.0.0.0/8"', storage_db=USER_ONLY),
            ]
        )
    )
    assert served_by(p, "appdb", "bob") == SPECIFIC  # loopback matches 127.0.0.1/32
    assert served_by(p, "otherdb", "bob") == FALLBACK  # 10.0.0.0/8 does not match us


def test_address_rule_beats_rule_without_address(pooler):
    p = pooler(
        make_config(
            [
                rule("appdb", "default", storage_db=DB_ONLY),
                rule("appdb", "default", '"127.0.0.0/8"', storage_db=SPECIFIC),
            ]
        )
    )
    assert served_by(p, "appdb", "bob") == SPECIFIC


def test_address_mismatch_without_fallback_is_not_found(pooler):
    p = pooler(make_config(rule("appdb", "default", '"10.0.0.0/8"', storage_db=DB_ONLY)))
    fields = startup_error(p.port, "appdb", "bob")
    assert fields["C"] == "3D000"
    assert fields["M"].endswith("route for 'appdb.bob' is not found")


def _with_unix_listener(config: str) -> str:
    # a second listen block without host = unix socket <unix_socket_dir>/.s.PGSQL.<port>
    return config.replace("listen {", "listen {\n\tport {port}\n}\n\nlisten {", 1)


def test_conn_type_host_and_local(pooler):
    config = make_config(
        [
            rule("appdb", "default", "host", storage_db=DB_ONLY),
            rule("appdb", "default", "local", storage_db=SPECIFIC),
            rule("default", "default", storage_db=FALLBACK),
        ],
        unix_socket_dir=Raw('"{workdir}"'),
        unix_socket_mode="0644",
    )
    p = pooler(_with_unix_listener(config))
    assert served_by(p, "appdb", "bob") == DB_ONLY  # TCP client
    dsn = f"host={p.workdir} port={p.port} dbname=appdb user=bob connect_timeout=10"
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute("select current_database()").fetchone()[0] == SPECIFIC
    with psycopg.connect(dsn.replace("appdb", "zzz"), autocommit=True) as conn:
        assert conn.execute("select current_database()").fetchone()[0] == FALLBACK


def test_local_only_rule_does_not_serve_tcp_clients(pooler):
    p = pooler(make_config(rule("appdb", "default", "local", storage_db=DB_ONLY)))
    fields = startup_error(p.port, "appdb", "bob")
    assert fields["C"] == "3D000"
    assert fields["M"].endswith("route for 'appdb.bob' is not found")


def test_no_route_is_fatal_3d000(pooler):
    p = pooler(make_config(rule("appdb", "postgres", storage_db=SPECIFIC)))
    fields = startup_error(p.port, "nodb", "bob")
    assert fields["S"] == "FATAL"
    assert fields["C"] == "3D000"
    assert fields["M"] == fields["M"].split("route for")[0] + "route for 'nodb.bob' is not found"
    assert fields["M"].startswith("pooler: ")
    with pytest.raises(psycopg.OperationalError, match=r"route for 'appdb\.bob' is not found"):
        p.connect("appdb", "bob")
    # the one route still works
    assert served_by(p, "appdb", "postgres") == SPECIFIC


def test_routing_uses_client_database_default_to_user_name(pooler):
    # a startup packet without database: PostgreSQL's rule, database = user name
    p = pooler(
        make_config(
            [
                rule("bob", "bob", storage_db=SPECIFIC),
                rule("default", "default", storage_db=FALLBACK),
            ]
        )
    )
    with psycopg.connect(f"host={HOST} port={p.port} user=bob connect_timeout=10") as conn:
        assert conn.execute("select current_database()").fetchone()[0] == SPECIFIC


def test_options_block_sets_parameters_per_rule(pooler):
    p = pooler(
        make_config(
            [
                rule(
                    "appdb",
                    "default",
                    storage_db="p0",
                    options=Raw('{ "application_name" "rule_a" }'),
                ),
                rule("default", "default", options=Raw('{ "application_name" "rule_b" }')),
            ]
        )
    )
    appdb = p.sql("show application_name", dbname="appdb", user="postgres", connect_timeout=10)
    assert appdb[0][0] == "rule_a"
    assert p.sql("show application_name", dbname="postgres", user="x")[0][0] == "rule_b"
