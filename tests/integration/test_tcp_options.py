"""nodelay and keepalive* (odyssey.md §1.4, §1.8) on the pooler's client and server sockets."""

from __future__ import annotations

import os
import socket

from harness import make_config, route, wait_until
from sockets import tcp_options, tcp_socket
from test_supervisor import worker_pids


def local_port(conn) -> int:
    with socket.socket(fileno=os.dup(conn.fileno())) as sock:
        return sock.getsockname()[1]


def options_of(p, pg, conn) -> tuple[dict[str, int], dict[str, int]]:
    """TCP options of the pooler's socket to this client and of its server socket."""
    pids = worker_pids(p.pid)
    client_side = tcp_socket(pids, local_port=p.port, peer_port=local_port(conn))
    server_side = wait_until(lambda: tcp_socket(pids, peer_port=pg.port), timeout=5)
    try:
        assert client_side is not None
        return tcp_options(client_side), tcp_options(server_side)
    finally:
        for sock in (client_side, server_side):
            if sock is not None:
                sock.close()


def test_defaults_are_odyssey_s(pooler, pg):
    p = pooler(make_config(route("p0", "postgres")))  # session pool: the server stays linked
    with p.connect("p0") as conn:
        client, server = options_of(p, pg, conn)
    expected = {"nodelay": 1, "keepalive": 1, "idle": 15, "interval": 5, "probes": 3}
    for found in (client, server):
        assert {k: found[k] for k in expected} == expected
        assert found["user_timeout"] == 0  # keepalive_usr_timeout 0: the kernel's default


def test_global_keys_and_a_route_s_own_keepalive(pooler, pg):
    p = pooler(
        make_config(
            [
                route("p0", "postgres"),
                route(
                    "p1",
                    "postgres",
                    keepalive=33,
                    keepalive_keep_interval=11,
                    keepalive_probes=2,
                    keepalive_usr_timeout=1234,
                ),
            ],
            nodelay=False,
            keepalive=20,
            keepalive_keep_interval=7,
            keepalive_probes=4,
            keepalive_usr_timeout=-1,  # computed: 1000 * (20 + 7 * 4) - 500
        )
    )
    with p.connect("p0") as conn:
        client, server = options_of(p, pg, conn)
    for found in (client, server):
        assert found == {
            "nodelay": 0,
            "keepalive": 1,
            "idle": 20,
            "interval": 7,
            "probes": 4,
            "user_timeout": 47500,
        }
    with p.connect("p1") as conn:  # the route's keepalive is for its client sockets
        client, server = options_of(p, pg, conn)
    assert client == {
        "nodelay": 0,
        "keepalive": 1,
        "idle": 33,
        "interval": 11,
        "probes": 2,
        "user_timeout": 1234,
    }
    assert server["idle"] == 20


def test_keepalive_0_turns_it_off(pooler, pg):
    p = pooler(make_config(route("p0", "postgres"), keepalive=0))
    with p.connect("p0") as conn:
        client, server = options_of(p, pg, conn)
    assert client["keepalive"] == 0 and server["keepalive"] == 0


def kernel_keepalive(name: str) -> int:
    return int(open(f"/proc/sys/net/ipv4/tcp_keepalive_{name}").read())


def test_a_reload_gives_new_clients_the_new_options(pooler, pg):
    """A client's socket gets the options from its listening socket: a reload sets the new
    ones there, 0 as the kernel's value again (not the one set before)."""
    keys = {"keepalive_keep_interval": 7, "keepalive_probes": 4, "keepalive_usr_timeout": 1234}
    p = pooler(make_config(route("p0", "postgres"), keepalive=20, **keys))
    with p.connect("p0") as conn:
        client, _server = options_of(p, pg, conn)
    assert (client["idle"], client["interval"], client["probes"]) == (20, 7, 4)
    assert client["user_timeout"] == 1234
    keys = {"keepalive_keep_interval": 0, "keepalive_probes": 0, "keepalive_usr_timeout": 0}
    p.write_config(make_config(route("p0", "postgres"), keepalive=25, **keys))
    p.reload()

    def reloaded() -> dict[str, int] | None:
        with p.connect("p0") as conn:
            client, _server = options_of(p, pg, conn)
        return client if client["idle"] == 25 else None

    client = wait_until(reloaded, timeout=10)
    assert client["interval"] == kernel_keepalive("intvl")
    assert client["probes"] == kernel_keepalive("probes")
    assert client["user_timeout"] == 0 and client["keepalive"] == 1
