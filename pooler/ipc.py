"""Messages between the supervisor and its workers over a socketpair.

Frames are a 4-byte length and a pickled tuple `(kind, *args)`. Both ends are our own
processes, spawned by us with the socket passed as an inherited fd, so pickle's generality
(frozen config dataclasses travel as they are) carries no trust issue here.
"""

from __future__ import annotations

import asyncio
import copyreg
import pickle
import struct
from collections.abc import Callable
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

Message = tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class PauseState:
    """The PAUSE in force (console PAUSE/RESUME, control pause/resume): everything, or the
    routes of some databases (a rule's database name or its backend database). One value,
    kept by the supervisor and carried to every worker whole."""

    everything: bool = False
    databases: frozenset[str] = frozenset()

    def __bool__(self) -> bool:
        return self.everything or bool(self.databases)

    def paused(self, database: str | None) -> PauseState:
        if database is None:
            return PauseState(everything=True, databases=self.databases)
        return PauseState(self.everything, self.databases | {database})

    def resumed(self, database: str | None) -> PauseState:
        if database is None:
            return PauseState()
        return PauseState(self.everything, self.databases - {database})

    def covers(self, *names: str) -> bool:
        return self.everything or not self.databases.isdisjoint(names)


_LEN = struct.Struct("!I")


def _mapping_proxy(items: dict[Any, Any]) -> MappingProxyType[Any, Any]:
    return MappingProxyType(items)


# The config model keeps read-only mappings (source positions per key).
copyreg.pickle(MappingProxyType, lambda proxy: (_mapping_proxy, (dict(proxy),)))


class Channel(asyncio.Protocol):
    """One end of the pipe; calls `on_message(msg)` per frame and `on_close()` at EOF."""

    def __init__(self, on_message: Callable[[Message], None], on_close: Callable[[], None]) -> None:
        self._on_message = on_message
        self._on_close = on_close
        self._buf = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        while len(buf) >= 4:
            (length,) = _LEN.unpack_from(buf)
            if len(buf) < 4 + length:
                break
            message = pickle.loads(bytes(buf[4 : 4 + length]))
            del buf[: 4 + length]
            self._on_message(message)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._on_close()

    def send(self, *message: Any) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        self.transport.write(_LEN.pack(len(payload)) + payload)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
