"""Operator actions under a mixed load: nothing may end in a traceback, an illegal server
transition, a stuck server or a leaked slot.

Clients of three pools (transaction, session, statement) run psycopg and asyncpg traffic:
open transactions, the extended protocol, COPY in and out, LISTEN/NOTIFY, prepared
statements, cancels, and clients that vanish mid-query or mid-transaction. Meanwhile the
operator, in turn: reloads (SIGHUP) with another pool_size, pool mode and routes; runs console
PAUSE/RESUME, RECONNECT, KILL_CLIENT and RELOAD; terminates the pooler's backends
(`pg_terminate_backend`); restarts PostgreSQL; restarts the pooler online (SIGUSR2). At the end
SIGTERM arrives under the load while transactions are open; they commit, and the pooler
exits.

Errors the clients see are expected (their backend was terminated, their worker restarted);
what is held is the pooler's side: its log (every process) has no traceback, no
IllegalTransition, no unretrieved task exception; once the load stops, no server is left
`active` or `used` without a client, no backend is left `idle in transaction`, and a route's
whole pool_size can be taken at once (no slot leaked). test_chaos.py covers worker SIGKILLs
and `workers` changes; this one covers the operator's other actions. POOLER_OPS_SECONDS
sets how long the load runs (15 s by default), POOLER_OPS_SEED the order of the actions.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import signal
import socket
import threading
import time
import traceback

import asyncpg
import psycopg
import pytest
from asyncpg.exceptions import InternalClientError
from harness import HOST, make_config, route, wait_until
from test_online_restart import HANDED, alive

SECONDS = float(os.environ.get("POOLER_OPS_SECONDS", "15"))
SEED = os.environ.get("POOLER_OPS_SEED", "18")
POOL_SIZE = 4
BAD_LOG = re.compile(
    r"Traceback \(most recent call last\)|IllegalTransition|illegal server transition"
    r"|Task exception was never retrieved|unhandled",
    re.IGNORECASE,
)


def config(pool_size: int = POOL_SIZE, p0_pool: str = "statement", extra: bool = False) -> str:
    routes = [
        route("p1", pool="transaction", pool_size=pool_size, pool_timeout=20000),
        route("p2", pool="session", pool_size=pool_size, pool_timeout=20000),
        route("p0", pool=p0_pool, pool_size=pool_size, pool_timeout=20000),
    ]
    if extra:  # a route added and removed by reloads
        routes.insert(0, route("p2", "md5_user", pool="transaction", pool_size=2))
    return make_config(routes, workers=2, log_session=False, graceful_shutdown_timeout_ms=20000)


class Load:
    """Client threads looping until `stop`; each counts what it did and what failed."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.stop = threading.Event()
        self.done: dict[str, int] = {}
        self.errors: dict[str, int] = {}
        self.odd: list[str] = []  # an exception that is no driver error: the test fails
        self.lock = threading.Lock()
        self.threads: list[threading.Thread] = []

    def dsn(self, db: str) -> str:
        return f"host={HOST} port={self.port} dbname={db} user=postgres connect_timeout=20"

    def loop(self, name: str, body) -> None:
        def run() -> None:
            rnd = random.Random(f"{SEED}-{name}-{len(self.threads)}")
            while not self.stop.is_set():
                try:
                    body(rnd)
                    outcome = self.done
                except (
                    psycopg.Error,
                    asyncpg.PostgresError,
                    asyncpg.InterfaceError,
                    InternalClientError,
                    OSError,
                ):
                    # (asyncpg.InternalClientError too: an unsolicited FATAL, as PostgreSQL
                    # sends on pg_terminate_backend, read just before asyncpg's next query)
                    outcome = self.errors
                    self.stop.wait(0.05)
                except Exception as exc:
                    with self.lock:
                        self.odd.append(f"{name}: {exc!r}\n{traceback.format_exc()}")
                    outcome = self.errors
                with self.lock:
                    outcome[name] = outcome.get(name, 0) + 1

        self.threads.append(threading.Thread(target=run, name=name, daemon=True))

    # psycopg clients ------------------------------------------------------------------

    def transactions(self, rnd: random.Random) -> None:
        with psycopg.connect(self.dsn("p1"), autocommit=True) as conn:
            for _ in range(rnd.randint(1, 5)):
                with conn.transaction():
                    conn.execute("insert into ops_t (v) values (%s)", (rnd.random(),))
                    conn.execute("select pg_sleep(%s)", (rnd.choice((0, 0.01, 0.05)),))

    def prepared(self, rnd: random.Random) -> None:
        with psycopg.connect(self.dsn("p1"), autocommit=True, prepare_threshold=0) as conn:
            for i in range(rnd.randint(5, 30)):
                conn.execute("select %s::int + 1, count(*) from ops_t where id < %s", (i, i))

    def copies(self, rnd: random.Random) -> None:
        with psycopg.connect(self.dsn("p1"), autocommit=True) as conn:
            cur = conn.cursor()
            with cur.copy("copy (select generate_series(1, 20000)) to stdout") as copy:
                for _ in copy:
                    pass
            with cur.copy("copy ops_t (v) from stdin") as copy:
                for i in range(200):
                    copy.write_row((i,))

    def session(self, rnd: random.Random) -> None:
        with psycopg.connect(self.dsn("p2"), autocommit=True) as conn:
            conn.execute("set application_name = 'ops-session'")
            conn.execute("listen ops_channel")
            conn.execute("notify ops_channel, 'x'")
            for _ in conn.notifies(timeout=1, stop_after=1):
                pass
            conn.execute("begin")
            conn.execute("select count(*) from pg_class")
            if rnd.random() < 0.5:
                conn.execute("commit")

    def statements(self, rnd: random.Random) -> None:
        with psycopg.connect(self.dsn("p0"), autocommit=True) as conn:
            for _ in range(rnd.randint(1, 20)):
                conn.execute(
                    "select abalance from pgbench_accounts where aid = %s", (rnd.randint(1, 9),)
                )

    def cancels(self, rnd: random.Random) -> None:
        with psycopg.connect(self.dsn(rnd.choice(("p1", "p2"))), autocommit=True) as conn:

            def cancel() -> None:
                with contextlib.suppress(psycopg.Error):  # (refused: the pooler stops)
                    conn.cancel()

            timer = threading.Timer(rnd.uniform(0.01, 0.2), cancel)
            timer.start()
            try:
                with contextlib.suppress(psycopg.errors.QueryCanceled):
                    conn.execute("select pg_sleep(0.5)")
            finally:
                timer.cancel()

    def vanishing(self, rnd: random.Random) -> None:
        """A client gone mid-query, mid-transaction or mid-COPY (its socket shut, no
        Terminate)."""
        db = rnd.choice(("p1", "p2", "p0"))
        conn = psycopg.connect(self.dsn(db), autocommit=True)
        try:
            what = rnd.choice(
                (
                    b"select pg_sleep(0.3)",
                    b"begin; insert into ops_t (v) values (1); select pg_sleep(0.3)",
                    b"copy (select generate_series(1, 300000)) to stdout",
                    b"begin",
                )
            )
            if db == "p0" and what.startswith(b"begin"):
                what = b"select pg_sleep(0.3)"
            conn.pgconn.send_query(what)
            conn.pgconn.flush()
            time.sleep(rnd.uniform(0, 0.1))
            with socket.socket(fileno=os.dup(conn.fileno())) as sock:
                sock.shutdown(socket.SHUT_RDWR)
        finally:
            conn.close()

    # asyncpg clients --------------------------------------------------------------------

    def asyncpg_clients(self, rnd: random.Random) -> None:
        async def one(db: str) -> None:
            conn = await asyncpg.connect(
                host=HOST, port=self.port, user="postgres", database=db, timeout=20
            )
            try:
                statement = await conn.prepare("select $1::int * 2, $2::text")
                for i in range(rnd.randint(1, 10)):
                    await statement.fetchrow(i, "x")
                    await conn.fetchval("select count(*) from ops_t where id > $1", i)
                if db == "p1":
                    async with conn.transaction():
                        await conn.execute("insert into ops_t (v) values ($1)", 1.5)
                        await conn.fetch("select * from generate_series(1, 100)")
            finally:
                await conn.close(timeout=5)

        async def many() -> None:
            # (every one ends before the first failure is raised: a task cancelled under
            # its close is asyncpg's InternalClientError, the test's fault)
            outcomes = await asyncio.gather(
                *(one(db) for db in ("p1", "p2", "p1")), return_exceptions=True
            )
            for outcome in outcomes:
                if isinstance(outcome, BaseException):
                    raise outcome

        asyncio.run(many())

    def start(self) -> None:
        for name, body, count in (
            ("transactions", self.transactions, 3),
            ("prepared", self.prepared, 1),
            ("copies", self.copies, 1),
            ("session", self.session, 2),
            ("statements", self.statements, 1),
            ("cancels", self.cancels, 1),
            ("vanishing", self.vanishing, 1),
            ("asyncpg", self.asyncpg_clients, 1),
        ):
            for _ in range(count):
                self.loop(name, body)
        for thread in self.threads:
            thread.start()

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(60)
        assert not any(t.is_alive() for t in self.threads), "a client thread hangs"


