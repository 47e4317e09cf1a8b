"""Soak: many asyncpg clients (long-lived and connect-per-transaction) through a small pool,
running a counter workload; used by tests/integration/test_soak.py and bench/soak.

Each transaction increments one row of ``soak_counter``; a client counts a commit only when
COMMIT returned. At the end the table's sum must equal the commits, SHOW POOLS must agree
with pg_stat_activity (no leaked or orphaned server connections), and the workers' RSS after
warm-up must not grow by 10 % or more.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from wire import rss_kb, workers

ROWS = 50


@dataclass
class SoakReport:
    clients: int = 0
    seconds: float = 0.0
    commits: int = 0
    table_sum: int = 0
    connects: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    peak_servers: int = 0
    pool_servers_end: int = -1
    pg_servers_end: int = -1
    rss_warm_kb: int = 0
    rss_end_kb: int = 0
    rss_max_kb: int = 0

    @property
    def rss_growth(self) -> float:
        return (self.rss_end_kb - self.rss_warm_kb) / max(1, self.rss_warm_kb)

    def summary(self) -> str:
        return (
            f"{self.clients} clients, {self.seconds:.0f} s, {self.commits} commits "
            f"({self.commits / max(self.seconds, 1e-9):.0f}/s), sum {self.table_sum}, "
            f"connects {self.connects}, errors {dict(self.errors)}, peak servers "
            f"{self.peak_servers}, servers at end: pool {self.pool_servers_end} / "
            f"pg_stat_activity {self.pg_servers_end}, RSS warm {self.rss_warm_kb} kB -> end "
            f"{self.rss_end_kb} kB ({self.rss_growth:+.1%}, max {self.rss_max_kb} kB)"
        )


def setup_table(pg: Any, db: str) -> None:
    pg.psql(
        "drop table if exists soak_counter;"
        "create table soak_counter (id int primary key, n bigint not null default 0);"
        f"insert into soak_counter select g, 0 from generate_series(1, {ROWS}) g;"
        "grant all on soak_counter to public;",
        db=db,
    )


def drop_table(pg: Any, db: str) -> None:
    pg.psql("drop table if exists soak_counter", db=db)


async def run(
    p: Any,
    pg: Any,
    *,
    db: str = "p1",
    clients: int = 400,
    seconds: float = 20.0,
    per_transaction: float = 0.25,
    think: tuple[float, float] = (0.02, 0.2),
    warmup: float | None = None,
) -> SoakReport:
    report = SoakReport(clients=clients)
    stop = asyncio.Event()
    commits = [0]
    dsn = f"postgresql://postgres@127.0.0.1:{p.port}/{db}"
    direct = await asyncpg.connect(f"postgresql://postgres@127.0.0.1:{pg.port}/{db}")
    activity = (
        "select count(*) from pg_stat_activity where datname = $1 "
        "and backend_type = 'client backend' and pid <> pg_backend_pid()"
    )

    async def connect() -> asyncpg.Connection:
        for attempt in range(50):
            try:
                conn = await asyncpg.connect(dsn, timeout=30)
                report.connects += 1
                return conn
            except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
                report.errors[f"connect {type(exc).__name__}"] += 1
                await asyncio.sleep(0.05 * (attempt + 1))
        raise RuntimeError("could not connect")

    async def transaction(conn: asyncpg.Connection, rng: random.Random) -> None:
        try:
            async with conn.transaction():
                await conn.execute(
                    "update soak_counter set n = n + 1 where id = $1", rng.randint(1, ROWS)
                )
        except (asyncpg.PostgresError, OSError, asyncpg.InterfaceError) as exc:
            report.errors[type(exc).__name__] += 1
            return
        commits[0] += 1

    async def long_lived(i: int) -> None:
        rng = random.Random(i)
        await asyncio.sleep(rng.uniform(0, 2))
        conn = await connect()
        try:
            while not stop.is_set():
                await transaction(conn, rng)
                await asyncio.sleep(rng.uniform(*think))
        finally:
            await conn.close()

    async def one_shot(i: int) -> None:
        rng = random.Random(-i)
        await asyncio.sleep(rng.uniform(0, 2))
        while not stop.is_set():
            conn = await connect()
            try:
                await transaction(conn, rng)
            finally:
                await conn.close()
            await asyncio.sleep(rng.uniform(*think))

    pids = [w.pid for w in await asyncio.to_thread(workers, p)]

    def rss() -> int:
        return sum(rss_kb(pid) for pid in pids)

    n_short = int(clients * per_transaction)
    started = time.monotonic()
    tasks = [asyncio.create_task(long_lived(i)) for i in range(clients - n_short)]
    tasks += [asyncio.create_task(one_shot(i)) for i in range(n_short)]
    warm_at = started + (warmup if warmup is not None else max(4.0, seconds * 0.25))
    warm_taken = False
    try:
        while time.monotonic() - started < seconds:
            await asyncio.sleep(0.5)
            for t in tasks:
                if t.done() and t.exception():
                    raise t.exception()  # type: ignore[misc]
            report.peak_servers = max(report.peak_servers, await direct.fetchval(activity, db))
            now_rss = rss()
            report.rss_max_kb = max(report.rss_max_kb, now_rss)
            if not warm_taken and time.monotonic() >= warm_at:
                report.rss_warm_kb = now_rss
                warm_taken = True
        report.rss_end_kb = rss()
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
    report.seconds = time.monotonic() - started
    report.commits = commits[0]
    report.table_sum = await direct.fetchval("select sum(n) from soak_counter")

    # no leaked servers: the pooler's count and PostgreSQL's agree once things settle
    def pool_servers() -> int:
        rows = p.admin("show pools")
        return sum(r[6] + r[9] + r[12] for r in rows if r[0] != "console")

    deadline = time.monotonic() + 10
    while True:
        await asyncio.sleep(1.2)  # the console reports worker snapshots (every second)
        report.pool_servers_end = await asyncio.to_thread(pool_servers)
        report.pg_servers_end = await direct.fetchval(activity, db)
        if report.pool_servers_end == report.pg_servers_end or time.monotonic() > deadline:
            break
    await direct.close()
    return report
