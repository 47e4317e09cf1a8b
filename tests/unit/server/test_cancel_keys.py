"""The BackendKeyData a worker gives its clients and where a CancelRequest goes
(pooler/server/cancels.py, pooler/cancel.py), without sockets."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from pooler.cancel import POOLER_PIDS, key_owner
from pooler.server.cancels import Cancels


class Link:
    def __init__(self) -> None:
        self.forwarded: list[tuple[int, int]] = []

    def forward_cancel(self, pid: int, secret: int) -> None:
        self.forwarded.append((pid, secret))


def cancels(index: int = 0) -> tuple[Cancels, Link]:
    link = Link()
    config = SimpleNamespace(cancel_max_inflight=-1, workers=2, cancel_queue_timeout_ms=-1)
    owner: Any = SimpleNamespace(index=index, config=config, link=link)
    return Cancels(owner), link


def test_a_pooler_pid_names_its_worker_a_servers_own_pid_none() -> None:
    keys, _ = cancels(index=3)
    pid, _secret = keys.register(object())  # type: ignore[arg-type]
    assert pid >= POOLER_PIDS and key_owner(pid) == 3
    assert key_owner(4242) < 0


def test_a_session_clients_secret_is_all_random() -> None:
    # the pid is its server's own; no worker tag may take bits of the secret away
    keys, _ = cancels(index=1)
    secrets = [keys.register(object(), server_pid=1000 + n)[1] for n in range(64)]  # type: ignore[arg-type]
    assert all(0 <= secret < 1 << 31 for secret in secrets)
    assert len({secret >> 24 for secret in secrets}) > 8


def test_a_cancel_for_a_servers_own_pid_not_here_asks_the_others_once() -> None:
    keys, link = cancels(index=0)
    asyncio.run(keys.cancel(4242, 7))
    assert link.forwarded == [(4242, 7)]  # from a client: every other worker is asked
    asyncio.run(keys.cancel(4242, 7, forwarded=True))
    assert link.forwarded == [(4242, 7)]  # handed here by the supervisor: no further


def test_a_cancel_for_another_workers_pid_goes_to_it() -> None:
    mine, _ = cancels(index=0)
    theirs, _ = cancels(index=1)
    pid, secret = theirs.register(object())  # type: ignore[arg-type]
    link = mine.worker.link
    asyncio.run(mine.cancel(pid, secret))
    assert link.forwarded == [(pid, secret)]  # type: ignore[attr-defined]


def test_a_wrong_secret_cancels_nothing() -> None:
    keys, link = cancels(index=0)
    client = SimpleNamespace(check_cancel_key=lambda secret: False, server=None)
    pid, _secret = keys.register(client, server_pid=4242)  # type: ignore[arg-type]
    asyncio.run(keys.cancel(pid, 1))
    assert link.forwarded == [(pid, 1)]  # maybe another worker's client of that pid
