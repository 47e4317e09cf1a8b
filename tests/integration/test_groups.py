"""`group` rules (odyssey's group checker) through a real `pooler serve` and PostgreSQL.

Every rule logs in to PostgreSQL as `postgres` and sends its clients to its own database
(`storage_db`), so `select current_database()` tells which rule served a connection; the
group's members are PostgreSQL roles (NOLOGIN: only their names matter) granted the group role.
"""

from __future__ import annotations

import psycopg
import pytest
from harness import make_config, wait_until

GROUP, OTHER, OWN = "p1", "p2", "p0"  # backend database of: the group rule, user default, user "x"

MEMBERS_OF = (
    "SELECT m.rolname FROM pg_auth_members a JOIN pg_roles m ON m.oid = a.member "
    "JOIN pg_roles g ON g.oid = a.roleid WHERE g.rolname = '{group}'"
)


def rule(kind: str, name: str, db: str, **keys: str) -> str:
    body = {"authentication": "none", "storage": "postgres_server", "pool": "session"}
    body |= {"storage_user": "postgres", "storage_db": db, **keys}
    head = f"{kind} default" if name == "default" else f'{kind} "{name}"'
    lines = "\n".join(f'\t\t{key} "{value}"' for key, value in body.items())
    return f"\t{head} {{\n{lines}\n\t}}"


def database(name: str, *rules: str) -> str:
    head = "database default" if name == "default" else f'database "{name}"'
    return head + " {\n" + "\n".join(rules) + "\n}"


INTERNAL = database(
    "postgres",
    '\tuser "postgres" {\n\t\tauthentication "none"\n\t\tstorage "postgres_server"\n'
    '\t\tpool "session"\n\t\tpool_routing "internal"\n\t}',
)


def group_rule(group: str, query: str | None = None, db: str = GROUP) -> str:
    return rule(
        "group",
        group,
        db,
        group_query=query or MEMBERS_OF.format(group=group),
        group_query_user="postgres",
        group_query_db="postgres",
    )


@pytest.fixture
def roles(pg):
    """Create NOLOGIN roles for a test; drop them afterwards."""
    made: list[str] = []

    def create(*names: str) -> None:
        for name in names:
            pg.psql(f"CREATE ROLE {name} NOLOGIN")
            made.append(name)

    yield create
    for name in reversed(made):
        pg.psql(f"DROP ROLE IF EXISTS {name}")


def served_by(p, user: str, dbname: str = "appdb") -> str:
    return p.sql("select current_database()", dbname=dbname, user=user)[0][0]


def refused(p, user: str, dbname: str = "appdb") -> str:
    with pytest.raises(psycopg.OperationalError) as excinfo:
        p.sql("select 1", dbname=dbname, user=user)
    return str(excinfo.value)


def test_grant_and_revoke_change_routing_at_the_next_check(pg, pooler, roles):
    roles("grp_a", "gu_alice")
    rules = [INTERNAL, database("appdb", group_rule("grp_a"), rule("user", "default", OTHER))]
    p = pooler(make_config(rules, group_checker_interval=200))
    assert served_by(p, "gu_alice") == OTHER  # not a member: the database's user default
    pg.psql("GRANT grp_a TO gu_alice")
    wait_until(lambda: served_by(p, "gu_alice") == GROUP, message="a member routed by the group")
    pg.psql("REVOKE grp_a FROM gu_alice")
    wait_until(lambda: served_by(p, "gu_alice") == OTHER, message="no longer a member")


def test_members_are_routed_from_the_first_login(pg, pooler, roles):
    """The first check runs at start; a login waits for it rather than missing the group."""
    roles("grp_b", "gu_bob")
    pg.psql("GRANT grp_b TO gu_bob")
    rules = [INTERNAL, database("appdb", group_rule("grp_b"))]
    p = pooler(make_config(rules, group_checker_interval=60000, workers=2))
    for _ in range(4):  # (either worker)
        assert served_by(p, "gu_bob") == GROUP
    assert "route for 'appdb.gu_nobody' is not found" in refused(p, "gu_nobody")


def test_precedence_between_user_group_and_default_rules(pg, pooler, roles):
    """odyssey's specificity: a group counts as a named user. The member's own user rule in
    the same database comes first; the group comes before the database's `user default` and
    before any rule of `database default`, even one naming the user."""
    roles("grp_c", "gu_carol", "gu_dave")
    pg.psql("GRANT grp_c TO gu_carol, gu_dave")
    rules = [
        INTERNAL,
        database("default", rule("user", "gu_dave", OTHER), rule("user", "default", OTHER)),
        database(
            "appdb",
            rule("user", "default", OTHER),
            group_rule("grp_c"),
            rule("user", "gu_carol", OWN),
        ),
    ]
    p = pooler(make_config(rules, group_checker_interval=200))
    assert served_by(p, "gu_carol") == OWN  # her own rule
    assert served_by(p, "gu_dave") == GROUP  # the group, not `database default { user "gu_dave" }`
    assert served_by(p, "gu_dave", dbname="otherdb") == OTHER  # the group is of appdb only
    assert served_by(p, "group_grp_c") == GROUP  # odyssey: the rule's own name matches too


def test_a_failing_group_query_keeps_the_last_members(pg, pooler):
    pg.psql("CREATE TABLE IF NOT EXISTS pooler_group_members (name text)")
    pg.psql("INSERT INTO pooler_group_members VALUES ('gu_erin')")
    try:
        query = "SELECT name FROM pooler_group_members"
        rules = [
            INTERNAL,
            database("appdb", group_rule("grp_e", query), rule("user", "default", OTHER)),
        ]
        p = pooler(make_config(rules, group_checker_interval=200))
        assert served_by(p, "gu_erin") == GROUP
        since = p.log_offset()
        pg.psql("DROP TABLE pooler_group_members")
        p.wait_for_log(r"group_query failed: .*pooler_group_members", since=since)
        assert served_by(p, "gu_erin") == GROUP  # the members of the last good check
    finally:
        pg.psql("DROP TABLE IF EXISTS pooler_group_members")


def test_a_group_with_no_route_for_its_query_user_logs_why(pooler):
    rules = [database("appdb", group_rule("grp_f"), rule("user", "default", OTHER))]
    rules[0] = rules[0].replace('group_query_db "postgres"', 'group_query_db "nowhere"')
    p = pooler(make_config(rules, group_checker_interval=200))
    p.wait_for_log(r"no route for group_query user 'nowhere\.postgres'")
    assert served_by(p, "gu_frank") == OTHER


def test_a_group_added_by_a_reload_routes_its_members(pg, pooler, roles):
    """The reload's new group is checked at once (not an interval later): with a 60 s
    interval its member is routed by it as soon as the workers applied the reload."""
    roles("grp_g", "gu_gina")
    pg.psql("GRANT grp_g TO gu_gina")
    before = [INTERNAL, database("appdb", rule("user", "default", OTHER))]
    p = pooler(make_config(before, group_checker_interval=60000))
    assert served_by(p, "gu_gina") == OTHER
    since = p.log_offset()
    p.write_config(
        make_config([*before, database("appdb", group_rule("grp_g"))], group_checker_interval=60000)
    )
    p.reload()
    p.wait_for_log(r"worker 0 applied generation 1", since=since)
    assert served_by(p, "gu_gina") == GROUP
