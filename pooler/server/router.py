"""Which rule serves a client: odyssey's routing order and matching (reference §2.2).

A `group "NAME"` rule matches the users its group_query last returned (`groups.py` keeps
them up to date), and a user literally named `group_NAME`, as odyssey's od_name_in_rule.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pooler.config import Rule
from pooler.config.routing import routing_order

GroupKey = tuple[Any, ...]
NO_MEMBERS: Mapping[GroupKey, frozenset[str]] = {}


def group_key(rule: Rule) -> GroupKey:
    """What a group's membership is kept under: the rule and the query that fills it (a
    reload that changes the query starts from no members until it has run)."""
    return (rule.identity, rule.group_query, rule.group_query_user, rule.group_query_db)


@dataclass(frozen=True, slots=True)
class ClientKey:
    """What routing looks at: the startup's database and user, and how the client came in."""

    database: str
    user: str
    address: str | None  # peer IP; None for a unix-socket client
    tls: bool = False
    internal: bool = False

    @property
    def unix(self) -> bool:
        return self.address is None


def _address_matches(rule_address: str, peer: str | None) -> bool:
    if peer is None:
        return False
    try:
        network = ipaddress.ip_network(rule_address, strict=False)
        return ipaddress.ip_address(peer) in network
    except ValueError:
        pass
    # A hostname selector: only the loopback name is resolved without DNS.
    if rule_address == "localhost":
        try:
            return ipaddress.ip_address(peer).is_loopback
        except ValueError:
            return False
    return False


def _conn_type_matches(conn_type: str, key: ClientKey) -> bool:
    if conn_type == "default":
        return True
    if conn_type == "local":
        return key.unix
    if key.unix:
        return False
    if conn_type == "hostssl":
        return key.tls
    if conn_type == "hostnossl":
        return not key.tls
    return True  # "host"


def _user_matches(rule: Rule, user: str, members: Mapping[GroupKey, frozenset[str]]) -> bool:
    if rule.user is None:
        return True
    if not rule.group:
        return rule.user == user
    return user == rule.user_name or user in members.get(group_key(rule), ())


def rule_matches(
    rule: Rule, key: ClientKey, members: Mapping[GroupKey, frozenset[str]] = NO_MEMBERS
) -> bool:
    if (rule.pool_routing == "internal") != key.internal:
        return False
    if rule.database is not None and rule.database != key.database:
        return False
    if not _user_matches(rule, key.user, members):
        return False
    if rule.address is not None and not _address_matches(rule.address, key.address):
        return False
    return _conn_type_matches(rule.conn_type, key)


MAX_MATCHES = 1024  # (database, user, address, tls) answers a Router keeps


class Router:
    """Matches clients against the rules of one config generation (a reload makes a new
    Router). A login's answer is kept for the next client with the same database, user,
    address and TLS (`match_client`: routing order and matching again cost about 2 µs of
    each connection), unless a rule is a group rule: the group's members change under it."""

    def __init__(
        self,
        rules: Sequence[Rule],
        sequential: bool,
        members: Mapping[GroupKey, frozenset[str]] = NO_MEMBERS,
    ) -> None:
        self.rules = routing_order(rules, sequential)
        self.members = members  # the group rules' members, kept up to date by groups.py
        self._matches: dict[tuple[str, str, str | None, bool], Rule | None] | None = (
            None if any(rule.group for rule in self.rules) else {}
        )

    def match(self, key: ClientKey) -> Rule | None:
        for rule in self.rules:
            if rule_matches(rule, key, self.members):
                return rule
        return None

    def match_client(self, database: str, user: str, address: str | None, tls: bool) -> Rule | None:
        """`match` for a client's login, answered from the last matches where it can be."""
        matches = self._matches
        if matches is None:
            return self.match(ClientKey(database, user, address, tls))
        wanted = (database, user, address, tls)
        try:
            return matches[wanted]
        except KeyError:
            pass
        rule = matches[wanted] = self.match(ClientKey(database, user, address, tls))
        if len(matches) > MAX_MATCHES:
            del matches[next(iter(matches))]  # the oldest
        return rule