class Operator:
    """The operator's actions, one at a time, in a seeded order; `pid` follows the pooler
    across online restarts."""

    def __init__(self, p, pg) -> None:
        self.p = p
        self.pg = pg
        self.pid = p.pid
        self.rnd = random.Random(SEED)
        self.done: list[str] = []
        self.offset = 0

    def admin(self, command: str) -> list[tuple]:
        with psycopg.connect(self.p.dsn("console", "admin"), autocommit=True) as conn:
            cur = conn.execute(command)
            return cur.fetchall() if cur.description else []

    def reload(self, **kw) -> None:
        self.p.write_config(config(**kw))
        os.kill(self.pid, signal.SIGHUP)

    def act(self) -> None:
        actions = {
            "reload pool_size": lambda: self.reload(pool_size=self.rnd.choice((2, 3, POOL_SIZE))),
            "reload pool mode": lambda: self.reload(
                p0_pool=self.rnd.choice(("statement", "transaction"))
            ),
            "reload routes": lambda: self.reload(extra=self.rnd.random() < 0.5),
            "console RELOAD": lambda: self.admin("RELOAD"),
            "console PAUSE/RESUME": self.pause_resume,
            "console RECONNECT": lambda: self.admin("RECONNECT"),
            "console KILL_CLIENT": self.kill_client,
            "pg_terminate_backend": self.terminate,
            "PostgreSQL restart": self.pg.restart,
            "SIGUSR2": self.online_restart,
        }
        name = self.rnd.choice(sorted(actions))
        self.done.append(name)
        actions[name]()

    def pause_resume(self) -> None:
        done = threading.Event()

        def pause() -> None:
            # PAUSE returns once the paused routes hold no server: open transactions finish
            with contextlib.suppress(psycopg.Error):
                self.admin("PAUSE p1")
            done.set()

        thread = threading.Thread(target=pause, daemon=True)
        thread.start()
        done.wait(self.rnd.uniform(0.1, 1.0))
        self.admin("RESUME p1")
        thread.join(60)
        assert not thread.is_alive(), "PAUSE did not return after RESUME"

    def kill_client(self) -> None:
        rows = [r for r in self.admin("SHOW CLIENTS") if r[2] != "console"]
        if rows:
            client_id = self.rnd.choice(rows)[-1]  # (the `ptr` column: the client's id)
            with contextlib.suppress(psycopg.errors.UndefinedObject):  # it left meanwhile
                self.admin(f"KILL_CLIENT {client_id}")

    def terminate(self) -> None:
        self.pg.psql(
            "select pg_terminate_backend(pid) from pg_stat_activity "
            "where datname in ('p0', 'p1', 'p2') and backend_type = 'client backend' "
            "and pid <> pg_backend_pid() and random() < 0.5"
        )

    def online_restart(self) -> None:
        since = self.p.log_offset()
        os.kill(self.pid, signal.SIGUSR2)
        wait_until(lambda: HANDED.search(self.p.log_text(since)), timeout=30)
        old, self.pid = self.pid, int(HANDED.search(self.p.log_text(since)).group(1))
        wait_until(lambda: not alive(old), timeout=40, message="the old process to drain")


