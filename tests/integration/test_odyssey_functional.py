"""The scenarios of odyssey's own functional tests (yandex/odyssey test/functional/tests/<name>),
rewritten for our harness: one test per odyssey folder, named after it. Each asserts what the
odyssey test asserts, as a pooler user sees it (console output, client errors, log lines)."""

from __future__ import annotations

import re
import threading

import psycopg
from harness import CONSOLE_ROUTE, Raw, make_config, patience, route, storage, wait_until

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


def test_pgoptions(pooler, pg):
    """PGOPTIONS (`-c role=zz`, `--search_path=…`, `--work-mem=…`, odd spacing) reach the
    server and SHOW answers them (odyssey's pgoptions/expected/*.out), in both pool kinds."""
    pg.psql("do $$ begin create role zz; exception when duplicate_object then null; end $$")
    pg.psql("grant zz to postgres")
    p = pooler(
        make_config(
            [
                route("postgres", "useropt", storage_user="postgres", pool="session"),
                route("p0", "useropt", storage_user="postgres", pool="transaction"),
            ]
        )
    )
    options = " -c role=zz  --search_path=public   -c statement_timeout=1337   --work-mem=765MB    "
    for dbname in ("postgres", "p0"):
        with p.connect(dbname, "useropt", options="-c role=zz") as conn:
            assert conn.execute("show role").fetchone() == ("zz",)
        with p.connect(dbname, "useropt", options=options) as conn:
            shown = [
                conn.execute(f"show {name}").fetchone()[0]
                for name in ("role", "search_path", "statement_timeout", "work_mem")
            ]
            assert shown == ["zz", "public", "1337ms", "765MB"], dbname


def test_show_unix_socket_ports(pooler, pg):
    """A storage without host reaches PostgreSQL on its Unix socket (unix_socket_dir); SHOW
    SERVERS and SHOW CLIENTS still print numbers in port and local_port (odyssey's
    show-unix-socket-ports: both columns must match ^-?[0-9]+$)."""
    p = pooler(
        make_config(
            route("postgres", "postgres"),
            storages=storage(host=None),
            unix_socket_dir=str(pg.socket_dir),
            unix_socket_mode="0644",
        )
    )
    with p.connect("postgres", "postgres") as conn:
        assert conn.execute("select inet_server_addr()").fetchone() == (None,)  # a unix socket
        for what, port, local_port in (
            ("servers", "port", "local_port"),
            ("clients", "port", "local_port"),
        ):
            with p.connect("console", "admin") as console:
                cur = console.execute(f"show {what}")
                names = [c.name for c in cur.description]
                rows = cur.fetchall()
            assert rows, what
            for row in rows:
                for column in (port, local_port):
                    value = row[names.index(column)]
                    assert re.fullmatch(r"-?[0-9]+", str(value)), (what, column, row)


def test_reload_show_clients(pooler):
    """Reloads (SIGHUP) in a burst while SHOW CLIENTS runs over and over, with a storage
    watchdog and an internal rule (odyssey's reload-show-clients): every SHOW answers, the
    pooler stays up and serves clients afterwards."""
    watchdog = (
        "\twatchdog {\n"
        '\t\tauthentication "none"\n\t\tstorage "postgres_server"\n'
        '\t\tstorage_db "postgres"\n\t\tstorage_user "postgres"\n'
        '\t\tpool_routing "internal"\n\t\tpool "transaction"\n\t\tpool_size 10\n'
        '\t\twatchdog_lag_query "SELECT TRUNC(EXTRACT(EPOCH FROM NOW())) - 100"\n'
        "\t\twatchdog_lag_interval 10\n\t}\n"
    )
    config = make_config(
        [
            route(pool="transaction", pool_size=0, pool_discard=False, client_max=107),
            route(
                "postgres",
                "user1",
                pool="transaction",
                storage_user="postgres",
                catchup_timeout=10,
                catchup_checks=10,
            ),
        ],
        storages=storage().replace("\n}", "\n" + watchdog + "}"),
        workers=2,
    )
    p = pooler(config)
    assert p.sql("select 1", dbname="p0") == [(1,)]
    errors: list[BaseException] = []

    def show_clients() -> None:
        try:
            for _ in range(30):
                assert p.admin("show clients") is not None
        except BaseException as exc:
            errors.append(exc)

    readers = [threading.Thread(target=show_clients) for _ in range(2)]
    for t in readers:
        t.start()
    for generation in range(1, 11):
        since = p.log_offset()
        p.reload()
        p.wait_for_log(rf"reloaded, generation {generation}\b", since=since)
    for t in readers:
        t.join(patience(60))
    assert not errors, errors
    assert p.is_running()
    assert p.sql("select 1", dbname="p0") == [(1,)]


def console_rule(user: str, role: str) -> str:
    return route("console", user, storage="local", role=role)


def test_shell_test(pooler):
    """odyssey's shell-test: console roles (stat may SHOW, not RELOAD; an unknown role may do
    nothing; admin may RELOAD; a reload that swaps roles applies to the next login) and a
    rule's `options` overriding the client's PGOPTIONS."""
    useropt = route(
        "postgres",
        "useropt",
        pool="transaction",
        storage_user="postgres",
        options=Raw('{\n\t\t\t"statement_timeout" "0"\n\t\t}'),
    )

    def config(admin_role: str, admin2_role: str) -> str:
        rules = [
            useropt,
            console_rule("stat", "stat"),
            console_rule("admin", admin_role),
            console_rule("admin2", admin2_role),
            console_rule("rogue", "notallow"),
        ]
        return make_config(
            rules, storages=[storage(), storage("local", type="local")], console=False
        )

    p = pooler(config("admin", "stat"))

    def can(user: str, command: str) -> bool:
        try:
            p.admin(command, user=user)
        except psycopg.errors.InsufficientPrivilege:
            return False
        return True

    assert not can("rogue", "show errors")
    assert can("stat", "show errors") and not can("stat", "reload")
    assert can("admin", "reload")
    p.write_config(config("stat", "admin"))
    p.reload()  # odyssey's test reloads through the console; the file watcher may be first
    p.wait_for_log(r'role "admin" -> "stat"')
    assert not can("admin", "reload")
    assert can("admin2", "reload")

    with p.connect(
        "postgres", "useropt", options="-c statement_timeout=5000 -c work_mem=5MB"
    ) as conn:
        assert conn.execute("show statement_timeout").fetchone() == ("0",)
        assert conn.execute("show work_mem").fetchone() == ("5MB",)
