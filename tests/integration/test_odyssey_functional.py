"""The scenarios of odyssey's own functional tests (yandex/odyssey test/functional/tests/<name>),
rewritten for our harness: one test per odyssey folder, named after it. Each asserts what the
odyssey test asserts, as a pooler user sees it (console output, client errors, log lines)."""

from __future__ import annotations

import contextlib
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

import psycopg
from harness import (
    CONSOLE_ROUTE,
    HOST,
    Raw,
    free_port,
    make_config,
    patience,
    release_port,
    route,
    storage,
    wait_until,
)
from wire import error_fields, read_until, startup_packet

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


def server_rows(p) -> list[tuple]:
    return p.admin("show servers")


def test_transactional(pooler):
    """A transaction-pool client that logged in but has sent nothing holds no server, even
    after pool_ttl closed the server its route's first login used (odyssey's transactional;
    storage host written `[127.0.0.1]:PORT`)."""
    p = pooler(
        make_config(
            route("postgres", "postgres", pool="transaction", pool_ttl=1),
            storages=storage(host=Raw('"[127.0.0.1]:{pg_port}"'), port=None),
        )
    )
    assert p.sql("select 42") == [(42,)]
    wait_until(lambda: server_rows(p) == [], timeout=15, message=lambda: server_rows(p))
    with p.connect("postgres", "postgres") as conn:
        assert server_rows(p) == []
        assert conn.execute("select 42").fetchone() == (42,)


def test_copy(pooler, pg):
    """COPY FROM STDIN of 1000 csv rows through a transaction pool, with and without
    pool_reserve_prepared_statement, the storage listing a second host that is down
    (odyssey's copy)."""
    pg.psql("create table if not exists copy_test (run_id text, task_id text, body text)")
    down = free_port()
    try:
        for reserve in (True, False):
            p = pooler(
                make_config(
                    route(
                        "postgres",
                        "postgres",
                        pool="transaction",
                        pool_discard=False,
                        pool_reserve_prepared_statement=reserve,
                        client_fwd_error=True,
                    ),
                    storages=storage(host=Raw('"[127.0.0.1]:{pg_port},127.0.0.1"'), port=down),
                    listen={"compression": True, "tls": "disable"},
                )
            )
            data = "".join(
                f"run_id_{i},task_id_{i},Some random {i}th text\n" for i in range(1, 1001)
            )
            with p.connect("postgres", "postgres") as conn:
                conn.execute("truncate copy_test")
                with conn.cursor().copy("copy copy_test from stdin (format csv)") as copy:
                    copy.write(data)
                assert conn.execute("select count(*) from copy_test").fetchone() == (1000,)
            p.stop()
    finally:
        release_port(down)


def test_cancel(pooler):
    """Three sleeping clients of a transaction pool cancelled at once, seven rounds, under a
    steady load of other clients: each gets `canceling statement due to user request`, the
    load sees no error (odyssey's cancel; fewer rounds, shorter sleeps)."""
    p = pooler(make_config(route("postgres", "postgres", pool="transaction", pool_size=20)))
    stop = threading.Event()
    load_errors: list[BaseException] = []

    def load() -> None:
        try:
            with p.connect("postgres", "postgres") as conn:
                while not stop.is_set():
                    assert conn.execute("select 1").fetchone() == (1,)
        except BaseException as exc:
            load_errors.append(exc)

    loaders = [threading.Thread(target=load) for _ in range(4)]
    for t in loaders:
        t.start()
    try:
        for _ in range(3):
            conns = [p.connect("postgres", "postgres") for _ in range(3)]
            outcomes: list[str] = []

            def sleep(conn, outcomes=outcomes) -> None:
                try:
                    conn.execute("select pg_sleep(30)")
                    outcomes.append("finished")
                except psycopg.errors.QueryCanceled as exc:
                    outcomes.append(str(exc).strip())

            sleepers = [threading.Thread(target=sleep, args=(c,)) for c in conns]
            for t in sleepers:
                t.start()
            wait_until(
                lambda: (
                    p.sql(
                        "select count(*) from pg_stat_activity where query = 'select pg_sleep(30)'"
                        " and state = 'active'"
                    )
                    == [(3,)]
                )
            )
            for conn in conns:
                conn.cancel()
            for t in sleepers:
                t.join(patience(20))
            assert outcomes == ["canceling statement due to user request"] * 3
            for conn in conns:
                conn.close()
    finally:
        stop.set()
        for t in loaders:
            t.join(patience(20))
    assert not load_errors, load_errors


