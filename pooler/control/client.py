"""A small asyncio client for the control socket (used by the tui and the tests).

    async with ControlClient(path) as c:
        status = await c.status()
        async for event in c.subscribe():      # StatsEvent every stats_interval
            ...

Plain asyncio streams; no server, no uvloop imports.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from pooler.control import schema


def default_control_path(config_path: str | os.PathLike[str]) -> Path:
    """`<config dir>/.<config file name>.control` (see docs/control-protocol.md)."""
    path = Path(config_path).resolve()
    return path.with_name(f".{path.name}.control")


MAX_UNIX_PATH = 100  # sun_path is 108 bytes on Linux


class _Reachable:
    """A Unix socket path short enough for sun_path: long paths go through an O_PATH handle on
    their directory (`/proc/self/fd/N/name`, Linux); close() releases it."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._fd: int | None = None
        if len(os.fsencode(self.path)) > MAX_UNIX_PATH and os.path.isdir("/proc/self/fd"):
            directory, name = os.path.split(os.path.abspath(self.path))
            self._fd = os.open(directory, os.O_PATH | os.O_DIRECTORY)
            self.path = f"/proc/self/fd/{self._fd}/{name}"

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class ControlError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class ControlClient:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = str(path)
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._ids = itertools.count(1)
        self._pending: dict[Any, asyncio.Future[dict[str, Any]]] = {}
        self._events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._reader_task: asyncio.Task[None] | None = None

    async def connect(self) -> ControlClient:
        reachable = _Reachable(self.path)
        try:
            self._reader, self._writer = await asyncio.open_unix_connection(
                reachable.path, limit=schema.MAX_LINE
            )
        finally:
            reachable.close()
        self._reader_task = asyncio.get_running_loop().create_task(self._read_loop())
        return self

    async def close(self) -> None:
        if self._reader_task is not None:
            self._reader_task.cancel()
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await self._writer.wait_closed()

    async def __aenter__(self) -> ControlClient:
        return await self.connect()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _read_loop(self) -> None:
        assert self._reader is not None
        try:
            while True:
                line = await self._reader.readline()
                if not line:
                    break
                message = json.loads(line)
                if "event" in message:
                    self._events.put_nowait(message)
                    continue
                future = self._pending.pop(message.get("id"), None)
                if future is not None and not future.done():
                    future.set_result(message)
        finally:
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(ConnectionError("control socket closed"))
            self._events.put_nowait({"event": "closed", "data": None})

    async def raw(self, message: dict[str, Any] | bytes) -> dict[str, Any]:
        """Send a message as is (bytes: one raw line) and return the reply object."""
        assert self._writer is not None
        if isinstance(message, dict):
            message = {"version": schema.PROTOCOL_VERSION, **message}
            message.setdefault("id", next(self._ids))
            request_id = message["id"]
            data = schema.encode(message)
        else:
            request_id = None
            data = message if message.endswith(b"\n") else message + b"\n"
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        self._writer.write(data)
        await self._writer.drain()
        return await future

    async def request(self, request: schema.Request) -> Any:
        request.id = next(self._ids)
        reply = await self.raw(request.to_json())
        if not reply.get("ok"):
            err = reply.get("error", {})
            raise ControlError(err.get("code", "error"), err.get("message", ""))
        return schema.decode_data(reply["type"], reply["data"])

    async def status(self) -> schema.Status:
        result: schema.Status = await self.request(schema.StatusRequest())
        return result

    async def workers(self) -> list[schema.WorkerInfo]:
        result: list[schema.WorkerInfo] = await self.request(schema.WorkersRequest())
        return result

    async def pools(self) -> list[schema.PoolInfo]:
        result: list[schema.PoolInfo] = await self.request(schema.PoolsRequest())
        return result

    async def clients(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = await self.request(schema.ClientsRequest())
        return result

    async def servers(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = await self.request(schema.ServersRequest())
        return result

    async def stats(self) -> schema.StatsEvent:
        result: schema.StatsEvent = await self.request(schema.StatsRequest())
        return result

    async def config_get(self) -> schema.ConfigInfo:
        result: schema.ConfigInfo = await self.request(schema.ConfigGetRequest())
        return result

    async def reload(self) -> schema.ReloadResult:
        result: schema.ReloadResult = await self.request(schema.ReloadRequest())
        return result

    async def config_validate(self, text: str) -> dict[str, Any]:
        """{"ok", "errors": [{file, line, column, message, text}], "changes", ...}"""
        result: dict[str, Any] = await self.request(schema.ConfigValidateRequest(text=text))
        return result

    async def config_apply(self, text: str, hash: str) -> dict[str, Any]:
        """Validate, write, reload; ControlError `conflict` if the file changed meanwhile."""
        result: dict[str, Any] = await self.request(schema.ConfigApplyRequest(text=text, hash=hash))
        return result

    async def reloads(self) -> list[schema.ReloadResult]:
        result: list[schema.ReloadResult] = await self.request(schema.ReloadsRequest())
        return result

    async def pause(self, database: str | None = None) -> Any:
        return await self.request(schema.PauseRequest(database=database))

    async def resume(self, database: str | None = None) -> Any:
        return await self.request(schema.ResumeRequest(database=database))

    async def reconnect(self, database: str | None = None) -> Any:
        return await self.request(schema.ReconnectRequest(database=database))

    async def kill_client(self, client_id: str) -> Any:
        return await self.request(schema.KillClientRequest(client_id=client_id))

    async def subscribe(self, topics: list[str] | None = None) -> AsyncIterator[schema.StatsEvent]:
        """Subscribe and yield StatsEvents until the socket closes."""
        await self.request(schema.SubscribeRequest(topics=topics or ["stats"]))
        while True:
            message = await self._events.get()
            if message["event"] == "closed":
                return
            if message["event"] == "stats":
                yield schema.decode_data("stats", message["data"])
