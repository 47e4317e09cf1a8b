"""The matches a Router keeps for logins (router.py `Router.match_client`): the same answer
as `match` for every database, user, address and TLS; none kept across a reload (a new
Router) or where a group rule's members can change the answer."""

from __future__ import annotations

import struct

from standins import Recorder, worker_and_route

from pooler.config import parse_text
from pooler.server import router as router_module
from pooler.server.client import ClientConnection
from pooler.server.groups import group_key
from pooler.server.lifecycle import ClientState
from pooler.server.router import ClientKey, Router

RULES = """
log_format "%m\\n"
listen { host "127.0.0.1" port 6432 }
storage "pg" { type "remote" host "127.0.0.1" port 5432 }
database "app" {
    user "u" "10.0.0.0/8" hostssl { authentication "none" storage "pg" pool "session" storage_db "ten.ssl" }
    user "u" "10.0.0.0/8" { authentication "none" storage "pg" pool "session" storage_db "ten" }
    user "u" { authentication "none" storage "pg" pool "session" storage_db "any" }
}
database default {
    user default { authentication "none" storage "pg" pool "session" storage_db "default" }
}
"""


def served(r: Router, database: str, user: str, address: str | None, tls: bool) -> str | None:
    rule = r.match_client(database, user, address, tls)
    assert rule is r.match(ClientKey(database, user, address, tls))
    return None if rule is None else rule.storage_db


def test_a_kept_match_answers_as_match_for_each_address_and_tls():
    config = parse_text(RULES)
    r = Router(config.rules, config.sequential_routing)
    for _ in range(2):  # the second round from what the first kept
        assert served(r, "app", "u", "10.1.2.3", True) == "ten.ssl"
        assert served(r, "app", "u", "10.1.2.3", False) == "ten"
        assert served(r, "app", "u", "192.168.0.1", True) == "any"
        assert served(r, "app", "u", None, False) == "any"
        assert served(r, "app", "v", "10.1.2.3", True) == "default"
        assert served(r, "other", "u", "10.1.2.3", True) == "default"


def test_the_kept_matches_are_bounded(monkeypatch):
    monkeypatch.setattr(router_module, "MAX_MATCHES", 8)
    config = parse_text(RULES)
    r = Router(config.rules, config.sequential_routing)
    for n in range(50):
        assert served(r, "app", "u", f"10.0.0.{n}", False) == "ten"
    assert r._matches is not None and len(r._matches) <= 9


GROUPS = """
log_format "%m\\n"
listen { host "127.0.0.1" port 6432 }
storage "pg" { type "remote" host "127.0.0.1" port 5432 }
database "app" {
    user default { authentication "none" storage "pg" pool "session" storage_db "app.default" }
    group "zeta" { authentication "none" storage "pg" pool "session" storage_db "app.zeta"
        group_query "q" group_query_user "u" group_query_db "d" }
}
"""


def test_a_group_members_change_routes_the_next_login_by_them():
    """With group rules nothing is kept: groups.py refreshes the members in place."""
    config = parse_text(GROUPS)
    members: dict[tuple[object, ...], frozenset[str]] = {}
    r = Router(config.rules, config.sequential_routing, members)
    assert served(r, "app", "bob", "127.0.0.1", False) == "app.default"
    zeta = next(rule for rule in config.rules if rule.group)
    members[group_key(zeta)] = frozenset({"bob"})  # a group check found bob
    assert served(r, "app", "bob", "127.0.0.1", False) == "app.zeta"
    members[group_key(zeta)] = frozenset()  # ... and lost him again
    assert served(r, "app", "bob", "127.0.0.1", False) == "app.default"


def _login(worker, database: str, user: str) -> ClientConnection:  # type: ignore[no-untyped-def]
    client = ClientConnection(worker, worker.config.listens[0], False)
    client.connection_made(Recorder())  # type: ignore[arg-type]
    body = struct.pack("!i", 196608) + f"user\0{user}\0database\0{database}\0\0".encode()
    client.data_received(struct.pack("!i", len(body) + 4) + body)
    return client


ONE = """
log_format "%m\\n"
listen { host "127.0.0.1" port 6432 }
storage "pg" { type "remote" host "127.0.0.1" port 5432 }
database default {
    user default { authentication "none" storage "pg" pool "transaction" storage_db "STORAGE_DB" }
}
"""


async def test_a_reload_routes_the_next_login_by_the_new_rules():
    worker, route = worker_and_route(ONE.replace("STORAGE_DB", "before"), "app", "u")
    route.server_params = {"server_version": "15.8"}
    first = _login(worker, "app", "u")
    assert first.state is ClientState.IDLE and first.route is route
    assert route.backend_db == "before"
    config = parse_text(ONE.replace("STORAGE_DB", "after"))
    births = {rule.identity: config.generation + 1 for rule in config.rules}
    worker.apply_config(config, births)
    for route_ in worker.routes.values():
        route_.server_params = {"server_version": "15.8"}  # (no server to learn them from)
    later = worker.route_for(config.rules[0], "app", "u")
    later.server_params = {"server_version": "15.8"}
    second = _login(worker, "app", "u")
    assert second.state is ClientState.IDLE
    assert second.rule is config.rules[0] and second.route is later
    assert second.route.backend_db == "after"
