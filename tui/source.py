"""The dashboard's only way to the pooler: a thin wrapper over `pooler.control.ControlClient`.

It adds the hot-reload requests `config_validate` and `config_apply` (sent by name, so the UI
works as soon as the server implements them) and, while the server answers `unknown_type`,
falls back to checking the text with `pooler.config` locally and to writing the file and
sending `reload`. Imports only `pooler.config` and `pooler.control`.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pooler.config.files import write_atomically
from pooler.control import schema
from pooler.control.client import ControlClient, ControlError

_POSITION = re.compile(r"^(?P<file>.*?):(?P<line>\d+):(?P<column>\d+): (?P<message>.*)$", re.S)


def change_text(raw: Any) -> str:
    """A diff line from `changes` (a string, or an object with text/restart_required)."""
    if isinstance(raw, dict):
        text = str(raw.get("text") or raw.get("change") or raw)
        return f"restart required: {text}" if raw.get("restart_required") else text
    return str(raw)


def text_hash(text: str) -> str:
    """What `config_apply` compares with the file on disk: sha256 of its UTF-8 bytes."""
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class ConfigProblem:
    """One error found in the edited text; line/column are 1-based (None: no position)."""

    message: str
    line: int | None = None
    column: int | None = None

    @classmethod
    def parse(cls, raw: Any) -> ConfigProblem:
        """From `{"line", "column", "message"}` or a `file:line:col: message` string."""
        if isinstance(raw, dict):
            line, column = raw.get("line"), raw.get("column")
            return cls(str(raw.get("message", raw)), line, column)
        text = str(raw)
        match = _POSITION.match(text)
        if match:
            return cls(match["message"], int(match["line"]), int(match["column"]))
        return cls(text)

    def __str__(self) -> str:
        return f"{self.line}:{self.column}: {self.message}" if self.line else self.message


@dataclass
class Validation:
    """The answer to `config_validate`: ok, problems at their lines, the diff to the running
    config; `where` says who checked ("server", "local" or "unavailable")."""

    ok: bool
    problems: list[ConfigProblem] = field(default_factory=list)
    changes: list[str] = field(default_factory=list)
    where: str = "server"


@dataclass
class ApplyResult:
    ok: bool
    generation: int | None = None
    problems: list[ConfigProblem] = field(default_factory=list)
    changes: list[str] = field(default_factory=list)
    conflict: bool = False  # the file changed on disk since it was read
    where: str = "server"


class Source(Protocol):
    """What the app needs from a pooler (ControlSource; the snapshot tests' fake)."""

    label: str

    async def connect(self) -> None: ...
    async def close(self) -> None: ...
    async def status(self) -> schema.Status: ...
    async def workers(self) -> list[schema.WorkerInfo]: ...
    async def pools(self) -> list[schema.PoolInfo]: ...
    async def clients(self) -> list[dict[str, Any]]: ...
    async def servers(self) -> list[dict[str, Any]]: ...
    async def config_get(self) -> schema.ConfigInfo: ...
    async def kill_client(self, client_id: str) -> Any: ...
    async def config_validate(self, text: str) -> Validation: ...
    async def config_apply(self, text: str, hash: str) -> ApplyResult: ...
    def subscribe(self) -> AsyncIterator[schema.StatsEvent]: ...


class ControlSource:
    """A pooler reached over its control socket; reconnect by calling connect() again."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.label = str(path)
        self.client: ControlClient | None = None
        self.server_validates: bool | None = None  # None: not asked yet
        self.server_applies: bool | None = None

    async def connect(self) -> None:
        await self.close()
        self.client = await ControlClient(self.path).connect()

    async def close(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            await client.close()

    def _c(self) -> ControlClient:
        if self.client is None:
            raise ConnectionError("not connected")
        return self.client

    async def status(self) -> schema.Status:
        return await self._c().status()

    async def workers(self) -> list[schema.WorkerInfo]:
        return await self._c().workers()

    async def pools(self) -> list[schema.PoolInfo]:
        return await self._c().pools()

    async def clients(self) -> list[dict[str, Any]]:
        return await self._c().clients()

    async def servers(self) -> list[dict[str, Any]]:
        return await self._c().servers()

    async def config_get(self) -> schema.ConfigInfo:
        return await self._c().config_get()

    async def kill_client(self, client_id: str) -> Any:
        return await self._c().kill_client(client_id)

    async def subscribe(self) -> AsyncIterator[schema.StatsEvent]:
        async for event in self._c().subscribe():
            yield event

    async def _ask(self, message: dict[str, Any]) -> dict[str, Any]:
        """Send a request by name; returns the reply's data, raises ControlError."""
        reply = await self._c().raw(message)
        if not reply.get("ok"):
            err = reply.get("error", {})
            raise ControlError(err.get("code", "error"), err.get("message", ""))
        return reply.get("data") or {}

    # -- hot reload ----------------------------------------------------------------------

    async def config_validate(self, text: str) -> Validation:
        if self.server_validates is not False:
            try:
                data = await self._ask({"type": "config_validate", "text": text})
            except ControlError as exc:
                if exc.code != "unknown_type":
                    raise
                self.server_validates = False
            else:
                self.server_validates = True
                return Validation(
                    ok=bool(data.get("ok", not data.get("errors"))),
                    problems=[ConfigProblem.parse(e) for e in data.get("errors", [])],
                    changes=[change_text(c) for c in data.get("changes", [])],
                )
        return await self._validate_locally(text)

    async def _validate_locally(self, text: str) -> Validation:
        """The server cannot validate yet: parse with pooler.config here, diff against the
        file as the server reads it (the same parser the server runs)."""
        info = await self.config_get()
        return await asyncio.to_thread(validate_text, text, info.path, info.text)

    async def config_apply(self, text: str, hash: str) -> ApplyResult:
        if self.server_applies is not False:
            try:
                data = await self._ask({"type": "config_apply", "text": text, "hash": hash})
            except ControlError as exc:
                if exc.code == "conflict":
                    return ApplyResult(False, conflict=True, problems=[ConfigProblem(exc.message)])
                if exc.code != "unknown_type":
                    raise
                self.server_applies = False
            else:
                self.server_applies = True
                return ApplyResult(
                    ok=bool(data.get("ok")),
                    generation=data.get("generation"),
                    problems=[ConfigProblem.parse(e) for e in data.get("errors", [])],
                    changes=[change_text(c) for c in data.get("changes", [])],
                    conflict=bool(data.get("conflict")),
                )
        return await self._apply_locally(text, hash)

    async def _apply_locally(self, text: str, hash: str) -> ApplyResult:
        """Fallback while `config_apply` is missing: validate, compare the hash, write the file
        atomically next to itself, then ask the server to `reload`."""
        info = await self.config_get()
        if hash not in (text_hash(info.text), getattr(info, "hash", None)):
            return ApplyResult(
                False,
                conflict=True,
                problems=[ConfigProblem("the file changed on disk")],
                where="local",
            )
        check = await asyncio.to_thread(validate_text, text, info.path, info.text)
        if not check.ok:
            return ApplyResult(False, problems=check.problems, where="local")
        await asyncio.to_thread(write_atomically, Path(info.path), text)
        result = await self._c().reload()
        return ApplyResult(
            ok=result.ok,
            generation=result.generation,
            problems=[ConfigProblem.parse(e) for e in result.errors],
            changes=list(result.changes),
            where="local",
        )


def validate_text(text: str, path: str, current: str | None) -> Validation:
    """Parse `text` as if it were the file at `path`; diff against `current` when it parses."""
    from pooler.config import ConfigError, diff, parse_text

    try:
        new = parse_text(text, path)
    except ConfigError as exc:
        problems = [
            ConfigProblem(d.message, d.pos.line if d.pos else None, d.pos.column if d.pos else None)
            for d in exc.diagnostics
            if d.severity == "error"
        ]
        return Validation(False, problems, where="local")
    changes: list[str] = []
    if current is not None:
        try:
            old = parse_text(current, path)
        except ConfigError:
            changes = ["(the file on disk does not parse; no diff)"]
        else:
            changes = [str(c) for c in diff(old, new)]
    return Validation(True, [], changes, where="local")