def pooler_backends(pg) -> list[tuple]:
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        return conn.execute(
            "select pid, datname, state, query from pg_stat_activity "
            "where datname in ('p0', 'p1', 'p2') and backend_type = 'client backend' "
            "and pid <> pg_backend_pid()"
        ).fetchall()


def servers_without_clients(op: Operator) -> list[tuple]:
    """SHOW SERVERS rows still `active` or `used` once no client is connected."""
    return [r for r in op.admin("SHOW SERVERS") if r[2] != "console" and r[4] != "idle"]


@pytest.mark.timeout(SECONDS + 240)
def test_operator_actions_under_load_leave_no_traceback_stuck_server_or_leaked_slot(pooler, pg):
    for db in ("p1", "p2"):
        pg.psql("drop table if exists ops_t; create table ops_t (id serial, v float)", db=db)
    p = pooler(config())
    op = Operator(p, pg)
    load = Load(p.port)
    load.start()
    try:
        deadline = time.monotonic() + SECONDS
        while time.monotonic() < deadline:
            time.sleep(op.rnd.uniform(0.2, 0.8))
            op.act()
    finally:
        load.finish()
    summary = f"actions: {op.done}\ndone: {load.done}\nerrors: {load.errors}"
    print(summary)
    assert not load.odd, "\n".join(load.odd[:3]) + summary
    assert sum(load.done.values()) > 0, summary

    # settled: no client, so no server active or resetting, none idle in transaction
    op.reload()  # back to the first config
    wait_until(
        lambda: not [r for r in op.admin("SHOW CLIENTS") if r[2] != "console"],
        timeout=30,
        message=lambda: f"clients to leave: {op.admin('SHOW CLIENTS')}",
    )
    wait_until(
        lambda: not servers_without_clients(op),
        timeout=30,
        message=lambda: f"servers back idle: {servers_without_clients(op)}",
    )
    wait_until(
        lambda: not [b for b in pooler_backends(pg) if b[2] != "idle"],
        timeout=30,
        message=lambda: f"backends idle: {pooler_backends(pg)}",
    )
    # no slot leaked: each pool's whole pool_size can be taken at once
    for db in ("p1", "p2"):
        conns = [psycopg.connect(load.dsn(db)) for _ in range(POOL_SIZE)]
        try:
            for conn in conns:
                try:
                    conn.execute("select 1")  # (a transaction: each holds its server)
                except psycopg.Error as exc:
                    raise AssertionError(
                        f"{db}: {exc}\n{op.admin('SHOW SERVERS')}\n{op.admin('SHOW POOLS')}"
                        f"\n{pooler_backends(pg)}\n{summary}"
                    ) from None
        finally:
            for conn in conns:
                conn.close()

    # SIGTERM under the load, with transactions open: they finish, the pooler exits
    load = Load(p.port)
    load.start()
    wait_until(lambda: sum(load.done.values()) >= 20, timeout=30, message="the load again")
    open_ones = [psycopg.connect(load.dsn(db)) for db in ("p1", "p1", "p2")]
    for conn in open_ones:
        conn.execute("insert into ops_t (v) values (-1)")
    since = p.log_offset()
    os.kill(op.pid, signal.SIGTERM)
    p.wait_for_log("termination signal received", since=since)
    try:
        for conn in open_ones:
            conn.commit()
            conn.close()
    finally:
        load.finish()
    assert not load.odd, "\n".join(load.odd[:3])
    wait_until(lambda: not alive(op.pid), timeout=30, message="the pooler to exit")
    # nothing was left waiting for graceful_shutdown_timeout_ms: every client went
    assert not p.log_contains("graceful_shutdown_timeout_ms passed", since=since), p.log_text(
        since
    )[-3000:]
    for db in ("p1", "p2"):
        pg.psql("drop table ops_t", db=db)
    bad = [line for line in p.log_text().splitlines() if BAD_LOG.search(line)]
    assert not bad, "\n".join(bad[:20]) + "\n" + p.log_text()[-6000:]
