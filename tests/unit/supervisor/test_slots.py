"""The global pool_size ledger: never over the limit, FIFO, fair shares, dead workers."""

from hypothesis import given, settings, strategies as st

from pooler.supervisor.slots import Grant, Shed, SlotBroker

KEY = ("gen1", 0, "db", "user")


def test_grants_until_the_limit_then_queues():
    broker = SlotBroker()
    assert broker.acquire(0, KEY, 2) == [Grant(0, KEY)]
    assert broker.acquire(1, KEY, 2) == [Grant(1, KEY)]
    assert broker.acquire(0, KEY, 2) == []  # worker 0 holds its fair share: just waits
    assert broker.held(KEY) == 2
    assert broker.release(1, KEY) == [Grant(0, KEY)]
    assert broker.held(KEY, 0) == 2


def test_starved_worker_makes_the_richest_shed():
    broker = SlotBroker()
    for _ in range(4):
        broker.acquire(0, KEY, 4)
    assert broker.held(KEY, 0) == 4
    assert broker.acquire(1, KEY, 4) == [Shed(0, KEY)]
    assert broker.release(0, KEY) == [Grant(1, KEY)]
    assert (broker.held(KEY, 0), broker.held(KEY, 1)) == (3, 1)


def test_no_churn_at_fair_share():
    broker = SlotBroker()
    broker.acquire(0, KEY, 2)
    broker.acquire(1, KEY, 2)
    assert broker.acquire(0, KEY, 2) == []
    assert broker.acquire(1, KEY, 2) == []


def test_cancelled_request_is_not_granted():
    broker = SlotBroker()
    broker.acquire(0, KEY, 1)
    broker.acquire(1, KEY, 1)
    broker.cancel(1, KEY)
    assert broker.release(0, KEY) == []
    assert broker.held(KEY) == 0


def test_dead_worker_returns_everything():
    broker = SlotBroker()
    broker.acquire(0, KEY, 2)
    broker.acquire(0, KEY, 2)
    broker.acquire(1, KEY, 2)
    assert broker.worker_gone(0) == [Grant(1, KEY)]
    assert broker.held(KEY) == 1


def test_shrinking_limit_sheds_the_excess():
    broker = SlotBroker()
    for _ in range(3):
        broker.acquire(0, KEY, 3)
    assert broker.set_limit(KEY, 1) == [Shed(0, KEY), Shed(0, KEY)]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["acquire", "release", "cancel", "gone"]), st.integers(0, 3)),
        max_size=80,
    ),
    st.integers(1, 5),
)
def test_never_more_than_the_limit(ops, limit):
    broker = SlotBroker()
    for op, worker in ops:
        if op == "acquire":
            broker.acquire(worker, KEY, limit)
        elif op == "release":
            broker.release(worker, KEY)
        elif op == "cancel":
            broker.cancel(worker, KEY)
        else:
            broker.worker_gone(worker)
        assert 0 <= broker.held(KEY) <= limit
