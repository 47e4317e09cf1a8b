"""PAUSE is state (issue 15, fault 5): one PauseState value from the supervisor,
Route.pause()/resume()/paused, no method of a route or the worker replaced at run time."""

from __future__ import annotations

import asyncio
import types

import pytest

from pooler.config import parse_text
from pooler.ipc import PauseState
from pooler.server.console import AdminState
from pooler.server.pool import Route
from pooler.server.router import ClientKey
from pooler.server.worker import Worker

CONFIG = """
log_format "%m\\n"
listen { host "127.0.0.1" port 6432 }
storage "pg" { type "remote" host "127.0.0.1" port 5 }
database default { user default { authentication "none" storage "pg" pool "transaction" } }
"""


def worker_and_route(db: str = "p0") -> tuple[Worker, Route]:
    config = parse_text(CONFIG)
    worker = Worker(config, 0, types.SimpleNamespace(slots=None))  # type: ignore[arg-type]
    rule = worker.router.match(ClientKey(db, "user", "127.0.0.1"))
    assert rule is not None
    return worker, worker.route_for(rule, db, "user")


def test_pause_state_is_one_value():
    state = PauseState().paused("p0").paused("p1")
    assert state and state.covers("p1") and not state.covers("p2")
    assert state.resumed("p0") == PauseState(databases=frozenset({"p1"}))
    everything = state.paused(None)
    assert everything.covers("anything") and everything.resumed("p1").everything
    assert not everything.resumed(None)


async def test_a_route_is_paused_and_resumed_as_state():
    worker, route = worker_and_route("p0")
    AdminState(worker)  # (it used to replace worker.route_for and route.acquire)
    worker.set_pause(PauseState().paused("p0"))
    assert route.paused
    assert "acquire" not in vars(route) and "route_for" not in vars(worker)
    _, other = worker_and_route("p1")
    assert not other.paused
    worker.set_pause(PauseState().paused(None))
    rule = worker.router.match(ClientKey("p2", "user", "127.0.0.1"))
    assert rule is not None
    assert worker.route_for(rule, "p2", "user").paused  # new routes are held too
    worker.set_pause(PauseState())
    assert not route.paused and not worker.route_for(rule, "p2", "user").paused


class Idle:
    closed = False
    transport = None  # (no socket for pool_attach_check to poll)

    def taken(self) -> None:  # (ServerConnection's move out of the idle list)
        pass


@pytest.mark.timeout(10)
async def test_acquire_waits_for_resume():
    _worker, route = worker_and_route()
    route.pause()
    task = asyncio.ensure_future(route.acquire(None))
    await asyncio.sleep(0.05)
    server = Idle()
    route.idle.append(server)  # type: ignore[arg-type]
    await asyncio.sleep(0.05)
    assert not task.done()  # paused: nothing is lent, not even an idle server
    route.resume()
    assert await asyncio.wait_for(task, 5) is server
