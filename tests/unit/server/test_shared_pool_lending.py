"""The worker side of a shared_pool (pooler/server/shared_pool.py), with stand-in routes."""

from __future__ import annotations

import time

from pooler.server.shared_pool import LEND_IDLE, SharedPool


class Slots:
    def __init__(self) -> None:
        self.sent: list[tuple[str, object]] = []

    def request(self, key: object, limit: int) -> None:
        self.sent.append(("request", key))

    def release(self, key: object) -> None:
        self.sent.append(("release", key))


class Member:
    """A route: `busy` servers, idle ones (their idle-since times), waiting clients."""

    def __init__(self, busy: int = 0, idle: tuple[float, ...] = (), waiting: int = 0) -> None:
        self.busy = busy
        self.idle = list(idle)
        self.waiting = waiting
        self.shed_pending = 0
        self.closed = 0
        self.handed = 0

    @property
    def size(self) -> int:
        return self.busy + len(self.idle)

    def has_waiters(self) -> bool:
        return self.waiting > 0

    def waiting_count(self) -> int:
        return self.waiting

    def hand_slot(self) -> bool:
        if not self.waiting:
            return False
        self.waiting -= 1
        self.handed += 1
        self.busy += 1
        return True

    def close_idle(self, min_idle: float, now: float | None = None) -> bool:
        if self.idle and (now or 1e9) - self.idle[0] >= min_idle:
            self.idle.pop(0)
            self.closed += 1
            return True
        return False


def pool(*members: Member, limit: int = 3) -> tuple[SharedPool, Slots]:
    slots = Slots()
    shared = SharedPool("sp", slots, limit)  # type: ignore[arg-type]
    for member in members:
        shared.join(member)  # type: ignore[arg-type]
    return shared, slots


def test_one_request_for_all_members_and_the_grant_to_the_poorest():
    a, b = Member(busy=2, waiting=1), Member(waiting=1)
    shared, slots = pool(a, b, limit=5)
    shared.want(a)  # type: ignore[arg-type]
    shared.want(b)  # type: ignore[arg-type]
    assert slots.sent == [("request", ("shared_pool", "sp"))]
    shared.on_grant()
    assert (a.handed, b.handed) == (0, 1)  # b holds none
    assert slots.sent[-1] == ("request", ("shared_pool", "sp"))  # a still waits
    shared.on_grant()
    assert a.handed == 1
    shared.on_grant()  # nobody waits any more: the slot goes back
    assert slots.sent[-1] == ("release", ("shared_pool", "sp"))


def test_a_full_pool_here_closes_an_idle_sibling_at_once():
    now = time.monotonic()
    a, b = Member(busy=1, idle=(now, now)), Member(waiting=1)
    shared, _ = pool(a, b)
    shared.want(b)  # type: ignore[arg-type]
    assert a.closed == 1  # this worker holds all 3: no grant can come before one closes


def test_a_full_pool_here_without_idle_servers_takes_the_richest_ones_next_release():
    a, b, c = Member(busy=2), Member(busy=1), Member(waiting=1)
    shared, _ = pool(a, b, c)
    shared.want(c)  # type: ignore[arg-type]
    assert (a.shed_pending, b.shed_pending) == (1, 0)
    shared.want(c)  # (the same waiting client asking again owes no more)
    assert shared.take_shed(a) is True and shared.take_shed(a) is False


def test_with_room_elsewhere_only_servers_idle_a_second_make_room():
    c, d = Member(idle=(99.5,)), Member(waiting=1)
    shared, _ = pool(c, d)  # 1 of 3 here: the broker may grant at once
    shared.want(d)  # type: ignore[arg-type]
    assert c.closed == 0
    shared.tick(100.0)
    assert c.closed == 0  # idle between two transactions: kept
    shared.tick(100.0 + LEND_IDLE)
    assert c.closed == 1


def test_a_starving_member_is_owed_the_richest_ones_next_release():
    a, b = Member(busy=3, waiting=2), Member(waiting=1)
    shared, _ = pool(a, b)
    shared.want(b)  # type: ignore[arg-type]
    shared.tick(1.0)
    shared.tick(2.0)
    assert (a.shed_pending, b.shed_pending) == (1, 0)
    assert shared.take_shed(a) is True  # a's next release closes
    assert a.shed_pending == 0 and shared.take_shed(a) is False


def test_a_broker_shed_takes_an_idle_server_else_the_next_release_of_any_member():
    a, b = Member(busy=1), Member(busy=1, idle=(5.0,))
    shared, _ = pool(a, b)
    shared.on_shed(spare=False)
    assert b.closed == 1
    shared.on_shed(spare=False)
    assert a.shed_pending == b.shed_pending == 1
    assert shared.take_shed(b) is True
    assert a.shed_pending == b.shed_pending == 0
