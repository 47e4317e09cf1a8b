"""Balancing between a storage's hosts (odyssey.md §1.6, §2.3): round robin, leastconn and
availability-zone preference. Two fault proxies in front of the one PostgreSQL stand for two
hosts; each counts the connections it accepted."""

from __future__ import annotations

import pytest
from faultproxy import FaultProxy
from harness import HOST, make_config, route, wait_until


@pytest.fixture
def hosts(pg):
    with FaultProxy(HOST, pg.port) as a, FaultProxy(HOST, pg.port) as b:
        yield a, b


def two_hosts(a, b, *, extra: str = "", zones: tuple[str, str] | None = None) -> str:
    za, zb = (f":{zones[0]}", f":{zones[1]}") if zones else ("", "")
    return (
        'storage "two" {\n\ttype "remote"\n'
        f'\thost "{HOST}:{a.port}{za},{HOST}:{b.port}{zb}"\n{extra}}}'
    )


def config(a, b, **kw) -> str:
    glob = kw.pop("globals", {})
    listen = kw.pop("listen", None)
    rule = route("p0", "postgres", storage="two")
    return make_config(rule, storages=two_hosts(a, b, **kw), listen=listen, **glob)


def test_round_robin_by_default(pooler, hosts):
    a, b = hosts
    p = pooler(config(a, b))
    conns = [p.connect("p0") for _ in range(4)]  # session pool: a new server each
    assert (a.accepted, b.accepted) == (2, 2)
    for conn in conns:
        conn.close()


LEASTCONN = {"storage": '\tbalancing {\n\t\tmethod "leastconn" {}\n\t}\n'}
LISTEN_LEASTCONN = {"listen": {"balancing_method": "leastconn"}}  # (odyssey master) wins


@pytest.mark.parametrize("where", [LEASTCONN, LISTEN_LEASTCONN], ids=["storage", "listen"])
def test_leastconn_picks_the_host_with_fewest_servers(pooler, hosts, where):
    a, b = hosts
    extra = where.get("storage", "")
    p = pooler(config(a, b, extra=extra, listen=where.get("listen")))
    first = [p.connect("p0") for _ in range(3)]  # a, b, then a tie: a
    assert (a.accepted, b.accepted) == (2, 1)
    b.reset()  # b's server is gone: a has 2, b none
    wait_until(lambda: b.connections == 0)
    p.wait_for_log("server connection was closed unexpectedly")  # the pooler saw it go
    later = [p.connect("p0") for _ in range(2)]  # round robin would give a one of them
    assert (a.accepted, b.accepted) == (2, 3)
    for conn in first + later:
        conn.close()


def test_hosts_in_the_pooler_s_availability_zone_first(pooler, hosts):
    a, b = hosts
    p = pooler(config(a, b, zones=("az1", "az2"), globals={"availability_zone": "az2"}))
    conns = [p.connect("p0") for _ in range(3)]
    assert (a.accepted, b.accepted) == (0, 3)
    for conn in conns:
        conn.close()
