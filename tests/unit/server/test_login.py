"""A client's login (pooler/server/login.py) driven by bytes, without sockets: the common
login ends in the callback that read its startup packet, without a task; one that must wait
goes on in a task and ends the same way, or is cancelled when the client leaves. Real
Worker, Route, ClientConnection and Login objects; transports that only record."""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import pytest
from standins import Recorder, worker_and_route

from pooler.server.client import ClientConnection
from pooler.server.lifecycle import ClientState
from pooler.server.pool import PoolTimeout
from pooler.server.worker import Worker

SERVER_PARAMS = {"server_version": "15.8", "client_encoding": "UTF8", "TimeZone": "UTC"}


def worker_with(authentication: str, listens: str = "") -> tuple[Worker, Any]:
    worker, route = worker_and_route(
        f"""
        log_format "%m\\n"
        {listens or 'listen { host "127.0.0.1" port 6432 }'}
        storage "pg" {{ type "remote" host "127.0.0.1" port 5432 }}
        database default {{
            user default {{
                authentication "{authentication}"
                password "secret"
                storage "pg"
                pool "transaction"
                pool_discard no
            }}
        }}
        """,
        "db",
        "user",
    )
    route.server_params = dict(SERVER_PARAMS)  # learnt by an earlier login
    return worker, route


def connected(worker: Worker, listen: int = 0) -> tuple[ClientConnection, Recorder]:
    client = ClientConnection(worker, worker.config.listens[listen], False)
    transport = Recorder()
    client.connection_made(transport)  # type: ignore[arg-type]
    return client, transport


def startup_packet(**params: str) -> bytes:
    body = struct.pack("!i", 196608)
    body += b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in params.items()) + b"\0"
    return struct.pack("!i", len(body) + 4) + body


def message_types(data: bytes) -> bytes:
    types_, pos = bytearray(), 0
    while pos < len(data):
        types_.append(data[pos])
        pos += 1 + int.from_bytes(data[pos + 1 : pos + 5])
    assert pos == len(data)
    return bytes(types_)


LOGGED_IN = b"R" + b"S" * len(SERVER_PARAMS) + b"KZ"  # AuthenticationOk ... ReadyForQuery


async def test_a_whole_startup_packet_logs_in_within_its_read():
    worker, route = worker_with("none")
    client, transport = connected(worker)
    assert client.state is ClientState.STARTUP and client.login is not None
    client.data_received(startup_packet(user="user", database="db"))
    assert client.state is ClientState.IDLE and client.login is None  # handed over
    assert not worker._tasks  # no task was needed
    assert message_types(transport.take()) == LOGGED_IN
    assert route.clients == 1 and client.key[0] in worker.cancels.keys


async def test_a_startup_packet_in_pieces_logs_in_through_a_task():
    worker, _route = worker_with("none")
    client, transport = connected(worker)
    packet = startup_packet(user="user", database="db")
    client.data_received(packet[:7])
    login = client.login
    assert login is not None and login.task is not None  # waits for the rest
    assert client.state is ClientState.STARTUP and not transport.take()
    client.data_received(packet[7:])
    await asyncio.wait_for(login.task, 5)
    assert client.state is ClientState.IDLE and client.login is None
    assert message_types(transport.take()) == LOGGED_IN


async def test_a_password_login_waits_in_a_task_and_ends_the_same():
    worker, _route = worker_with("clear_text")
    client, transport = connected(worker)
    client.data_received(startup_packet(user="user", database="db"))
    assert transport.take() == b"R\0\0\0\x08\0\0\0\x03"  # AuthenticationCleartextPassword
    login = client.login
    assert login is not None and login.task is not None
    client.data_received(b"p\0\0\0\x0bsecret\0")
    await asyncio.wait_for(login.task, 5)
    assert client.state is ClientState.IDLE
    assert message_types(transport.take()) == LOGGED_IN


@pytest.mark.parametrize("first_step", [False, True])
async def test_a_waiting_login_ends_when_the_client_leaves(first_step):
    """Cancelled before or after its task's first step: the login ends, nothing is held."""
    worker, route = worker_with("clear_text")
    client, _transport = connected(worker)
    client.data_received(startup_packet(user="user", database="db"))
    login = client.login
    assert login is not None and login.task is not None
    if first_step:
        await asyncio.sleep(0)
    client.connection_lost(None)
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(login.task, 5)
    assert client.state is ClientState.CLOSED and not worker.clients and not worker._tasks
    assert route.clients == 0


