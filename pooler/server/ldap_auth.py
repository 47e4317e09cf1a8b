"""LDAP client authentication (`ldap_endpoint`, `ldap_endpoint_name`,
`ldap_storage_credentials*`), as odyssey does it, with ldap3.

A rule with `authentication "clear_text"` and `ldap_endpoint_name` checks the password the
client sends by binding to the endpoint's server as the client:

* with `ldapbasedn`: bind as `ldapbinddn`/`ldapbindpasswd` (anonymous when unset), search the
  subtree of `ldapbasedn` for `(ATTR=USER)` (ATTR = `ldapsearchattribute`, default `uid`;
  `(&(ATTR=USER)FILTER)` with `ldapsearchfilter`); exactly one entry must match, then bind as
  its DN with the client's password;
* without: bind as `ldapprefix` + USER + `ldapsuffix`.

With `ldap_storage_credentials_attr`, the search also reads that attribute of the entry; the
first `ldap_storage_credentials "NAME"` block whose `HOST_DB_NAME` (the storage's host string,
the client's database, the block's name) occurs in one of its values gives the server login
(`ldap_storage_username`/`ldap_storage_password`). None matching refuses the client.

ldap3 blocks, so each check runs in a thread of the worker's default executor.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import ldap3
from ldap3.core.exceptions import LDAPException
from ldap3.utils.conv import escape_filter_chars

from pooler.config import LdapCredentials, LdapEndpoint, Rule, Storage

TIMEOUT = 10  # seconds, connect and each answer


class LdapRefused(Exception):
    """The client may not log in; the message says why (for the log, not the client)."""


@dataclass(frozen=True)
class LdapLogin:
    """A successful check: the server login LDAP chose for the client, if any."""

    storage_user: str | None = None
    storage_password: str | None = None


def _server(endpoint: LdapEndpoint) -> ldap3.Server:
    scheme = endpoint.ldapscheme or "ldap"
    return ldap3.Server(
        endpoint.ldapserver or "",
        port=endpoint.ldapport or None,
        use_ssl=scheme == "ldaps",
        connect_timeout=TIMEOUT,
    )


def _bind(server: ldap3.Server, dn: str, password: str) -> ldap3.Connection:
    """A bound connection, or LdapRefused (wrong password, unknown DN)."""
    conn = ldap3.Connection(
        server, user=dn or None, password=password or None, receive_timeout=TIMEOUT
    )
    if not conn.bind():
        raise LdapRefused(f"bind as '{dn}' failed: {conn.result.get('description')}")
    return conn


def search_filter(endpoint: LdapEndpoint, user: str) -> str:
    attribute = endpoint.ldapsearchattribute or "uid"
    text = f"({attribute}={escape_filter_chars(user)})"
    if endpoint.ldapsearchfilter:
        text = f"(&{text}{endpoint.ldapsearchfilter})"
    return text


def pick_credentials(
    values: list[str], storage_host: str, database: str, credentials: tuple[LdapCredentials, ...]
) -> LdapCredentials | None:
    """The first credentials whose `HOST_DB_NAME` occurs in a value (odyssey's matching)."""
    for value in values:
        if f"{storage_host}_{database}" not in value:
            continue
        for cred in credentials:
            if f"{storage_host}_{database}_{cred.name}" in value:
                return cred
    return None


def check(
    endpoint: LdapEndpoint, rule: Rule, storage: Storage, database: str, user: str, password: str
) -> LdapLogin:
    """Blocking: LdapLogin when `password` is the user's, else LdapRefused (or LDAPException
    when the server cannot be reached)."""
    if not password:
        raise LdapRefused("empty password")  # an unauthenticated bind would succeed
    server = _server(endpoint)
    if not endpoint.ldapbasedn:
        dn = f"{endpoint.ldapprefix or ''}{user}{endpoint.ldapsuffix or ''}"
        _bind(server, dn, password).unbind()
        return LdapLogin()
    attr = rule.ldap_storage_credentials_attr
    searcher = _bind(server, endpoint.ldapbinddn or "", endpoint.ldapbindpasswd or "")
    try:
        searcher.search(
            endpoint.ldapbasedn,
            search_filter(endpoint, user),
            search_scope=ldap3.SUBTREE,
            attributes=[attr] if attr else [ldap3.NO_ATTRIBUTES],
        )
        entries = list(searcher.entries)
    finally:
        searcher.unbind()
    if len(entries) != 1:
        raise LdapRefused(f"basedn search entries count: {len(entries)}")
    entry = entries[0]
    login = LdapLogin()
    if attr:
        values = [str(v) for v in entry[attr].values] if attr in entry else []
        cred = pick_credentials(values, storage.host or "", database, rule.ldap_storage_credentials)
        if cred is None:
            raise LdapRefused(f"route does not match any value of attribute '{attr}'")
        login = LdapLogin(cred.ldap_storage_username, cred.ldap_storage_password)
    _bind(server, entry.entry_dn, password).unbind()
    return login


async def authenticate(
    endpoint: LdapEndpoint, rule: Rule, storage: Storage, database: str, user: str, password: str
) -> LdapLogin:
    """check() in a thread. LdapRefused for a refusal or an unreachable server."""
    loop = asyncio.get_running_loop()
    try:
        return await loop.run_in_executor(
            None, check, endpoint, rule, storage, database, user, password
        )
    except LDAPException as exc:
        raise LdapRefused(f"LDAP auth failed: ldap server is down ({exc})") from None
