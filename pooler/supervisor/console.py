"""Console commands, executed in the supervisor for whichever worker holds the console client.

`execute(sup, role, text)` splits a Query into statements and answers each with
("result", Result) / ("empty",) / ("error", sqlstate, message); the worker encodes them.
Words are matched case-insensitively; `SHOW POOLS;` and `show pools` are the same.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from pooler.supervisor import aggregate, odyssey_views, views
from pooler.supervisor.result import BOOL, FLOAT4, Result

if TYPE_CHECKING:
    from pooler.config import Config
    from pooler.control import schema
    from pooler.snapshot import WorkerSnapshot
    from pooler.supervisor.host_watcher import HostWatcher


class Supervisor(Protocol):
    """What the console needs of the supervisor (pooler.supervisor.main.Supervisor), which
    imports this module, not the other way round."""

    @property
    def config(self) -> Config: ...
    @property
    def db_rates(self) -> dict[str, aggregate.Rates]: ...
    @property
    def host_watcher(self) -> HostWatcher | None: ...
    def snapshots(self) -> list[WorkerSnapshot]: ...
    def paused_state(self) -> set[str] | bool: ...
    def quantiles(self) -> tuple[float, ...]: ...
    def obsolete_rules(self) -> list[Any]: ...
    async def gather(self, what: str) -> list[Any]: ...
    def reload(self, trigger: str = ..., text: str | None = ...) -> schema.ReloadResult: ...
    async def admin_action(self, verb: str, db: str | None) -> None: ...
    async def kill_client(self, client_id: str) -> bool: ...
    def shutdown_soon(self, graceful: bool) -> None: ...


ROLE_ERROR = ("42501", "Unsuitable user role to emit console command")
ADMIN_COMMANDS = frozenset(
    {"reload", "pause", "resume", "reconnect", "kill_client", "shutdown", "set", "kill"}
)


def split_statements(text: str) -> list[str]:
    """Split on `;` outside quotes."""
    out, cur, quote = [], [], ""
    for ch in text:
        if quote:
            cur.append(ch)
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
            cur.append(ch)
        elif ch == ";":
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    out.append("".join(cur))
    return [s.strip() for s in out if s.strip()]


def _arg(words: list[str], index: int) -> str | None:
    if len(words) <= index:
        return None
    word = words[index]
    if len(word) >= 2 and word[0] == word[-1] and word[0] in "'\"":
        word = word[1:-1]
    return word


async def execute(
    sup: Supervisor, role: str, text: str, client_id: str = ""
) -> list[tuple[Any, ...]]:
    statements = split_statements(text)
    if not statements:
        return [("empty",)]
    out: list[tuple[Any, ...]] = []
    for statement in statements:
        item = await _one(sup, role, statement, client_id)
        out.append(item)
        if item[0] == "error":
            break
    return out


async def _one(sup: Supervisor, role: str, statement: str, client_id: str) -> tuple[Any, ...]:
    words = statement.split()
    verb = words[0].lower()
    if verb in ADMIN_COMMANDS and role != "admin":
        return ("error", *ROLE_ERROR)
    if role not in ("admin", "stat"):
        return ("error", *ROLE_ERROR)
    try:
        if verb == "show":
            what = (_arg(words, 1) or "").lower()
            if what == "host_utilization" and sup.host_watcher is None:
                return ("error", "55000", "host watcher is off (enable_host_watcher no)")
            result = await show(sup, what)
            if result is None:
                return ("error", "42601", f"unknown command 'SHOW {_arg(words, 1) or ''}'".rstrip())
            return ("result", result)
        if verb == "reload":
            outcome = sup.reload("console")
            if not outcome.ok:
                return ("error", "F0000", "reload failed: " + "; ".join(outcome.errors))
            return ("result", Result([], [], "RELOAD"))
        if verb in ("pause", "resume", "reconnect"):
            db = _arg(words, 1)
            await sup.admin_action(verb, db)
            return ("result", Result([], [], verb.upper()))
        if verb == "kill":
            db = _arg(words, 1)
            refusal = _kill_refusal(sup, db)
            if refusal is not None:
                return ("error", "42704", refusal)
            await sup.admin_action("kill", db)
            return ("result", Result([], [], "KILL"))
        if verb == "kill_client":
            target = _arg(words, 1)
            if not target:
                return ("error", "42601", "KILL_CLIENT needs a client id")
            if not await sup.kill_client(target):
                return ("error", "42704", f"client '{target}' not found")
            return ("result", Result([], [], "KILL_CLIENT"))
        if verb == "shutdown":
            sup.shutdown_soon(graceful=False)
            return ("result", Result([], [], "SHUTDOWN"))
        if verb == "set":
            return ("result", Result([], [], "SET", ["SET ignored"]))
    except TimeoutError:
        return ("error", "57014", f"console command timed out: {statement}")
    return ("error", "42601", f"unknown command '{words[0]}', use SHOW HELP")


def _kill_refusal(sup: Supervisor, db: str | None) -> str | None:
    """Why `KILL db` is refused (pgbouncer's texts), None when it may run: a database is one a
    rule names, or any name when a rule has `database default` (its routes are made on
    demand, as pgbouncer's auto-database), or one a route goes to; the console's own is
    never killed."""
    if db is None:
        return None
    config = sup.config
    names: set[str] = set()
    wildcard = False
    for rule in config.rules:
        storage = config.storage(rule.storage) if rule.storage is not None else None
        if storage is not None and storage.type == "local":
            if rule.database == db:
                return f"cannot kill admin db: {db}"
            continue
        wildcard = wildcard or rule.database is None
        names.add(rule.db_name)
    if wildcard or db in names:
        return None
    for snapshot in sup.snapshots():
        if any(db in (r.database, r.backend_db) for r in snapshot.routes):
            return None
    return f"no such database: {db}"


async def show(sup: Supervisor, what: str) -> Result | None:
    config = sup.config
    snapshots = sup.snapshots()
    routes = aggregate.merge_routes(snapshots)
    if what == "pools":
        return views.show_pools(routes)
    if what == "pools_extended":
        return odyssey_views.show_pools_extended(routes, sup.quantiles())
    if what == "stats":
        return views.show_stats(routes, sup.db_rates, "stats")
    if what == "stats_totals":
        return views.show_stats(routes, sup.db_rates, "totals")
    if what == "stats_averages":
        return views.show_stats(routes, sup.db_rates, "averages")
    if what == "databases":
        return views.show_databases(config, routes, sup.paused_state())
    if what == "users":
        return views.show_users(config, routes)
    if what == "lists":
        return views.show_lists(config, routes, snapshots)
    if what == "version":
        return views.show_version()
    if what == "state":
        return views.show_state(sup.paused_state() is True)
    if what == "config":
        return views.show_config(config)
    if what == "rules":
        return odyssey_views.show_rules(config, sup.obsolete_rules())
    if what == "errors":
        return odyssey_views.show_errors(routes, snapshots)
    if what == "storages":
        return odyssey_views.show_storages(config)
    if what == "listen":
        return odyssey_views.show_listen(config)
    if what == "help":
        return views.show_help()
    if what == "clients":
        return views.show_sockets(await sup.gather("clients"))
    if what == "servers":
        return views.show_sockets(await sup.gather("servers"))
    if what == "host_utilization" and sup.host_watcher is not None:
        watcher = sup.host_watcher
        return Result(
            [("cpu", FLOAT4), ("mem", FLOAT4)],
            [(f"{watcher.cpu:.2f}", f"{watcher.mem:.2f}")],
            "HOST_UTILIZATION",
        )
    if what == "is_paused":
        return Result([("is_paused", BOOL)], [(sup.paused_state() is True,)])
    return None
