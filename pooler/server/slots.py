"""The worker's side of the global pool_size: ask the supervisor for server slots."""

from __future__ import annotations

from collections.abc import Hashable

from pooler.ipc import Channel


class SupervisorSlots:
    """Slot requests and releases travel to the supervisor; grants and sheds come back
    as `grant`/`shed` messages handled by the worker."""

    def __init__(self, channel: Channel) -> None:
        self._channel = channel

    def request(self, key: Hashable, limit: int) -> None:
        self._channel.send("acquire", key, limit)

    def release(self, key: Hashable) -> None:
        self._channel.send("release", key)