async def test_a_step_that_needs_a_task_gets_one():
    """A route's first login asks for a server (route.acquire: timeouts need a task): the
    login run at once stops there and goes on in a task."""
    worker, route = worker_with("none")
    route.server_params = None  # the first login learns them
    in_task = []

    async def acquire(*args: Any) -> Any:
        in_task.append(asyncio.current_task() is not None)
        async with asyncio.timeout(5):  # (raises RuntimeError outside a task)
            await asyncio.sleep(0)
        raise PoolTimeout

    route.acquire = acquire
    client, transport = connected(worker)
    login = client.login
    assert login is not None
    # from the loop, as a transport calls it (not from this test's task)
    asyncio.get_running_loop().call_soon(
        client.data_received, startup_packet(user="user", database="db")
    )
    await asyncio.sleep(0)
    assert login.task is not None and not transport.take()
    await asyncio.wait_for(login.task, 5)
    assert in_task == [True]
    assert client.state is ClientState.CLOSED
    assert b"too many active clients" in transport.take()  # the pool_timeout FATAL


async def until(condition: Any) -> None:
    async with asyncio.timeout(10):
        while not condition():
            await asyncio.sleep(0.01)


async def test_logins_time_out_in_turn_on_one_timer():
    """client_login_timeout: the worker's logins share one timer; a login that ended is
    never timed out, one that did not is, with the FATAL."""
    worker, _route = worker_with(
        "none", 'listen { host "127.0.0.1" port 6432 client_login_timeout 50 }'
    )
    silent, silent_out = connected(worker)
    done, _done_out = connected(worker)
    later, later_out = connected(worker)
    done.data_received(startup_packet(user="user", database="db"))
    assert done.state is ClientState.IDLE
    await until(lambda: silent.state is ClientState.CLOSED)
    assert b"client login timed out" in silent_out.take()
    await until(lambda: later.state is ClientState.CLOSED)
    assert b"client login timed out" in later_out.take()
    assert done.state is ClientState.IDLE  # (its deadline went with its login)
    assert worker.login_deadlines._timer is None  # nothing left to wait for


async def test_a_shorter_login_timeout_of_another_listen_comes_first():
    worker, _route = worker_with(
        "none",
        'listen { host "127.0.0.1" port 6432 client_login_timeout 600000 }\n'
        'listen { host "127.0.0.1" port 6433 client_login_timeout 50 }',
    )
    patient, patient_out = connected(worker, 0)
    hasty, hasty_out = connected(worker, 1)  # later, but its deadline is sooner
    await until(lambda: hasty.state is ClientState.CLOSED)
    assert b"client login timed out" in hasty_out.take()
    assert patient.state is ClientState.STARTUP and not patient_out.take()
    patient.connection_lost(None)
    assert not any(worker.login_deadlines._by_timeout.values())


def statuses(data: bytes) -> dict[str, str]:
    found, pos = {}, 0
    while pos < len(data):
        end = pos + 1 + int.from_bytes(data[pos + 1 : pos + 5])
        if data[pos] == ord("S"):
            name, value = data[pos + 5 : end - 1].split(b"\0")
            found[name.decode()] = value.decode()
        pos = end
    return found


async def test_each_login_reports_its_own_parameters():
    """ParameterStatus: the route's server parameters, the client's own values where it set
    them (in PostgreSQL's spelling); the client keeps the tracked ones it did not set."""
    worker, _route = worker_with("none")
    first, first_out = connected(worker)
    first.data_received(startup_packet(user="user", database="db", client_encoding="utf-8"))
    second, second_out = connected(worker)
    second.data_received(startup_packet(user="user", database="db", TimeZone="Europe/Paris"))
    again, again_out = connected(worker)
    again.data_received(startup_packet(user="user", database="db", client_encoding="utf-8"))
    assert statuses(first_out.take()) == SERVER_PARAMS  # utf-8 is reported as UTF8
    assert first.params == {"client_encoding": "UTF8", "TimeZone": "UTC"}
    assert statuses(second_out.take()) == SERVER_PARAMS | {"TimeZone": "Europe/Paris"}
    assert second.params == {"TimeZone": "Europe/Paris", "client_encoding": "UTF8"}
    assert statuses(again_out.take()) == SERVER_PARAMS and again.params == first.params
