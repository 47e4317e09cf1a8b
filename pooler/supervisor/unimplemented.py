"""Keys pooler parses (odyssey accepts them) but does not act on yet.

SPEC S2: nothing is silently ignored — the supervisor logs once at start-up (and after a
reload) `accepted, not implemented: …` for every such key the config sets.
"""

from __future__ import annotations

from pooler.config import Config

GLOBAL = frozenset(
    {
        "locks_dir",
        "log_async", "log_queue_depth",
        "log_general_stats_prom", "log_route_stats_prom", "resolvers", "readahead",
        "cache_coroutine", "cache_msg_gc_size", "coroutine_stack_size",
        "system_coroutine_stack_size",
        "disable_nolinger", "cpu_affinity", "tls_workers",
    }
)  # fmt: skip
ROUTE = frozenset(
    {
        "auth_module", "enable_mdb_iamproxy_auth", "mdb_iamproxy_socket_path",
        "pool_acquire_fail_fast",
    }
)  # fmt: skip
LISTEN = frozenset({"compression"})
STORAGE: frozenset[str] = frozenset()


def unimplemented(config: Config) -> list[str]:
    """The set keys pooler accepts but does not implement, in a stable order."""
    found: set[str] = {key for key in config.key_pos if key in GLOBAL}
    for listen in config.listens:
        found.update(f"listen.{key}" for key in listen.key_pos if key in LISTEN)
    for storage in config.storages:
        found.update(f"storage.{key}" for key in storage.key_pos if key in STORAGE)
    for rule in config.rules:
        found.update(f"route.{key}" for key in rule.key_pos if key in ROUTE)
    return sorted(found)
