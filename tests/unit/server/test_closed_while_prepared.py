"""A server closed (terminated, RECONNECT, PostgreSQL restart) after it was handed to a client
but before it is linked: the client takes another, or its login fails cleanly; the closed
server is never linked (`closed -> active` raised IllegalTransition in the stress of
tests/integration/test_operator_stress.py). Real Worker and Route objects."""

from __future__ import annotations

import pytest
from test_server_states import ACTIVE, CLOSED, Q1, logged_in, setup

from pooler.server.backend import ServerConnection, ServerGone
from pooler.server.login import Login


def closing_the_first(client, monkeypatch) -> list[ServerConnection]:
    """Make preparing a server (`_sync`) lose the first one it is given, as a terminated
    backend's last answer and its end arrive together."""
    prepared: list[ServerConnection] = []

    async def sync(_client: object, server: ServerConnection) -> None:
        prepared.append(server)
        if len(prepared) == 1:
            server.close()

    monkeypatch.setattr(type(client), "_sync", sync)
    return prepared


@pytest.mark.timeout(10)
async def test_a_server_closed_while_prepared_for_a_transaction_is_replaced(monkeypatch):
    _worker, route, client, first = setup()
    second = ServerConnection(route, first.endpoint)
    second.connection_made(type(first.transport)())
    for server in (first, second):
        logged_in(server)
        route.busy.add(server)
    route.release(second)  # idle: the one to take instead
    prepared = closing_the_first(client, monkeypatch)
    client.queued.append(Q1)  # what it sent meanwhile
    await client._attach(first)
    assert prepared == [first, second]
    assert first.state is CLOSED and first not in route.busy
    assert client.server is second and second.state is ACTIVE


@pytest.mark.timeout(10)
async def test_a_server_closed_while_prepared_for_a_login_fails_it_cleanly(monkeypatch):
    _worker, route, client, server = setup()
    logged_in(server)
    route.busy.add(server)
    closing_the_first(client, monkeypatch)
    with pytest.raises(ServerGone):
        await Login(_worker, client).sync_for_login(route, server)
    assert server.state is CLOSED and server not in route.busy
