"""Routing of group rules (router.py): which rule a member of a group gets."""

from __future__ import annotations

from pooler.config import parse_text
from pooler.server.groups import member_names
from pooler.server.router import ClientKey, Router, group_key

RULES = """
log_format "%m\\n"
listen { host "127.0.0.1" port 6432 }
storage "pg" { type "remote" host "127.0.0.1" port 5432 }
database default {
    user "dave" { authentication "none" storage "pg" pool "session" storage_db "default.dave" }
    user default { authentication "none" storage "pg" pool "session" storage_db "default.default" }
}
database "app" {
    user default { authentication "none" storage "pg" pool "session" storage_db "app.default" }
    group "zeta" { authentication "none" storage "pg" pool "session" storage_db "app.zeta"
        group_query "q" group_query_user "u" group_query_db "d" }
    group "alpha" { authentication "none" storage "pg" pool "session" storage_db "app.alpha"
        group_query "q" group_query_user "u" group_query_db "d" }
    user "zoe" { authentication "none" storage "pg" pool "session" storage_db "app.zoe" }
}
"""


def router(sequential: bool = False, **members: set[str]) -> Router:
    config = parse_text(
        RULES.replace(
            "log_format", f"sequential_routing {'yes' if sequential else 'no'}\nlog_format"
        )
    )
    groups = {rule.user: rule for rule in config.rules if rule.group}
    known = {group_key(groups[name]): frozenset(users) for name, users in members.items()}
    return Router(config.rules, config.sequential_routing, known)


def served(r: Router, user: str, database: str = "app") -> str | None:
    rule = r.match(ClientKey(database, user, "127.0.0.1"))
    return None if rule is None else rule.storage_db


def test_members_get_their_group_others_the_database_default():
    r = router(zeta={"bob"})
    assert served(r, "bob") == "app.zeta"
    assert served(r, "carol") == "app.default"
    assert served(r, "bob", database="other") == "default.default"


def test_a_user_rule_comes_before_a_group_whatever_the_names():
    """odyssey orders `zoe` and `group_zeta` as strings (so `zoe` after the group); we put the
    named user first."""
    assert served(router(zeta={"zoe"}), "zoe") == "app.zoe"


def test_a_group_of_the_database_comes_before_database_default_rules():
    assert served(router(alpha={"dave"}), "dave") == "app.alpha"


def test_of_two_groups_the_first_by_name():
    assert served(router(alpha={"eve"}, zeta={"eve"}), "eve") == "app.alpha"


def test_sequential_routing_takes_the_file_order():
    r = router(sequential=True, zeta={"bob"})
    assert served(r, "bob") == "default.default"  # `database default` is written first


def test_the_rules_own_name_matches_as_in_odyssey():
    assert served(router(), "group_zeta") == "app.zeta"


def test_member_names_are_the_first_column():
    assert member_names([["a", "x"], [None], [], ["b"]]) == frozenset({"a", "b"})


async def test_a_check_that_raises_does_not_stop_the_checker():
    """A bug in one check (here: routing the query user raises) is logged; the round goes on,
    logins waiting for the first check are let through, and the next round runs."""
    import asyncio
    import types

    from pooler.server.groups import GroupChecker

    config = parse_text(RULES.replace("log_format", "group_checker_interval 10\nlog_format"))
    calls = 0

    def internal_rule(db: str, user: str):
        nonlocal calls
        calls += 1
        raise RuntimeError("boom")

    worker = types.SimpleNamespace(config=config, internal_rule=internal_rule)
    checker = GroupChecker(worker)  # type: ignore[arg-type]
    task = asyncio.ensure_future(checker.run())
    try:
        await asyncio.wait_for(checker.first_check(), 5)

        async def two_rounds() -> None:
            while calls < 4:  # two groups, two rounds
                await asyncio.sleep(0.01)

        await asyncio.wait_for(two_rounds(), 5)
        assert not task.done()
    finally:
        task.cancel()
