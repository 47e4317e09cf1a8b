"""The pure parts of LDAP authentication: the search filter and odyssey's choice of storage
credentials from an attribute's values."""

from __future__ import annotations

from pooler.config import LdapCredentials, LdapEndpoint
from pooler.server.ldap_auth import pick_credentials, search_filter


def test_search_filter() -> None:
    assert search_filter(LdapEndpoint("e"), "alice") == "(uid=alice)"
    endpoint = LdapEndpoint("e", ldapsearchattribute="cn", ldapsearchfilter="(ou=dba)")
    assert search_filter(endpoint, "alice") == "(&(cn=alice)(ou=dba))"
    assert search_filter(LdapEndpoint("e"), "*)(uid=*") == r"(uid=\2a\29\28uid=\2a)"


def test_pick_credentials() -> None:
    creds = (LdapCredentials("ro"), LdapCredentials("rw"))
    assert pick_credentials(["h1_db_rw"], "h1", "db", creds) == creds[1]
    assert pick_credentials(["x", "grp:h1_db_ro,other"], "h1", "db", creds) == creds[0]
    assert pick_credentials(["h1_otherdb_rw"], "h1", "db", creds) is None
    assert pick_credentials(["h1_db_admin"], "h1", "db", creds) is None
    assert pick_credentials([], "h1", "db", creds) is None
