"""Human-readable differences between two configs, classified live vs restart (SPEC S8).

Classification follows odyssey's reload table (odyssey.md §1.4, §2.10): rules, storages, LDAP
endpoints, shared pools and the reloadable global keys apply live; listen sockets, workers, the
unix socket settings, pid file, log sinks, daemonize and the other start-up keys need a restart.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, is_dataclass
from typing import Any

from pooler.config.keywords import SECRET_KEYS
from pooler.config.model import Config, Rule

#: Global keys odyssey applies on reload (HEAD, odyssey.md §2.10) plus hba_file.
LIVE_GLOBAL_KEYS = frozenset(
    [
        "log_debug",
        "log_config",
        "log_session",
        "log_query",
        "log_stats",
        "stats_interval",
        "client_max",
        "max_sigterms_to_die",
        "client_max_routing",
        "server_login_retry",
        "backend_connect_timeout_ms",
        "cancel_timeout_ms",
        "smart_search_path_enquoting",
        "disable_nolinger",
        "keepalive",
        "keepalive_keep_interval",
        "keepalive_probes",
        "keepalive_usr_timeout",
        "graceful_shutdown_timeout_ms",
        "hba_file",
        "hba_rules",
        "client_max_buffer",  # new clients
    ]
)
_NOT_COMPARED = frozenset(
    {"path", "generation", "warnings", "pos", "key_pos", "includes", "order", "workers_auto"}
)


@dataclass(frozen=True)
class Change:
    text: str
    restart_required: bool

    def __str__(self) -> str:
        return f"restart required: {self.text}" if self.restart_required else self.text


def _show(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, tuple):
        return "(" + ", ".join(_show(v) for v in value) + ")"
    return str(value)


def _holds_secret(value: Any) -> bool:
    """A block (or a tuple of blocks, e.g. ldap_storage_credentials) with a secret key."""
    if isinstance(value, tuple):
        return any(_holds_secret(v) for v in value)
    return is_dataclass(value) and any(f.name in SECRET_KEYS for f in fields(value))


def _field_changes(old: Any, new: Any, skip: frozenset[str] = frozenset()) -> list[str]:
    """`key old -> new` for every differing field (secrets: `key changed`)."""
    out = []
    for f in fields(old):
        name = f.name
        if name in _NOT_COMPARED or name in skip or not f.compare:
            continue
        a, b = getattr(old, name), getattr(new, name)
        if a == b:
            continue
        if name in SECRET_KEYS or _holds_secret(a) or _holds_secret(b):
            out.append(f"{name} changed")
        else:
            out.append(f"{name} {_show(a)} -> {_show(b)}")
    return out


def _rule_label(rule: Rule) -> str:
    label = f'route "{rule.db_name}"."{rule.user_name}"'
    if rule.address is not None:
        label += f" {rule.address}"
    if rule.conn_type != "default":
        label += f" {rule.conn_type}"
    return label


def diff(old: Config, new: Config) -> list[Change]:
    """Changes from `old` to `new`, in a stable order (globals, listen, storages, routes...)."""
    changes: list[Change] = []

    # top-level keys
    skip = frozenset(
        {
            "listens",
            "storages",
            "rules",
            "ldap_endpoints",
            "shared_pools",
            "conn_drop_options",
            "soft_oom",
            "query_parsing",
            "hba_rules",
            "load_modules",
        }
    )
    for f in fields(old):
        name = f.name
        if name in skip or name in _NOT_COMPARED:
            continue
        a, b = getattr(old, name), getattr(new, name)
        if a != b:
            changes.append(Change(f"{name} {_show(a)} -> {_show(b)}", name not in LIVE_GLOBAL_KEYS))
    if old.hba_rules != new.hba_rules and old.hba_file == new.hba_file:
        changes.append(Change(f"hba_file {_show(new.hba_file)}: rules changed", False))
    if old.workers_auto != new.workers_auto and old.workers == new.workers:
        changes.append(
            Change(f"workers {_show(old.workers_auto)} -> {_show(new.workers_auto)} (auto)", True)
        )

    # listen: sockets are bound at start-up
    old_listens = {(x.host, x.port): x for x in old.listens}
    new_listens = {(x.host, x.port): x for x in new.listens}
    for key, listen in new_listens.items():
        if key not in old_listens:
            changes.append(
                Change(f"listen {listen.name} added (listen changes need a restart)", True)
            )
        else:
            for text in _field_changes(old_listens[key], listen):
                changes.append(
                    Change(f"listen {listen.name}: {text} (listen changes need a restart)", True)
                )
    for key, listen in old_listens.items():
        if key not in new_listens:
            changes.append(
                Change(f"listen {listen.name} removed (listen changes need a restart)", True)
            )

    # storages: live (new server connections use the new settings)
    old_storages = {s.name: s for s in old.storages}
    new_storages = {s.name: s for s in new.storages}
    for name, storage in new_storages.items():
        if name not in old_storages:
            changes.append(Change(f'storage "{name}" added', False))
            continue
        for text in _field_changes(
            old_storages[name], storage, frozenset({"endpoints", "port_set"})
        ):
            if text.startswith("watchdog "):
                text = "watchdog changed"
            changes.append(Change(f'storage "{name}": {text}', False))
    for name in old_storages:
        if name not in new_storages:
            changes.append(Change(f'storage "{name}" removed', False))

    # routes: live; obsolete ones drain
    old_rules = {r.identity: r for r in old.rules}
    new_rules = {r.identity: r for r in new.rules}
    for identity, rule in new_rules.items():
        if identity not in old_rules:
            changes.append(Change(f"{_rule_label(rule)} added", False))
            continue
        for text in _field_changes(old_rules[identity], rule):
            changes.append(Change(f"{_rule_label(rule)}: {text}", False))
    for identity, rule in old_rules.items():
        if identity not in new_rules:
            changes.append(Change(f"{_rule_label(rule)} removed", False))
    common_old = [r.identity for r in old.rules if r.identity in new_rules]
    common_new = [r.identity for r in new.rules if r.identity in old_rules]
    if common_old != common_new and new.sequential_routing:
        changes.append(Change("route order changed (sequential_routing)", False))

    # named blocks that reload live
    for label, attr in (("ldap_endpoint", "ldap_endpoints"), ("shared_pool", "shared_pools")):
        olds = {x.name: x for x in getattr(old, attr)}
        news = {x.name: x for x in getattr(new, attr)}
        for name, item in news.items():
            if name not in olds:
                changes.append(Change(f'{label} "{name}" added', False))
            else:
                for text in _field_changes(olds[name], item):
                    changes.append(Change(f'{label} "{name}": {text}', False))
        for name in olds:
            if name not in news:
                changes.append(Change(f'{label} "{name}" removed', False))

    # start-up only blocks
    for attr in ("conn_drop_options", "query_parsing", "soft_oom"):
        a, b = getattr(old, attr), getattr(new, attr)
        if a == b:
            continue
        if a is None or b is None:
            changes.append(Change(f"{attr} {'added' if a is None else 'removed'}", True))
        else:
            for text in _field_changes(a, b):
                changes.append(Change(f"{attr}: {text}", True))
    if old.load_modules != new.load_modules:
        changes.append(Change("load_module changed", True))
    return changes


#: Rule keys that define a route's pool: changing one makes the route obsolete (its clients
#: finish on the old pool, new clients get a new one). Every other key applies live.
ROUTE_DEFINING_KEYS = frozenset(
    {
        "storage",
        "storage_db",
        "storage_user",
        "storage_password",
        "pool",
        "pool_routing",
        "pool_reserve_prepared_statement",
        "role",
        "shared_pool",
        "backend_startup_options",
        "password_passthrough",
    }
)

RuleIdentity = tuple[str | None, str | None, bool, str | None, str, bool]


def rule_births(
    old: Config | None, new: Config, births: dict[RuleIdentity, int]
) -> dict[RuleIdentity, int]:
    """For each rule of `new`: the generation whose pools it goes on using.

    A rule keeps its birth generation across a reload when the rule with the same selector
    existed before and neither its route-defining keys nor its storage changed; otherwise it
    is born with `new.generation` (and the old route, if any, becomes obsolete). Routes are
    keyed by birth, so every worker (also one started later) agrees on them.
    """
    old_rules = {rule.identity: rule for rule in old.rules} if old is not None else {}
    out: dict[RuleIdentity, int] = {}
    for rule in new.rules:
        before = old_rules.get(rule.identity)
        birth = births.get(rule.identity)
        if before is not None and birth is not None and old is not None:
            defining = {
                name
                for name in _field_changes(before, rule)
                if name.split(" ", 1)[0] in ROUTE_DEFINING_KEYS
            }
            old_storage = old.storage(before.storage or "")
            new_storage = new.storage(rule.storage or "")
            storage_same = (
                old_storage is not None
                and new_storage is not None
                and not _field_changes(old_storage, new_storage)
            )
            if not defining and storage_same:
                out[rule.identity] = birth
                continue
        out[rule.identity] = new.generation
    return out
