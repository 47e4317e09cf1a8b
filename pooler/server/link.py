"""The supervisor as a worker's modules see it: the worker's end of the IPC channel.

`worker_main.SupervisorLink` is the one implementation; the worker and its console name what
they use of it here, below them, instead of importing the process's entry module.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from pooler.ipc import Request
from pooler.server.slots import SupervisorSlots


class Supervisor(Protocol):
    """Requests to the supervisor, the global slots, and the two notices a worker sends."""

    slots: SupervisorSlots

    def request(self, message: Request, timeout: float = 60.0) -> asyncio.Future[Any]:
        """Ask the supervisor; the future is its answer."""
        ...

    def retired(self) -> None:
        """A retiring worker has no clients left: the process ends."""
        ...

    def forward_cancel(self, pid: int, secret: int) -> None:
        """A CancelRequest for another worker's client goes through the supervisor."""
        ...
