"""LDAP client authentication (issue 18 item 9) against a real slapd (tests/slapd.py).

Three rules: search+bind (`ldapbasedn`), simple bind (`ldapprefix`/`ldapsuffix`), and
search+bind choosing the server login from `ldap_storage_credentials_attr`. The server login
is otherwise `postgres` (trusted), so `current_user` tells which login LDAP chose.
"""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from harness import HOST, MD5_PW, MD5_USER, free_port, make_config, release_port
from slapd import ADMIN_DN, ADMIN_PW, PEOPLE_DN, Slapd, require_slapd


@pytest.fixture(scope="module")
def slapd() -> Iterator[Slapd]:
    binary = require_slapd()
    port = free_port()
    server = Slapd(port, binary)
    try:
        server.start()
        server.add_user("alice", "alice_pw", description=["other_thing", f"{HOST}_p2_pg"])
        server.add_user("bob", "bob_pw", description=f"{HOST}_p1_pg")
        yield server
    finally:
        server.stop()
        release_port(port)


def ldap_config(slapd: Slapd) -> str:
    endpoints = f"""
ldap_endpoint "search" {{
\tldapserver "{HOST}"
\tldapport {slapd.port}
\tldapscheme "ldap"
\tldapbasedn "{PEOPLE_DN}"
\tldapbinddn "{ADMIN_DN}"
\tldapbindpasswd "{ADMIN_PW}"
\tldapsearchattribute "uid"
\tldapsearchfilter "(objectClass=inetOrgPerson)"
}}

ldap_endpoint "simple" {{
\tldapserver "{HOST}"
\tldapport {slapd.port}
\tldapprefix "uid="
\tldapsuffix ",{PEOPLE_DN}"
}}
"""
    rules = f"""
database "p0" {{
\tuser default {{
\t\tauthentication "clear_text"
\t\tldap_endpoint_name "search"
\t\tstorage "postgres_server"
\t\tstorage_user "postgres"
\t\tpool "session"
\t}}
}}

database "p1" {{
\tuser default {{
\t\tauthentication "clear_text"
\t\tldap_endpoint_name "simple"
\t\tstorage "postgres_server"
\t\tstorage_user "postgres"
\t\tpool "transaction"
\t}}
}}

database "p2" {{
\tuser default {{
\t\tauthentication "clear_text"
\t\tldap_endpoint_name "search"
\t\tldap_storage_credentials_attr "description"
\t\tldap_storage_credentials "nope" {{
\t\t\tldap_storage_username "postgres"
\t\t\tldap_storage_password "x"
\t\t}}
\t\tldap_storage_credentials "pg" {{
\t\t\tldap_storage_username "{MD5_USER}"
\t\t\tldap_storage_password "{MD5_PW}"
\t\t}}
\t\tstorage "postgres_server"
\t\tpool "session"
\t}}
}}
"""
    return make_config().replace(
        "database default {", endpoints + rules + "\ndatabase default {", 1
    )


@pytest.fixture(scope="module")
def refusal():
    def refused(p, dbname: str, user: str, password: str) -> str:
        with pytest.raises(psycopg.OperationalError) as info:
            p.connect(dbname, user, password)
        return str(info.value)

    return refused


def current_user(p, dbname: str, user: str, password: str) -> str:
    return p.sql("select current_user", dbname=dbname, user=user, password=password)[0][0]


def test_ldap_search_then_bind(pooler, slapd, refusal) -> None:
    p = pooler(ldap_config(slapd))
    assert current_user(p, "p0", "alice", "alice_pw") == "postgres"
    assert current_user(p, "p0", "bob", "bob_pw") == "postgres"
    assert 'password authentication failed for user "alice"' in refusal(p, "p0", "alice", "bad")
    assert "password authentication failed" in refusal(p, "p0", "mallory", "alice_pw")
    refusal(p, "p0", "alice", "")  # (libpq itself refuses to send an empty password)
    assert "password authentication failed" in refusal(p, "p0", "*", "alice_pw")  # no injection
    p.wait_for_log("ldap authentication failed")


def test_ldap_simple_bind(pooler, slapd, refusal) -> None:
    p = pooler(ldap_config(slapd))
    assert current_user(p, "p1", "bob", "bob_pw") == "postgres"
    assert "password authentication failed" in refusal(p, "p1", "bob", "alice_pw")
    assert "password authentication failed" in refusal(p, "p1", "nobody", "x")


def test_ldap_storage_credentials(pooler, slapd, refusal) -> None:
    p = pooler(ldap_config(slapd))
    # alice's description names HOST_p2_pg: the server login of credentials "pg"
    assert current_user(p, "p2", "alice", "alice_pw") == MD5_USER
    # bob's names p1 only: no credentials for this route
    assert "password authentication failed" in refusal(p, "p2", "bob", "bob_pw")


def test_ldap_server_down_refuses(pooler, slapd, refusal) -> None:
    config = ldap_config(slapd).replace(f"ldapport {slapd.port}", f"ldapport {free_port()}")
    p = pooler(config)
    assert "password authentication failed" in refusal(p, "p0", "alice", "alice_pw")
    p.wait_for_log("ldap server is down")
