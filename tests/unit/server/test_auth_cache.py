"""The auth_query cache: bounded in entries and in time, entries of a fixed size."""

from __future__ import annotations

from pooler.server.auth_cache import AuthQueryCache


def key(user: str) -> tuple[str | None, ...]:
    return ("SELECT usename, passwd FROM pg_shadow WHERE usename = $1", "postgres", "aq", user)


def test_found_secrets_are_kept_for_the_ttl():
    cache = AuthQueryCache(ttl=10, failure_ttl=1)
    cache.put(key("alice"), "md5abc", now=100.0)
    assert cache.get(key("alice"), now=109.9) == (True, "md5abc")
    assert cache.get(key("alice"), now=110.0) == (False, None)
    assert len(cache) == 0  # an out-of-date entry read is dropped


def test_failures_are_kept_only_briefly():
    cache = AuthQueryCache(ttl=10, failure_ttl=1)
    cache.put(key("nobody"), None, now=100.0)
    assert cache.get(key("nobody"), now=100.5) == (True, None)
    assert cache.get(key("nobody"), now=101.0) == (False, None)


def test_expire_drops_everything_out_of_date():
    cache = AuthQueryCache(ttl=10, failure_ttl=1)
    for i in range(50):
        cache.put(key(f"nobody{i}"), None, now=100.0)
    cache.put(key("alice"), "secret", now=100.0)
    cache.expire(now=101.0)
    assert len(cache) == 1 and cache.get(key("alice"), now=101.0) == (True, "secret")
    cache.expire(now=110.0)
    assert len(cache) == 0


def test_entries_are_bounded_least_recently_stored_first():
    cache = AuthQueryCache(max_entries=100)
    for i in range(1000):
        cache.put(key(f"user{i}"), "secret", now=0.0)
    assert len(cache) == 100
    assert cache.get(key("user899"), now=0.0) == (False, None)
    assert cache.get(key("user900"), now=0.0) == (True, "secret")


def test_long_user_names_do_not_make_entries_bigger():
    short, long = AuthQueryCache(), AuthQueryCache()
    for i in range(200):
        short.put(key(f"u{i}"), None, now=0.0)
        long.put(key(f"u{i}" + "x" * 4000), None, now=0.0)
    assert long.memory_bytes() == short.memory_bytes() < 100_000
    assert long.get(key("u7" + "x" * 4000), now=0.0) == (True, None)
    assert long.get(key("u7" + "x" * 3999), now=0.0) == (False, None)


def test_the_parts_are_not_ambiguous():
    cache = AuthQueryCache()
    cache.put(("q", "ab", "c", "u"), "one", now=0.0)
    assert cache.get(("q", "a", "bc", "u"), now=0.0) == (False, None)
    assert cache.get(("q", None, "abc", "u"), now=0.0) == (False, None)
