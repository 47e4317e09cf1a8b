"""The scenarios of odyssey's own functional tests (yandex/odyssey test/functional/tests/<name>),
rewritten for our harness: one test per odyssey folder, named after it. Each asserts what the
odyssey test asserts, as a pooler user sees it (console output, client errors, log lines)."""

from __future__ import annotations

from harness import CONSOLE_ROUTE, make_config, route, storage, wait_until

D = "<default>"


def rule(database: str, user: str, selector: str = "") -> str:
    """route() with an odyssey address/conn-type selector after the user name."""
    text = route(database, user, pool="transaction")
    if selector:
        name = "default" if user == "default" else f'"{user}"'
        text = text.replace(f"user {name} {{", f"user {name} {selector} {{", 1)
    return text


def show_rules(p) -> list[tuple]:
    return [tuple(row[:4]) for row in p.admin("show rules")]


def test_rules_order(pooler):
    """SHOW RULES lists the rules in the order they are tried: most specific first (database,
    user, address, connection type: 1000/100/10/1), ties by names, unless sequential_routing;
    after a reload, the new rules in that order (odyssey's rules_order/*.out)."""
    # least specific first in the file: file order and specificity order differ
    rules = [
        rule("default", "default"),
        rule("default", "default", '"localhost"'),
        rule("default", "default", "hostnossl"),
        rule("default", "user1", '"10.0.0.12/24"'),
        rule("default", "user1"),
        rule("db1", "default", '"10.14.89.10/24" local'),
        rule("db1", "default", '"10.14.89.10/24"'),
        rule("db1", "db1u2", 'hostssl "10.13.37.10/24"'),
        rule("db1", "db1u2"),
        rule("db1", "db1u1", '"10.0.14.89/24"'),
        rule("db1", "db1u1", "host"),
    ]
    p = pooler(make_config(rules))
    assert show_rules(p) == [
        ("db1", "db1u2", "10.13.37.10/24", "hostssl"),
        ("db1", "db1u1", "10.0.14.89/24", "all"),
        ("db1", "db1u1", D, "host"),
        ("console", "admin", D, "all"),
        ("db1", "db1u2", D, "all"),
        ("db1", D, "10.14.89.10/24", "local"),
        ("db1", D, "10.14.89.10/24", "all"),
        (D, "user1", "10.0.0.12/24", "all"),
        (D, "user1", D, "all"),
        (D, D, "localhost", "all"),
        (D, D, D, "hostnossl"),
        (D, D, D, "all"),
    ]
    # a reload: the new set, sorted the same way
    p.write_config(
        make_config(
            [
                rule("default", "default"),
                rule("default", "user1reload"),
                rule("db1", "db1u2"),
                rule("db1", "db1u1reload", '"10.0.14.89/24"'),
                rule("db1", "db1u1reload", "hostnossl"),
            ]
        )
    )
    p.reload()
    expected = [
        ("db1", "db1u1reload", "10.0.14.89/24", "all"),
        ("db1", "db1u1reload", D, "hostnossl"),
        ("console", "admin", D, "all"),
        ("db1", "db1u2", D, "all"),
        (D, "user1reload", D, "all"),
        (D, D, D, "all"),
    ]
    wait_until(lambda: show_rules(p) == expected, message=lambda: show_rules(p))
    # sequential_routing: file order (the console rule first, else default.default takes it)
    seq = pooler(
        make_config(
            [CONSOLE_ROUTE, *rules],
            storages=[storage(), storage("local", type="local")],
            console=False,
            sequential_routing=True,
        )
    )
    assert show_rules(seq)[:4] == [
        ("console", "admin", D, "all"),
        (D, D, D, "all"),
        (D, D, "localhost", "all"),
        (D, D, D, "hostnossl"),
    ]
    assert show_rules(seq)[-1] == ("db1", "db1u1", D, "host")
