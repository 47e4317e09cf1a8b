"""The control socket's requests (pooler/control/schema.py), answered from the supervisor.

`Supervisor.control_request` hands each request here with itself as `sup`.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pooler import __version__
from pooler.config.model import redacted
from pooler.control import schema
from pooler.control.server import Connection
from pooler.supervisor import views
from pooler.supervisor.reload import file_hash
from pooler.supervisor.reloading import _reload_result

if TYPE_CHECKING:
    from pooler.config import Config
    from pooler.snapshot import RouteSnapshot, WorkerSnapshot
    from pooler.supervisor.reload import Reloader
    from pooler.supervisor.workers import WorkerHandle


class Supervisor(Protocol):
    """What the control requests need of the supervisor (pooler.supervisor.main.Supervisor),
    which imports this module, not the other way round."""

    @property
    def config(self) -> Config: ...
    @property
    def path(self) -> Path: ...
    @property
    def started_at(self) -> float: ...
    @property
    def workers(self) -> dict[int, WorkerHandle]: ...
    @property
    def reloader(self) -> Reloader: ...
    @property
    def paused_all(self) -> bool: ...
    @property
    def last_reload(self) -> schema.ReloadResult | None: ...
    @property
    def last_stats(self) -> schema.StatsEvent | None: ...
    def snapshots(self) -> list[WorkerSnapshot]: ...
    def worker_infos(self) -> list[schema.WorkerInfo]: ...
    def pool_infos(self, routes: list[RouteSnapshot] | None = ...) -> list[schema.PoolInfo]: ...
    async def gather(self, what: str) -> list[Any]: ...
    def reload(self, trigger: str = ..., text: str | None = ...) -> schema.ReloadResult: ...
    def validate(self, text: str) -> dict[str, Any]: ...
    def apply(self, text: str, expected_hash: str) -> dict[str, Any]: ...
    async def admin_action(self, verb: str, db: str | None) -> None: ...
    async def kill_client(self, client_id: str) -> bool: ...


async def control_request(
    sup: Supervisor, request: schema.Request, conn: Connection
) -> tuple[str, Any]:
    kind = request.type
    if kind == "status":
        snaps = sup.snapshots()
        return kind, schema.Status(
            version=__version__,
            pid=os.getpid(),
            uptime=round(time.time() - sup.started_at, 3),
            config_path=str(sup.path),
            generation=sup.config.generation,
            workers=len(sup.workers),
            clients=sum(s.clients for s in snaps),
            servers=sum(s.servers for s in snaps),
            paused=sup.paused_all,
            last_reload=sup.last_reload,
        )
    if kind == "workers":
        return kind, sup.worker_infos()
    if kind == "pools":
        return kind, sup.pool_infos()
    if kind in ("clients", "servers"):
        names = [name for name, _ in views.SOCKET_COLUMNS]
        rows = await sup.gather(kind)
        return kind, [dict(zip(names, row, strict=True)) for row in rows]
    if kind == "stats":
        event = sup.last_stats or schema.StatsEvent(time.time(), 0.0, sup.pool_infos(), [])
        return kind, event
    if kind == "subscribe":
        conn.topics.update(request.topics)  # type: ignore[attr-defined]
        return kind, sorted(conn.topics)
    if kind == "unsubscribe":
        conn.topics.difference_update(request.topics)  # type: ignore[attr-defined]
        return kind, sorted(conn.topics)
    if kind == "config_get":
        try:
            text = sup.path.read_text()
        except OSError:
            text = ""
        model = redacted(sup.config)
        return kind, schema.ConfigInfo(
            str(sup.path), sup.config.generation, text, model, file_hash(sup.path)
        )
    if kind == "reload":
        return kind, sup.reload("control")
    if kind == "config_validate":
        return kind, sup.validate(request.text)  # type: ignore[attr-defined]
    if kind == "config_apply":
        return kind, sup.apply(request.text, request.hash)  # type: ignore[attr-defined]
    if kind == "reloads":
        return kind, [_reload_result(o) for o in sup.reloader.history]
    if kind in ("pause", "resume", "reconnect"):
        await sup.admin_action(kind, request.database)  # type: ignore[attr-defined]
        return kind, {"database": request.database}  # type: ignore[attr-defined]
    if kind == "kill_client":
        client_id = request.client_id  # type: ignore[attr-defined]
        if not client_id or not await sup.kill_client(client_id):
            raise schema.ProtocolError("not_found", f"client '{client_id}' not found")
        return kind, {"client_id": client_id}
    raise schema.ProtocolError("unknown_type", f"unknown request type {kind!r}")
