"""Replica-lag aware routing (issue 18 item 4): a storage `watchdog` polls a real streaming
replica's heartbeat and a rule's (or listen's) `catchup_timeout` refuses new clients while the
replica lags that much; clients already in keep working.

The primary updates a repl_mon-style heartbeat row every 0.2 s; the replica replays it, so
its copy of the row is as old as its replay lag. Pausing replay (`pg_wal_replay_pause()`) makes
the lag grow, resuming it makes it vanish.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import asyncpg
import psycopg
import pytest
from harness import HOST, free_port, make_config, release_port, route, storage, wait_until

from pooler.pgcluster import PgCluster, conninfo

HEARTBEAT_TABLE = "pooler_test_heartbeat"
LAG_QUERY = f"SELECT TRUNC(EXTRACT(EPOCH FROM ts)) FROM {HEARTBEAT_TABLE}"
LIMIT = 3  # catchup_timeout, seconds


@pytest.fixture(scope="module")
def heartbeat(pg: PgCluster, replica: PgCluster) -> Iterator[None]:
    """The primary writes now() into the heartbeat row every 0.2 s while the module runs."""
    pg.psql(
        f"CREATE TABLE {HEARTBEAT_TABLE} (ts timestamptz); INSERT INTO {HEARTBEAT_TABLE} VALUES (now());"
    )
    stop = threading.Event()

    def beat() -> None:
        with psycopg.connect(pg.dsn(), autocommit=True) as conn:
            while not stop.wait(0.2):
                conn.execute(f"UPDATE {HEARTBEAT_TABLE} SET ts = now()")

    writer = threading.Thread(target=beat, name="heartbeat", daemon=True)
    writer.start()
    try:
        yield
    finally:
        stop.set()
        writer.join(10)
        pg.psql(f"DROP TABLE {HEARTBEAT_TABLE};")


def watchdog_storage(replica: PgCluster) -> str:
    block = storage("replica", host=HOST, port=replica.port)
    watchdog = "\n".join(
        [
            "\twatchdog {",
            '\t\tauthentication "none"',
            '\t\tstorage "replica"',
            '\t\tstorage_db "postgres"',
            '\t\tstorage_user "postgres"',
            '\t\tpool "transaction"',
            '\t\tpool_routing "internal"',
            f'\t\twatchdog_lag_query "{LAG_QUERY}"',
            "\t\twatchdog_lag_interval 1",
            "\t}",
        ]
    )
    return block[: block.rindex("}")] + watchdog + "\n}"


def replay(replica: PgCluster, action: str) -> None:
    replica.psql(f"SELECT pg_wal_replay_{action}();")


def login_error(p, dbname: str = "postgres", port: int | None = None) -> str | None:
    """None when a new client gets in (and is served by the replica), else its error."""
    try:
        dsn = conninfo(host=HOST, port=port or p.port, dbname=dbname, user="postgres")
        with psycopg.connect(dsn, sslmode="disable", connect_timeout=30, autocommit=True) as conn:
            assert conn.execute("select pg_is_in_recovery()").fetchone() == (True,)
    except psycopg.OperationalError as exc:
        return str(exc)
    return None


async def in_recovery_asking(p, catchup_timeout: str) -> bool:
    conn = await asyncpg.connect(
        host=HOST,
        port=p.port,
        user="postgres",
        database="postgres",
        ssl=False,
        server_settings={"odyssey_catchup_timeout": catchup_timeout},
    )
    try:
        return await conn.fetchval("select pg_is_in_recovery()")
    finally:
        await conn.close()


def test_lagging_replica_takes_no_new_clients(pooler, replica, heartbeat) -> None:
    """Rule `postgres.postgres` has catchup_timeout, rule `p0.postgres` has none; a second
    listen block has its own catchup_timeout for all its clients."""
    strict_port = free_port()
    config = make_config(
        [
            route("postgres", "postgres", storage="replica", catchup_timeout=LIMIT),
            route("p0", "postgres", storage="replica"),
        ],
        storages=watchdog_storage(replica),
    )
    config += f'\nlisten {{\n\thost "{HOST}"\n\tport {strict_port}\n\tcatchup_timeout {LIMIT}\n}}\n'
    p = pooler(config)
    try:
        wait_until(lambda: login_error(p) is None, message="a client served by the replica")
        inside = p.connect()  # a session client already in
        replay(replica, "pause")
        try:
            error = wait_until(
                lambda: login_error(p), timeout=LIMIT + 10, message="a refusal while paused"
            )
            assert "replication lag of the node you are trying to connect is too big" in error
            assert "wait until the replica catches up with the primary" in error
            assert login_error(p, "p0", strict_port) is not None  # the listen's limit
            assert login_error(p, "p0") is None  # a rule without catchup_timeout
            assert inside.execute("select 1").fetchone() == (1,)  # clients in keep working
            # a client asking for its own limit (odyssey's startup parameter, never sent on)
            assert asyncio.run(in_recovery_asking(p, "1000")) is True
            p.wait_for_log("replication lag is too big")
            wait_until(lambda: dict(p.admin("show errors"))["OD_ECATCHUP_TIMEOUT"] > 0)
        finally:
            replay(replica, "resume")
        wait_until(lambda: login_error(p) is None, timeout=LIMIT + 10, message="caught up")
        wait_until(lambda: login_error(p, "p0", strict_port) is None, timeout=LIMIT + 10)
        inside.close()
    finally:
        release_port(strict_port)