class CancelSwallowingProxy:
    """Forwards connections to PostgreSQL; a CancelRequest is passed on, but the socket it came
    on is then held open and never answered (no EOF ever reaches the pooler)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server((HOST, 0))
        self.port = self.listener.getsockname()[1]
        self.held: list[socket.socket] = []
        self.cancels = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        with contextlib.suppress(OSError):
            head = client.recv(8, socket.MSG_PEEK | socket.MSG_WAITALL)
            server = socket.create_connection((HOST, self.target_port))
            if head == struct.pack("!ii", 16, 80877102):
                server.sendall(client.recv(16, socket.MSG_WAITALL))
                server.close()
                self.cancels += 1
                self.held.append(client)  # never closed, never answered
                return
            for src, dst in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.listener.close()
        for sock in self.held:
            sock.close()


def raw_login(port: int) -> tuple[socket.socket, bytes]:
    """A v3 login as postgres/postgres; the socket and the BackendKeyData body."""
    sock = socket.create_connection((HOST, port), timeout=patience(10))
    sock.sendall(startup_packet("postgres", "postgres"))
    messages = read_until(sock, b"Z")
    key = next(body for kind, body in messages if kind == ord("K"))
    return sock, key


def test_cancel_leak(pooler, pg):
    """20 cancels at once, each sender hanging up as soon as it has sent, towards a server
    whose cancel connections never close (each waits out cancel_timeout_ms, 2 in flight at a
    time): every query is still cancelled, SHOW LISTS counts no client left routing, and a new
    client gets in under client_max_routing 16 (odyssey's cancel-leak). A cancel waiting for a
    place used to be dropped with its sender's connection."""
    proxy = CancelSwallowingProxy(pg.port)
    try:
        p = pooler(
            make_config(
                route("postgres", "postgres", pool="transaction", pool_size=20, pool_cancel=True),
                storages=storage(port=proxy.port),
                client_max_routing=16,
                cancel_timeout_ms=200,
            )
        )
        query = b"select pg_sleep(600)\0"
        sessions = [raw_login(p.port) for _ in range(20)]
        for sock, _key in sessions:
            sock.sendall(b"Q" + struct.pack("!i", 4 + len(query)) + query)
        sleeping = "select count(*) from pg_stat_activity where query = 'select pg_sleep(600)'"
        with psycopg.connect(host=HOST, port=pg.port, user="postgres", autocommit=True) as direct:
            wait_until(lambda: direct.execute(sleeping).fetchone() == (20,))
        for _sock, key in sessions:
            with socket.create_connection((HOST, p.port), timeout=patience(10)) as sock:
                sock.sendall(struct.pack("!ii", 16, 80877102) + key)
        for sock, _key in sessions:
            with sock:
                messages = read_until(sock, b"Z", timeout=15)
                errors = [error_fields(body) for kind, body in messages if kind == ord("E")]
                assert [e["C"] for e in errors] == ["57014"], errors
        assert proxy.cancels == 20
        lists = dict(p.admin("show lists"))
        assert lists["routing_clients"] == 0, lists
        assert p.sql("select 'canary'") == [("canary",)]
    finally:
        proxy.close()


CONFIG_VALIDATION = {
    # key: (settings that `pooler check` accepts, settings it refuses), odyssey master's verdicts
    "log_max_msg_size": (
        ["log_max_msg_size 1024", "log_max_msg_size 32768"],
        ['log_max_msg_size "x"'],
    ),
    "tls_workers": (
        ["tls_workers 0", 'tls_workers "auto"'],
        ["tls_workers -1", 'tls_workers "123"'],
    ),
    "listen_tls": (
        [],
        ['listen {\n\thost "*"\n\ttls ""\n}', 'listen {\n\thost "*"\n\ttls "123"\n}'],
    ),
}


def test_config_validation(tmp_path, pooler):
    """`pooler check` gives odyssey master's verdict (`config is valid` or not) on the configs of
    odyssey's config-validation folders, HEAD-only keys included; log_max_msg_size cuts log
    messages to that many characters."""
    base = make_config(route("db", "user"), console=False).replace("{port}", "6432")
    base = base.replace("{pg_port}", "5432")
    for key, (valid, invalid) in CONFIG_VALIDATION.items():
        for verdict, settings in (("valid", valid), ("invalid", invalid)):
            for i, setting in enumerate(settings):
                path = tmp_path / f"{key}-{verdict}-{i}.conf"
                path.write_text(setting + "\n" + base)
                run = subprocess.run(
                    [sys.executable, "-m", "pooler", "check", str(path)],
                    capture_output=True,
                    text=True,
                    timeout=patience(60),
                )
                said = "valid" if "config is valid" in run.stdout + run.stderr else "invalid"
                assert said == verdict, (setting, run.stdout, run.stderr)
    p = pooler(make_config(log_max_msg_size=12))
    assert p.log_contains(r"\(supervisor\) pooler ready$")


def test_server_lifetime(pooler):
    """Idle servers go once older than server_lifetime, or idle longer than pool_ttl, without
    a client to trigger it (odyssey's server-lifetime: 5 servers after the load, 0 a few
    seconds later)."""
    for key in ("server_lifetime", "pool_ttl"):
        p = pooler(make_config(route("postgres", "postgres", pool="session", **{key: 3})))
        conns = [p.connect("postgres", "postgres") for _ in range(5)]
        for conn in conns:
            conn.execute("select 1")
            conn.close()
        assert server_rows(p), key  # idle, kept (5 unless the box is slower than 3 s)
        wait_until(lambda p=p: server_rows(p) == [], timeout=20, message=lambda p=p: server_rows(p))
        p.stop()


def test_rule_conn_type(pooler, tmp_path):
    """`host` rules serve TLS and plain TCP clients, `hostssl` only TLS ones, `hostnossl` only
    plain ones (odyssey's rule_conn_type, listen tls "allow", tls_protocols "tlsv1.2")."""
    import trustme

    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    server = ca.issue_cert("localhost", "127.0.0.1", common_name="localhost")
    server.cert_chain_pems[0].write_to_path(str(tmp_path / "server.pem"))
    server.private_key_pem.write_to_path(str(tmp_path / "server.key"))
    rules = [
        rule("db1", "user1", "host"),
        rule("tsa_db", "user_ro", "hostssl"),
        rule("tsa_db", "user_rw", "hostnossl"),
    ]
    rules = [
        r.replace(
            '\t\tpool "transaction"',
            '\t\tpool "session"\n\t\tstorage_user "postgres"\n\t\tstorage_db "postgres"',
        )
        for r in rules
    ]
    listen = {
        "tls": "allow",
        "tls_key_file": str(tmp_path / "server.key"),
        "tls_cert_file": str(tmp_path / "server.pem"),
        "tls_ca_file": str(tmp_path / "ca.pem"),
        "tls_protocols": "tlsv1.2",
    }
    p = pooler(make_config(rules, listen=listen))
    tls = {"sslmode": "verify-full", "sslrootcert": str(tmp_path / "ca.pem")}

    def works(dbname: str, user: str, **kw) -> bool:
        try:
            return p.sql("select 42", dbname=dbname, user=user, **kw) == [(42,)]
        except psycopg.OperationalError as exc:
            assert "is not found" in str(exc), exc
            return False

    assert works("db1", "user1", sslmode="disable")
    assert works("db1", "user1", **tls)
    assert works("tsa_db", "user_ro", **tls)
    assert not works("tsa_db", "user_ro", sslmode="disable")
    assert not works("tsa_db", "user_rw", **tls)
    assert works("tsa_db", "user_rw", sslmode="disable")


def password_rule(database: str, user: str, selector: str = "") -> str:
    text = route(
        database,
        user,
        authentication="clear_text",
        password="correct_password",
        storage_user="postgres",
        storage_db="postgres",
    )
    if selector:
        name = "default" if user == "default" else f'"{user}"'
        text = text.replace(f"user {name} {{", f"user {name} {selector} {{", 1)
    return text


def logs_in(p, dbname: str, user: str, password: str) -> bool:
    try:
        return p.sql("select 1", dbname=dbname, user=user, password=password) == [(1,)]
    except psycopg.OperationalError:
        return False


def test_rule_address(pooler):
    """Address selectors `127.0.0.0/24`, `255.0.0.0/24`, `default`, none and the host name
    `localhost` on clear_text rules (odyssey's rule_address): the right password gets in where
    the address matches, a wrong one never does."""
    p = pooler(
        make_config(
            [
                password_rule("addr_db", "user_addr_correct", '"127.0.0.0/24"'),
                password_rule("addr_db", "user_addr_incorrect", '"255.0.0.0/24"'),
                password_rule("addr_db", "user_addr_default", "default"),
                password_rule("addr_db", "user_addr_empty"),
                password_rule("addr_db", "user_addr_hostname_localhost", '"localhost"'),
            ]
        )
    )
    for user, matches in (
        ("user_addr_correct", True),
        ("user_addr_incorrect", False),
        ("user_addr_default", True),
        ("user_addr_empty", True),
        ("user_addr_hostname_localhost", True),
    ):
        assert logs_in(p, "addr_db", user, "correct_password") is matches, user
        assert not logs_in(p, "addr_db", user, "incorrect_password"), user


def test_hba(pooler, tmp_path):
    """hba_file `allow`/`deny` lines before the rule's clear_text check; a user no line names
    is refused; a SIGHUP keeps it all working (odyssey's hba, TCP part)."""
    hba = tmp_path / "odyssey_hba.conf"
    hba.write_text(
        "host    hba_db    user_allow     127.0.0.0/24     allow\n"
        "host    hba_db    user_reject    127.0.0.0/24     deny\n"
    )
    p = pooler(
        make_config(
            [
                password_rule("hba_db", "user_allow"),
                password_rule("hba_db", "user_reject"),
                password_rule("hba_db", "user_unknown"),
            ],
            hba_file=str(hba),
        )
    )
    assert logs_in(p, "hba_db", "user_allow", "correct_password")
    assert not logs_in(p, "hba_db", "user_allow", "incorrect_password")
    assert not logs_in(p, "hba_db", "user_reject", "correct_password")
    assert not logs_in(p, "hba_db", "user_unknown", "correct_password")
    since = p.log_offset()
    p.reload()
    p.wait_for_log(r"reloaded, generation|no changes", since=since)
    assert logs_in(p, "hba_db", "user_allow", "correct_password")


def test_graceful_shutdown_timeout(pooler):
    """SIGTERM while a session client is inside a long query, conn_drop_options off: the pooler
    waits for it up to graceful_shutdown_timeout_ms (3 s here), then exits (odyssey's
    graceful-shutdown-timeout: not before the timeout)."""
    p = pooler(
        make_config(
            route("postgres", "postgres"),
            graceful_shutdown_timeout_ms=3000,
            conn_drop_options=Raw("{\n\tdrop_enabled no\n}"),
        )
    )
    conn = p.connect("postgres", "postgres")
    running = threading.Thread(target=_run_quietly, args=(conn, "select pg_sleep(60)"))
    running.start()
    wait_until(
        lambda: (
            p.sql("select count(*) from pg_stat_activity where query = 'select pg_sleep(60)'")
            == [(1,)]
        )
    )
    started = time.monotonic()
    p.signal(signal.SIGTERM)
    p.wait_exit(timeout=30)
    assert time.monotonic() - started >= 3.0
    running.join(patience(10))
    conn.close()


def _run_quietly(conn, query: str) -> None:
    with contextlib.suppress(psycopg.Error):
        conn.execute(query)
