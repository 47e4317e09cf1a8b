"""Live fuzzing: mutated captures of real psycopg/psql/pgbench sessions against `pooler serve`
(workers 2) while well-behaved clients run queries on the same route.

Every mutated connection must end with an ErrorResponse and/or a close (no hang); no worker
restarts; the good clients see no error; no traceback in the pooler's log. bench/fuzz runs
the same for minutes (tests/fuzzlib.py). FUZZ_EXAMPLES overrides the number of examples.
"""

from __future__ import annotations

import os
import random
import time

from fuzzlib import (
    HOSTILE_LENGTHS,
    HOSTILE_TYPES,
    GoodClients,
    RssSampler,
    capture_sessions,
    check,
    hostile_message,
    mutate,
    replay,
    split_session,
)
from harness import make_config, route, wait_until
from hypothesis import HealthCheck, given, settings, strategies as st
from wire import startup_packet, workers

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "200"))


def test_mutated_sessions_are_refused_cleanly(pooler, pg):
    sessions = [split_session(s) for s in capture_sessions(pg)]
    assert len(sessions) >= 3, "psycopg, psql and pgbench sessions were captured"
    p = pooler(
        make_config(
            route(pool="transaction", pool_size=10, pool_timeout=5000),
            workers=2,
            listen={"client_login_timeout": 2000},
        )
    )
    before = workers(p)
    assert [w.restarts for w in before] == [0, 0]
    stats = {"examples": 0, "bytes": 0, "errors": 0, "closed_silently": 0}
    started = time.monotonic()

    with GoodClients(p) as good:

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            print_blob=True,
        )
        @given(session=st.integers(0, len(sessions) - 1), rng=st.randoms(use_true_random=False))
        def fuzz(session: int, rng: random.Random) -> None:
            data, ops = mutate(rng, sessions[session])
            outcome = replay(p.port, data, rng)
            problem = check(outcome)
            assert problem is None, f"{problem}; session {session}, mutations {ops}"
            assert not good.errors, good.errors
            stats["examples"] += 1
            stats["bytes"] += len(data)
            if outcome.errors:
                stats["errors"] += 1
            elif outcome.mode == "halfclose" and not outcome.reply:
                stats["closed_silently"] += 1

        fuzz()
        served = good.queries
        wait_until(lambda: good.queries >= served + 20 or good.errors, timeout=10)
    assert not good.errors, good.errors
    assert good.queries > 0
    after = workers(p)
    assert [w.restarts for w in after] == [0, 0], after
    assert [w.pid for w in after] == [w.pid for w in before]
    assert p.sql("select 1", dbname="p0") == [(1,)]
    print(
        f"fuzz: {stats} in {time.monotonic() - started:.1f} s; good-client queries: {good.queries}"
    )


MAX_GROWTH_MB = 64  # per worker, over the whole run


def test_hostile_lengths_and_types_after_login(pooler):
    # every frontend type (and a few that are not) with every hostile length after a
    # login, part of the body sent; the workers' memory is sampled all along
    p = pooler(
        make_config(
            route(pool="transaction", pool_size=10, pool_timeout=5000),
            workers=2,
            listen={"client_login_timeout": 2000},
        )
    )
    before = workers(p)
    rng = random.Random(16)
    login = startup_packet()
    answered = 0
    with GoodClients(p) as good:
        wait_until(lambda: good.queries >= 20 or good.errors, timeout=10)
        with RssSampler([w.pid for w in before]) as rss:
            for mtype in HOSTILE_TYPES:
                for length in HOSTILE_LENGTHS:
                    message = hostile_message(rng, mtype, length)
                    outcome = replay(p.port, message, rng, login=login)
                    problem = check(outcome)
                    assert problem is None, f"{problem}: type {mtype!r}, length {length}"
                    assert not good.errors, good.errors
                    answered += bool(outcome.errors)
    assert not good.errors, good.errors
    growth_mb = rss.growth_kb() / 1024
    print(
        f"hostile: {len(HOSTILE_TYPES) * len(HOSTILE_LENGTHS)} sessions, {answered} answered "
        f"with an error; worker RSS {rss.baseline} kB, peak {rss.peak} kB"
    )
    assert growth_mb < MAX_GROWTH_MB, (rss.baseline, rss.peak)
    wait_until(rss.back_near_baseline, timeout=15, message=lambda: f"RSS back near {rss.baseline}")
    after = workers(p)
    assert [w.restarts for w in after] == [0, 0], after
    assert p.sql("select 1", dbname="p0") == [(1,)]
