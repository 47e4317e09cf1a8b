"""Messages between the supervisor and its workers over a socketpair.

Each message is a frozen dataclass below, both ends import this module and dispatch with
`match`. Frames are a 4-byte length and the pickled message. Both ends are our own
processes, spawned by us with the socket passed as an inherited fd, so pickle's generality
(frozen config dataclasses travel as they are) carries no trust issue here.
"""

from __future__ import annotations

import asyncio
import copyreg
import pickle
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pooler.config import Config, Endpoint, Listen
    from pooler.snapshot import WorkerSnapshot


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


# --- supervisor -> worker -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConfigMessage:
    """The config to serve: the first one with the listen sections of the inherited sockets
    (`listens`), later ones (reloads) without."""

    config: Config
    births: dict[Any, int]
    pause: PauseState = field(default_factory=PauseState)
    listens: list[Listen] | None = None


@dataclass(frozen=True, slots=True)
class SlotGranted:
    key: Any


@dataclass(frozen=True, slots=True)
class ShedSlot:
    """Give a slot of `key` back (see pooler/supervisor/slots.py)."""

    key: Any
    spare: bool


@dataclass(frozen=True, slots=True)
class CancelQuery:
    """A CancelRequest for a client's BackendKeyData (either way: a worker forwards one
    for a client of another worker; the supervisor hands it to the owner)."""

    pid: int
    secret: int


@dataclass(frozen=True, slots=True)
class Shutdown:
    graceful: bool
    restart: bool = False  # an online restart: a new process serves, drain as its Drain says


@dataclass(frozen=True, slots=True)
class Retire:
    """`workers` was lowered: this worker is one too many."""


@dataclass(frozen=True, slots=True)
class Stay:
    """`workers` grew again: a retiring worker goes on serving."""


@dataclass(frozen=True, slots=True)
class ReopenLog:
    pass


@dataclass(frozen=True, slots=True)
class SoftOomState:
    """soft_oom: the memory in use (bytes) while over the limit, None once under it."""

    usage: int | None


@dataclass(frozen=True, slots=True)
class Reply:
    """The answer to a worker's request (ClientSlot, ConsoleQuery)."""

    request_id: int
    payload: Any


@dataclass(frozen=True, slots=True)
class Ask:
    """The supervisor asks a worker (SHOW CLIENTS rows, PAUSE, KILL_CLIENT...: see
    pooler/server/console.py handle_ask); answered with Answer."""

    ask_id: int
    what: str
    args: tuple[Any, ...] = ()


@dataclass(frozen=True, slots=True)
class StatsRequest:
    pass


# --- worker -> supervisor -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Applied:
    """The worker serves this config generation (readiness)."""

    generation: int


@dataclass(frozen=True, slots=True)
class AcquireSlot:
    """One more slot of `key` (pool_size `limit`) for a client waiting since `since`."""

    key: Any
    limit: int
    since: float


@dataclass(frozen=True, slots=True)
class ReleaseSlot:
    """A granted slot not used, or a client_max slot, goes back."""

    key: Any


@dataclass(frozen=True, slots=True)
class CancelSlot:
    """The slot asked for is not needed any more: its waiters were served by servers
    released in the worker (or gave up)."""

    key: Any


@dataclass(frozen=True, slots=True)
class BackendOpened:
    key: Any
    endpoint: Endpoint
    pid: int
    secret: int


@dataclass(frozen=True, slots=True)
class BackendClosed:
    key: Any
    pid: int
    holds_slot: bool


@dataclass(frozen=True, slots=True)
class ClientSlot:
    """Count a client against a client_max over all workers; Reply(granted)."""

    key: Any
    limit: int
    request_id: int = 0


@dataclass(frozen=True, slots=True)
class ConsoleQuery:
    """A console statement to run; Reply(result items)."""

    role: str
    text: str
    client_id: str
    request_id: int = 0


@dataclass(frozen=True, slots=True)
class Stats:
    snapshot: WorkerSnapshot


@dataclass(frozen=True, slots=True)
class Answer:
    ask_id: int
    payload: tuple[str, Any]  # ("ok", value) or ("error", text)


ToWorker = (
    ConfigMessage
    | SlotGranted
    | ShedSlot
    | CancelQuery
    | Shutdown
    | Retire
    | Stay
    | ReopenLog
    | SoftOomState
    | Reply
    | Ask
    | StatsRequest
)
ToSupervisor = (
    Applied
    | AcquireSlot
    | ReleaseSlot
    | CancelSlot
    | BackendOpened
    | BackendClosed
    | ClientSlot
    | ConsoleQuery
    | CancelQuery
    | Stats
    | Answer
)
Request = ClientSlot | ConsoleQuery  # messages answered with a Reply
Message = ToWorker | ToSupervisor

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

    def send(self, message: Message) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        self.transport.write(_LEN.pack(len(payload)) + payload)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
