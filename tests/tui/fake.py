"""Canned pooler data for the snapshot tests only (behaviour tests use a real pooler).

FakeSource has the methods of tui.source.ControlSource and answers with fixed schema objects;
its stats stream yields EVENTS events at once and then stays quiet.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from pooler.control import schema
from tui.source import ApplyResult, Validation, validate_text

CONFIG_PATH = "/etc/pooler/pooler.conf"
CONFIG = """\
# pooler demo configuration
workers 2
log_format "%p %t %l [%i %s] (%c) %m\\n"
log_stats yes
stats_interval 1

listen {
\thost "127.0.0.1"
\tport 6432
}

storage "postgres_server" {
\ttype "remote"
\thost "127.0.0.1"
\tport 5432
}

database "shop" {
\tuser "app" {
\t\tauthentication "none"
\t\tstorage "postgres_server"
\t\tpool "transaction"
\t\tpool_size 20
\t}
}
"""
EVENTS = 40
T0 = 1_760_000_000.0  # a fixed unix time


def pool(database: str, user: str, mode: str, size: int, tps: float, **kw: Any) -> schema.PoolInfo:
    base: dict[str, Any] = dict(
        database=database, user=user, backend_db=database, backend_user=user,
        rule=f"{database}.{user} all", generation=0, mode=mode,
        pool_size=size, obsolete=False, clients=12, cl_active=8, cl_waiting=0, sv_active=6,
        sv_idle=2, sv_login=0, maxwait_us=0, xact_count=120_000, query_count=360_000,
        bytes_received=9_000_000, bytes_sent=31_000_000, tps=tps, qps=tps * 3,
        avg_xact_us=850.0, avg_query_us=280.0, avg_wait_us=0.0, p50_xact_us=640.0,
        p95_xact_us=2100.0, p99_xact_us=4800.0, p99_query_us=1900.0, p99_wait_us=0.0,
    )  # fmt: skip
    base.update(kw)
    return schema.PoolInfo(**base)


def pools_at(n: int) -> list[schema.PoolInfo]:
    wave = (n * 7) % 13
    return [
        pool("shop", "app", "transaction", 20, 1200.0 + 60 * wave),
        pool("shop", "report", "session", 4, 12.0 + wave, cl_active=4, cl_waiting=3,
             sv_active=4, sv_idle=0, maxwait_us=1_250_000, avg_xact_us=310_000.0,
             p99_xact_us=2_400_000.0),
        pool("console", "admin", "session", 0, 0.0, clients=1, cl_active=1, sv_active=0,
             sv_idle=0, xact_count=0, query_count=4, avg_xact_us=0.0, p99_xact_us=0.0),
    ]  # fmt: skip


def lines_at(n: int, pools: list[schema.PoolInfo]) -> list[str]:
    out = [f"clients {sum(p.clients for p in pools)}"]
    for p in pools:
        out.append(
            f"[{p.database}.{p.user}] {p.clients} clients, {p.sv_active} active servers, "
            f"{p.sv_idle} idle servers, {p.tps:.0f} transactions/sec ({p.avg_xact_us:.0f} usec) "
            f"{p.qps:.0f} queries/sec ({p.avg_query_us:.0f} usec)"
        )
    return out


STATUS = schema.Status(
    version="0.1.0", pid=4242, uptime=93_784.0, config_path=CONFIG_PATH, generation=3,
    workers=2, clients=25, servers=12, paused=False,
    last_reload=schema.ReloadResult(
        False, 3, [f"{CONFIG_PATH}:22:3: unknown key 'pool_sise' (did you mean 'pool_size'?)"],
        [], T0,
    ),
)  # fmt: skip
WORKERS = [
    schema.WorkerInfo(0, 4243, "running", 13, 6, 0, 23.5, 48_300_000, T0),
    schema.WorkerInfo(1, 4250, "running", 12, 6, 1, 19.8, 47_100_000, T0),
]


def session(kind: str, n: int, database: str, user: str, state: str, link: str) -> dict[str, Any]:
    return {
        "type": kind, "user": user, "database": database, "replication": "", "state": state,
        "addr": "127.0.0.1", "port": 50100 + n, "local_addr": "127.0.0.1", "local_port": 6432,
        "connect_time": "2025-10-09 08:53:20+00", "request_time": "2025-10-09 08:55:01+00",
        "wait": 0, "wait_us": 0, "close_needed": 0, "ptr": f"0x{n:x}", "link": link,
        "remote_pid": 9000 + n if kind == "S" else 0, "tls": "", "application_name": "psql",
        "prepared_statements": 0, "id": f"{kind.lower()}{n:04d}",
    }  # fmt: skip


CLIENTS = [
    session("C", 1, "shop", "app", "active", "s0001"),
    session("C", 2, "shop", "app", "idle", ""),
    session("C", 3, "shop", "report", "waiting", ""),
    session("C", 4, "console", "admin", "active", ""),
]
SERVERS = [
    session("S", 1, "shop", "app", "active", "c0001"),
    session("S", 2, "shop", "app", "idle", ""),
    session("S", 3, "shop", "report", "active", "c0007"),
]


class FakeSource:
    label = "/etc/pooler/.pooler.conf.control"

    def __init__(self) -> None:
        self.killed: list[str] = []

    async def connect(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def status(self) -> schema.Status:
        return STATUS

    async def workers(self) -> list[schema.WorkerInfo]:
        return WORKERS

    async def pools(self) -> list[schema.PoolInfo]:
        return pools_at(EVENTS - 1)

    async def clients(self) -> list[dict[str, Any]]:
        return [c for c in CLIENTS if c["id"] not in self.killed]

    async def servers(self) -> list[dict[str, Any]]:
        return SERVERS

    async def config_get(self) -> schema.ConfigInfo:
        return schema.ConfigInfo(CONFIG_PATH, STATUS.generation, CONFIG, {})

    async def kill_client(self, client_id: str) -> Any:
        self.killed.append(client_id)
        return {"client_id": client_id}

    async def config_validate(self, text: str) -> Validation:
        result = validate_text(text, CONFIG_PATH, CONFIG)
        result.where = "server"
        return result

    async def config_apply(self, text: str, hash: str) -> ApplyResult:
        return ApplyResult(False, problems=[], where="server")

    async def subscribe(self) -> AsyncIterator[schema.StatsEvent]:
        for n in range(EVENTS):
            pools = pools_at(n)
            yield schema.StatsEvent(T0 + n, 1.0, pools, lines_at(n, pools))
        await asyncio.Event().wait()  # then nothing more
