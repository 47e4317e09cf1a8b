"""odyssey's `hba_file`: which clients may try to authenticate at all (pg_hba-like).

The first line that matches the client's connection type, database, user and address
decides: `allow`/`trust` go on to the rule's own authentication, `deny`/`reject` refuse.
A client that no line matches is refused, as PostgreSQL refuses clients pg_hba.conf does
not mention.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from pooler.config.model import HbaRule


def _conn_type_matches(conn_type: str, unix: bool, tls: bool) -> bool:
    if conn_type == "local":
        return unix
    if unix:
        return False
    if conn_type == "hostssl":
        return tls
    if conn_type == "hostnossl":
        return not tls
    return True


def _address_matches(network: str | None, address: str | None) -> bool:
    if network is None or address is None:
        return network is None
    try:
        return ipaddress.ip_address(address) in ipaddress.ip_network(network, strict=False)
    except ValueError:
        return False


def hba_allows(
    rules: Sequence[HbaRule], *, database: str, user: str, address: str | None, tls: bool
) -> bool:
    unix = address is None
    for rule in rules:
        if not _conn_type_matches(rule.conn_type, unix, tls):
            continue
        same_user = "sameuser" in rule.databases and database == user
        if "all" not in rule.databases and database not in rule.databases and not same_user:
            continue
        if "all" not in rule.users and user not in rule.users:
            continue
        if not unix and not _address_matches(rule.address, address):
            continue
        return rule.allows
    return False
