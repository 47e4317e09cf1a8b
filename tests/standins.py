"""Stand-ins for the socket-free unit tests of pooler/server: a transport that records what
is written, and a real Worker (its routes, clients and servers real too) whose slot broker
is a no-op, as there is no supervisor behind it."""

from __future__ import annotations

import types
from typing import Any

from pooler.config import parse_text
from pooler.server.router import ClientKey
from pooler.server.worker import Worker


class Recorder:
    """A transport that keeps what is written to it."""

    def __init__(self) -> None:
        self.closed = False
        self.written = bytearray()

    def write(self, data: bytes) -> None:
        self.written += data

    def take(self) -> bytes:
        data, self.written = bytes(self.written), bytearray()
        return data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default  # (no socket: pool_attach_check has nothing to poll)


def worker_and_route(config_text: str, database: str, user: str) -> tuple[Worker, Any]:
    """A worker of `config_text` (no supervisor: slot requests go nowhere) and its route for
    `database`/`user` from 127.0.0.1."""
    slots = types.SimpleNamespace(
        request=lambda *a: None, release=lambda *a: None, cancel=lambda *a: None
    )
    worker = Worker(parse_text(config_text), 0, types.SimpleNamespace(slots=slots))  # type: ignore[arg-type]
    rule = worker.router.match(ClientKey(database, user, "127.0.0.1"))
    assert rule is not None
    return worker, worker.route_for(rule, database, user)
