"""The auth_query cache of a worker: bounded in entries and in time (sans-I/O).

A found secret is kept `ttl` seconds, a failed look-up (no such user) only `failure_ttl`
seconds, and never more than `max_entries` of either (least recently stored go first). Keys
are digests of (auth_query, auth_query_db, auth_query_user, user name), so a client sending
user names of thousands of characters cannot make an entry any bigger.
"""

from __future__ import annotations

import hashlib
import sys
from collections import OrderedDict

MAX_ENTRIES = 1000
TTL = 10.0
FAILURE_TTL = 1.0


def _key(parts: tuple[str | None, ...]) -> bytes:
    digest = hashlib.blake2b(digest_size=16)
    for part in parts:
        digest.update(b"\1" if part is None else b"\2" + part.encode("utf-8", "surrogateescape"))
        digest.update(b"\0")
    return digest.digest()


class AuthQueryCache:
    def __init__(
        self, max_entries: int = MAX_ENTRIES, ttl: float = TTL, failure_ttl: float = FAILURE_TTL
    ) -> None:
        self.max_entries = max_entries
        self.ttl = ttl
        self.failure_ttl = failure_ttl
        self._entries: OrderedDict[bytes, tuple[str | None, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, parts: tuple[str | None, ...], now: float) -> tuple[bool, str | None]:
        """(found, secret): found is False when nothing fresh is cached for `parts`."""
        key = _key(parts)
        entry = self._entries.get(key)
        if entry is None:
            return False, None
        if now >= entry[1]:
            del self._entries[key]
            return False, None
        return True, entry[0]

    def put(self, parts: tuple[str | None, ...], secret: str | None, now: float) -> None:
        """Remember a look-up's answer (None: no such user, kept only briefly)."""
        key = _key(parts)
        expires = now + (self.failure_ttl if secret is None else self.ttl)
        self._entries[key] = (secret, expires)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def expire(self, now: float) -> None:
        """Drop what is out of date (the worker's cron, every second)."""
        stale = [key for key, (_secret, expires) in self._entries.items() if now >= expires]
        for key in stale:
            del self._entries[key]

    def memory_bytes(self) -> int:
        """About what the entries take (keys, secrets, the table)."""
        size = sys.getsizeof(self._entries)
        for key, (secret, _expires) in self._entries.items():
            size += sys.getsizeof(key) + 64 + (sys.getsizeof(secret) if secret else 0)
        return size
