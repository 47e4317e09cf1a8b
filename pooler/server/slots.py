"""The worker's side of the global pool_size: ask the supervisor for server slots."""

from __future__ import annotations

import time
from collections.abc import Hashable

from pooler.config import Endpoint
from pooler.ipc import (
    AcquireSlot,
    BackendClosed,
    BackendOpened,
    CancelSlot,
    Channel,
    ReleaseSlot,
)


class SupervisorSlots:
    """Slot requests and releases travel to the supervisor; grants and sheds come back
    as `grant`/`shed` messages handled by the worker."""

    def __init__(self, channel: Channel) -> None:
        self._channel = channel

    def request(self, key: Hashable, limit: int) -> None:
        """One more slot for a client that begins to wait now (the broker serves the
        longest waiting first, over all workers)."""
        self._channel.send(AcquireSlot(key, limit, time.monotonic()))

    def cancel(self, key: Hashable) -> None:
        """The slot asked for is not needed any more (a grant already on its way is
        released as unused)."""
        self._channel.send(CancelSlot(key))

    def release(self, key: Hashable) -> None:
        """A slot granted but not used (or a client_max slot) goes back."""
        self._channel.send(ReleaseSlot(key))

    def opened(self, key: Hashable, endpoint: Endpoint, pid: int, secret: int) -> None:
        """A server logged in: should this worker die, the supervisor ends its backend."""
        self._channel.send(BackendOpened(key, endpoint, pid, secret))

    def closed(self, key: Hashable, pid: int, holds_slot: bool) -> None:
        """A server's connection is gone (and with `holds_slot`, its slot is free)."""
        self._channel.send(BackendClosed(key, pid, holds_slot))
