"""Route keys odyssey users rely on: pool_notice_after_waiting_ms, pool_pin_on_listen."""

from __future__ import annotations

import threading

from harness import make_config, route, wait_until


def notices_of(conn) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    conn.add_notice_handler(lambda d: found.append((d.severity or "", d.message_primary or "")))
    return found


def test_notice_to_a_client_queued_for_a_server(pooler):
    p = pooler(
        make_config(
            route(
                "p0", "postgres", pool="transaction", pool_size=1, pool_notice_after_waiting_ms=100
            )
        )
    )
    holder = p.connect("p0")
    holder.execute("begin")
    holder.execute("select 1")  # holds the only server
    waiter = p.connect("p0")
    notices = notices_of(waiter)
    answer: list[object] = []
    thread = threading.Thread(target=lambda: answer.append(waiter.execute("select 2").fetchone()))
    thread.start()
    wait_until(lambda: notices, timeout=10, message="the waiting notice")
    assert notices == [("NOTICE", "waiting for free backend connection")]
    holder.execute("commit")
    thread.join(10)
    assert answer == [(2,)]
    assert len(notices) == 2 and notices[1][1].startswith("waiting took ")  # odyssey's too
    assert waiter.execute("select 3").fetchone() == (3,)  # a server at once: no notice
    assert len(notices) == 2
    holder.close()
    waiter.close()


def notify(pg, channel: str, payloads: list[str]) -> None:
    pg.psql(";".join(f"notify {channel}, '{x}'" for x in payloads), db="p0")


def test_pool_pin_on_listen_keeps_the_server_and_delivers_notifications(pooler, pg):
    p = pooler(
        make_config(
            route(
                "p0",
                "postgres",
                pool="transaction",
                pool_size=2,
                pool_timeout=5000,
                pool_pin_on_listen=True,
            )
        )
    )
    listener = p.connect("p0")
    notices = notices_of(listener)
    listener.execute("listen chan")
    pinned = listener.execute("select pg_backend_pid()").fetchone()
    other = p.connect("p0")
    for _ in range(4):  # others never get the pinned server
        assert other.execute("select pg_backend_pid()").fetchone() != pinned
    notify(pg, "chan", [f"m{i}" for i in range(6)])
    got = [n.payload for n in listener.notifies(timeout=10, stop_after=6)]
    assert got == [f"m{i}" for i in range(6)]
    assert notices == []
    assert listener.execute("select pg_backend_pid()").fetchone() == pinned
    listener.execute("unlisten *")  # unpinned: its server serves others again
    with other.transaction():  # holds the second server
        other.execute("select 1")
        with p.connect("p0") as third:  # pool_timeout: an error if still pinned
            assert third.execute("select 1").fetchone() == (1,)  # one of the two servers
    listener.close()
    other.close()


def test_listen_without_pinning_is_warned(pooler):
    p = pooler(make_config(route("p0", "postgres", pool="transaction", pool_size=2)))
    with p.connect("p0") as conn:
        notices = notices_of(conn)
        conn.execute("LISTEN chan")
        assert len(notices) == 1
        severity, text = notices[0]
        assert severity == "WARNING"
        assert "notifications will not be delivered" in text and "pool_pin_on_listen" in text
