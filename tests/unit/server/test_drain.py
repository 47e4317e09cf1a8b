"""Which clients an online restart's old process lets go, and when (pooler/server/drain.py)."""

from __future__ import annotations

from dataclasses import dataclass

from pooler.config.model import ConnDropOptions
from pooler.server.drain import Drain


@dataclass(eq=False)
class Client:
    mode: str = "transaction"
    last_activity: float = 0.0
    ready_at: float = 0.0
    idle: bool = True  # between transactions


def between(client: Client) -> bool:
    return client.idle


def test_a_transaction_that_ends_during_the_drain_is_its_boundary():
    drain = Drain(ConnDropOptions(), started=100.0)
    ran = Client(last_activity=100.2, ready_at=50.0)
    in_flight = Client(last_activity=100.2, ready_at=50.0, idle=False)
    session = Client(mode="session", last_activity=100.2, ready_at=50.0)
    assert drain.choose([ran, in_flight, session], 100.3, between) == [ran]
    assert drain.at_boundary(ran, between) and not drain.at_boundary(session, between)
    assert not drain.at_boundary(in_flight, between)


def test_a_client_that_just_logged_in_is_left_its_first_query():
    drain = Drain(ConnDropOptions(), started=100.0)
    fresh = Client(last_activity=99.0, ready_at=100.5)  # (last_activity: its connect)
    assert drain.choose([fresh], 100.6, between) == []
    assert drain.choose([fresh], 101.6, between) == [fresh]  # idle a whole interval_ms


def test_idle_clients_go_at_rate_per_interval_the_longest_idle_first():
    drain = Drain(ConnDropOptions(rate=2, interval_ms=1000), started=100.0)
    idle = [Client(mode="session", last_activity=t) for t in (30.0, 10.0, 20.0, 40.0)]
    assert drain.choose(idle, 100.0, between) == [idle[1], idle[2]]
    rest = [idle[0], idle[3]]
    assert drain.choose(rest, 100.5, between) == []  # this interval's 2 are spent
    assert drain.choose(rest, 101.0, between) == [idle[0], idle[3]]


def test_drop_disabled_lets_every_client_stay():
    drain = Drain(ConnDropOptions(drop_enabled=False), started=100.0)
    ran = Client(last_activity=100.2)
    idle = Client(last_activity=1.0)
    assert drain.choose([ran, idle], 200.0, between) == []
    assert not drain.at_boundary(ran, between)


def test_a_shutdown_drops_clients_between_transactions_at_rate_the_longest_quiet_first():
    drain = Drain(ConnDropOptions(rate=2, interval_ms=1000), started=100.0)
    quiet = [Client(mode="session", last_activity=t) for t in (99.9, 10.0, 50.0)]
    fresh = Client(last_activity=100.0, ready_at=100.0)  # (no idle time asked: as odyssey)
    in_flight = Client(last_activity=1.0, idle=False)
    clients = [*quiet, fresh, in_flight]
    assert drain.choose_between(clients, 100.0, between) == [quiet[1], quiet[2]]
    rest = [quiet[0], fresh, in_flight]
    assert drain.choose_between(rest, 100.5, between) == []  # this interval's 2 are spent
    assert drain.choose_between(rest, 101.0, between) == [quiet[0], fresh]
    disabled = Drain(ConnDropOptions(drop_enabled=False), started=100.0)
    assert disabled.choose_between(clients, 200.0, between) == []
