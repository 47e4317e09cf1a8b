"""`SET odyssey.target_session_attrs` (virtual_processing) and a listen's target_session_attrs
steer which host of a storage's `host` list serves the client (issue 18): read-write to the
primary, read-only to a standby, against a real primary and streaming replica."""

from __future__ import annotations

import psycopg
import pytest
from harness import HOST, make_config, route, storage


def config(pg, replica, *, listen=None, **rule) -> str:
    hosts = f"{HOST}:{replica.port},{HOST}:{pg.port}"
    return make_config(
        route("p0", "postgres", pool="transaction", **rule),
        storages=storage(host=hosts, port=None),
        listen=listen,
        virtual_processing=True,
    )


def kinds(conn: psycopg.Connection, times: int = 6) -> set[bool]:
    """pg_is_in_recovery() of the servers of `times` transactions."""
    return {conn.execute("select pg_is_in_recovery()").fetchone()[0] for _ in range(times)}


@pytest.mark.parametrize("pool_size", [0, 2])
def test_set_target_session_attrs_picks_the_host(pooler, pg, replica, pool_size):
    p = pooler(config(pg, replica, pool_size=pool_size, pool_timeout=20000))
    with p.connect("p0") as steered, p.connect("p0") as other:
        steered.execute("SET odyssey.target_session_attrs TO 'read-only'")
        assert kinds(steered) == {True}
        assert kinds(other) <= {True, False}  # the rule's `any`: served by either
        steered.execute("SET odyssey.target_session_attrs = 'read-write'")
        assert kinds(steered) == {False}
        steered.execute("SET odyssey.target_session_attrs = 'any'")
        assert kinds(steered) <= {True, False}
        steered.execute("SET odyssey.target_session_attrs = 'prefer-standby'")
        assert kinds(steered) == {True}


def test_a_client_steered_away_from_its_rule_leaves_no_server_to_the_others(pooler, pg, replica):
    """The rule says read-write; one client asks for read-only: it is served by the standby,
    and the rule's other clients still only ever get the primary."""
    p = pooler(config(pg, replica, target_session_attrs="read-write", pool_size=2))
    with p.connect("p0") as steered, p.connect("p0") as other:
        assert kinds(other) == {False}
        steered.execute("SET odyssey.target_session_attrs = 'read-only'")
        for _ in range(4):
            assert kinds(steered, 2) == {True}
            assert kinds(other, 2) == {False}


def test_a_listens_target_session_attrs_steers_its_clients(pooler, pg, replica):
    p = pooler(config(pg, replica, listen={"target_session_attrs": "read-only"}))
    with p.connect("p0") as conn:
        assert kinds(conn) == {True}
        assert conn.execute("show odyssey.target_session_attrs").fetchone() == ("read-only",)


def test_query_parsing_disabled_leaves_the_statements_to_postgresql(pooler, pg):
    """`query_parsing { mode disabled }`: nothing is answered virtually, the server says."""
    p = pooler(
        make_config(route("p0", "postgres", pool="transaction"), virtual_processing=True)
        + "query_parsing {\n\tmode disabled\n}\n"
    )
    with p.connect("p0") as conn, pytest.raises(psycopg.errors.UndefinedObject):
        conn.execute("show odyssey.target_session_attrs")  # PostgreSQL knows no such setting
