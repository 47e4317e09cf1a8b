"""AST items -> model: the Builder applies the dialect rules the grammar leaves open (see
docs/configuration.md): default = union of odyssey's legacy and HEAD readers, `strict` =
HEAD's rules. Text -> AST items is `syntax`'s; host lists `endpoints`', hba files `hba`'s.

Over 500 lines for a reason: it is one class whose methods are the config's blocks (listen,
storage, database/user rules, ldap_endpoint, shared_pool, soft_oom...), each turning one
block's settings into its model dataclass with the same value rules (`value`, `collect`,
positions, duplicates); splitting the blocks apart would scatter those shared rules.
"""

from __future__ import annotations

import ipaddress
import os
import re
from types import MappingProxyType
from typing import Any

from lark import Token

from pooler.config import keywords as kw
from pooler.config.endpoints import parse_endpoints
from pooler.config.errors import ConfigError, Diagnostic, Pos
from pooler.config.files import read_text_file, resolve_relative
from pooler.config.model import (
    Config,
    ConnDropOptions,
    Endpoint,
    LdapCredentials,
    LdapEndpoint,
    Listen,
    QueryParsing,
    Rule,
    SharedPool,
    SoftOom,
    Storage,
)
from pooler.config.syntax import Block, Include, Setting, parse_items

INCLUDE_DEPTH_LIMIT = 16
INT_MIN, INT_MAX = -(2**31), 2**31 - 1


SIZE_KEYS = frozenset({"limit", "mem_limit", "client_max_buffer"})
LEGACY_SUFFIXES = {"b": 1, "kb": 1024, "mb": 1024**2, "gb": 1024**3}
HEAD_SUFFIXES = {"b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
NON_NEGATIVE = frozenset(
    [
        "backlog",
        "client_login_timeout",
        "catchup_timeout",
        "pool_size",
        "min_pool_size",
        "pool_timeout",
        "pool_ttl",
        "pool_reset_timeout_ms",
        "pool_notice_after_waiting_ms",
        "pool_client_idle_timeout",
        "pool_idle_in_transaction_timeout",
        "server_lifetime",
        "watchdog_lag_interval",
        "server_max_routing",
        "stats_interval",
        "log_max_msg_size",
    ]
)
RANGES: dict[str, tuple[int, int]] = {
    "port": (1, 65535),
    "promhttp_server_port": (1, 65535),
    "client_max_buffer": (64 * 1024, 1 << 30),
    "ldapport": (0, 65535),
    "endpoints_status_poll_interval": (1, INT_MAX),
    "rate": (1, INT_MAX),
    "interval_ms": (1, INT_MAX),
}
REPEATABLE = frozenset({"storage@listen", "auth_common_name@route"})


class Builder:
    def __init__(self, strict: bool) -> None:
        self.strict = strict
        self.errors: list[Diagnostic] = []
        self.warnings: list[Diagnostic] = []
        self.file = "<text>"
        self.files: list[str] = []
        self.globals: dict[str, Any] = {}
        self.global_pos: dict[str, Pos] = {}
        self.listens: list[Listen] = []
        self.storages: list[Storage] = []
        self.rules: list[Rule] = []
        self.ldap_endpoints: list[LdapEndpoint] = []
        self.shared_pools: list[SharedPool] = []
        self.conn_drop: ConnDropOptions | None = None
        self.soft_oom: SoftOom | None = None
        self.query_parsing: QueryParsing | None = None
        self.load_modules: list[str] = []
        self.watchdog_pos: Pos | None = None
        self.rule_seen: dict[tuple[Any, ...], Pos] = {}

    # ---------------------------------------------------------------- helpers

    def pos(self, token: Token) -> Pos:
        return Pos(self.file, token.line or 0, token.column or 0)

    def error(self, token_or_pos: Token | Pos | None, message: str) -> None:
        pos = self.pos(token_or_pos) if isinstance(token_or_pos, Token) else token_or_pos
        self.errors.append(Diagnostic(pos, message))

    def warn(self, token_or_pos: Token | Pos | None, message: str) -> None:
        pos = self.pos(token_or_pos) if isinstance(token_or_pos, Token) else token_or_pos
        self.warnings.append(Diagnostic(pos, message, "warning"))

    def value(self, setting: Setting) -> Any:
        """Convert a setting's value token, checking odyssey's per-key rules."""
        token = setting.value
        key = setting.key
        ttype = token.type
        if ttype == "STRING":
            return str(token.value)
        if ttype in ("YES", "NO"):
            if self.strict and token.value not in ("yes", "no"):
                self.error(token, f"expected 'yes/no' for '{key}', found '{token.value}'")
            return ttype == "YES"
        if ttype == "NUMBER" or ttype == "SIZE":
            text = str(token.value)
            m = re.fullmatch(r"(-?[0-9]+)([A-Za-z]*)", text)
            assert m is not None
            number = int(m.group(1))
            suffix = m.group(2).lower()
            if suffix:
                if key in SIZE_KEYS:
                    number *= HEAD_SUFFIXES.get(suffix[0], 1)
                elif self.strict:
                    self.error(
                        token,
                        f"unexpected size '{text}' for '{key}': expected 'number' "
                        "(size suffixes are only allowed for limit and mem_limit)",
                    )
                elif suffix in LEGACY_SUFFIXES:
                    number *= LEGACY_SUFFIXES[suffix]
                else:
                    self.error(
                        token,
                        f"unexpected size '{text}' for '{key}': expected 'number' "
                        "(size suffixes are B, KB, MB, GB)",
                    )
            if key in SIZE_KEYS and key not in RANGES:
                return number
            if not INT_MIN <= number <= INT_MAX:
                self.error(token, f"value for option '{key}' is out of int range")
                return 0
            if key in RANGES:
                low, high = RANGES[key]
                if not low <= number <= high:
                    self.error(token, f"value for option '{key}' must be between {low} and {high}")
            elif key in NON_NEGATIVE and number < 0:
                if self.strict:
                    self.error(token, f"{key} must be non-negative")
                else:
                    self.warn(token, f"{key} must be non-negative (accepted as legacy odyssey)")
            return number
        # bare keyword values: default, disabled, minimal, full
        return ttype.lower()

    def collect(self, items: list[Any], context: str) -> tuple[dict[str, Any], dict[str, Pos]]:
        """Scalar settings of one block; duplicates: last wins (warning) or error (strict)."""
        values: dict[str, Any] = {}
        positions: dict[str, Pos] = {}
        for item in items:
            if not isinstance(item, Setting):
                continue
            key = item.key
            pos = self.pos(item.key_token)
            if key in kw.DEPRECATED:
                self.warn(pos, f"option '{key}' is deprecated and ignored")
                continue
            value = self.value(item)
            if f"{key}@{context}" in REPEATABLE:
                values.setdefault(key, []).append(value)
                positions.setdefault(key, pos)
                continue
            if key in values:
                self.duplicate(key, pos, positions[key])
            values[key] = value
            positions[key] = pos
        return values, positions

    def duplicate(self, key: str, pos: Pos, previous: Pos) -> None:
        if self.strict:
            self.error(pos, f"duplicate option '{key}'")
        else:
            self.warn(
                pos,
                f"duplicate option '{key}' (also set at {previous}); the last value wins",
            )

    # ---------------------------------------------------------------- top level

    def process(self, items: list[Any], file: str, depth: int) -> None:
        for item in items:
            self.file = file
            if isinstance(item, Setting):
                self.top_setting(item)
            elif isinstance(item, Include):
                self.include(item, file, depth)
            else:
                getattr(self, f"block_{item.kind}")(item)

    def top_setting(self, item: Setting) -> None:
        key = item.key
        pos = self.pos(item.key_token)
        if key in kw.DEPRECATED:
            self.warn(pos, f"option '{key}' is deprecated and ignored")
            return
        if key == "workers":
            value = self.workers(item)
        elif key == "tls_workers":
            value = self.tls_workers(item)
        else:
            value = self.value(item)
        if key in self.globals:
            self.duplicate(key, pos, self.global_pos[key])
        self.globals[key] = value
        self.global_pos[key] = pos

    def workers(self, item: Setting) -> Any:
        token = item.value
        if token.type == "STRING":
            text = str(token.value)
            if text == "auto" or (not self.strict and "auto".startswith(text)):
                return "auto"
            self.error(
                token, f"'{text}' is invalid value for workers: expected 'number' or '\"auto\"'"
            )
            return 1
        number = self.value(item)
        if number < 1:
            self.error(
                token,
                f"bad workers number {number} "
                "(value for option 'workers' must be between 1 and 2147483647)",
            )
        return number

    def tls_workers(self, item: Setting) -> Any:
        """odyssey master's TLS handshake threads: a number from 0, or "auto"."""
        token = item.value
        if token.type == "STRING":
            if token.value != "auto":
                self.error(
                    token,
                    f"'{token.value}' is invalid value for tls_workers: "
                    "expected 'number' or '\"auto\"'",
                )
            return "auto"
        number = self.value(item)
        if not isinstance(number, int) or isinstance(number, bool) or number < 0:
            self.error(token, f"bad tls_workers number {number} (must be >= 0)")
            return 0
        return number

    def include(self, item: Include, file: str, depth: int) -> None:
        pos = self.pos(item.key_token)
        if depth + 1 > INCLUDE_DEPTH_LIMIT:
            self.error(
                pos,
                f"include depth limit ({INCLUDE_DEPTH_LIMIT}) exceeded — possible circular include",
            )
            return
        path = resolve_relative(str(item.path.value), file)
        try:
            text = read_text_file(path)
            items = parse_items(text, path, self.strict)
        except ConfigError as exc:
            for d in exc.diagnostics:
                if d.pos is None:
                    self.errors.append(Diagnostic(pos, d.message))
                else:
                    self.errors.append(d)
            return
        self.files.append(path)
        self.process(items, path, depth + 1)

    # ---------------------------------------------------------------- blocks

    def block_listen(self, block: Block) -> None:
        values, positions = self.collect(block.items, "listen")
        if "storage" in values:
            values["storage"] = tuple(values["storage"])
        listen = Listen(
            pos=self.pos(block.key_token), key_pos=MappingProxyType(positions), **values
        )
        self.listens.append(listen)

    def block_storage(self, block: Block) -> None:
        assert block.name is not None
        name = str(block.name.value)
        pos = self.pos(block.key_token)
        if not name:
            self.error(block.name, "storage name must not be empty")
        for other in self.storages:
            if other.name == name:
                self.error(pos, f"duplicate storage definition '{name}' (first at {other.pos})")
        values, positions = self.collect(block.items, "storage")
        extra: dict[str, Any] = {}
        for sub in block.items:
            if isinstance(sub, Block) and sub.kind == "watchdog":
                sub_pos = self.pos(sub.key_token)
                if "watchdog" in extra:
                    self.error(sub_pos, f"redefinition of watchdog in storage '{name}'")
                    continue
                if self.watchdog_pos is not None:
                    self.error(
                        sub_pos,
                        "route 'watchdog_int.watchdog_int': is redefined "
                        f"(only one watchdog per config; first at {self.watchdog_pos})",
                    )
                    continue
                self.watchdog_pos = sub_pos
                extra["watchdog"] = self.route(sub, "watchdog_int", "watchdog_int", False, [])
            elif isinstance(sub, Block) and sub.kind == "balancing":
                if "balancing_method" in extra:
                    self.error(
                        self.pos(sub.key_token),
                        f"balancing section is redefined in storage '{name}'",
                    )
                    continue
                extra.update(self.balancing(sub, name))
        if "port" in values:
            extra["port_set"] = True
        values.setdefault("type", None)
        storage = Storage(
            name=name, pos=pos, key_pos=MappingProxyType(positions), **values, **extra
        )
        self.storages.append(storage)

    def balancing(self, block: Block, storage: str) -> dict[str, Any]:
        values, _ = self.collect(block.items, "balancing")
        result: dict[str, Any] = {
            "balancing_method": "roundrobin",
            "show_notice_messages": values.get("show_notice_messages", False),
        }
        methods = [b for b in block.items if isinstance(b, Block) and b.kind == "method"]
        for method in methods[1:]:
            self.duplicate("method", self.pos(method.key_token), self.pos(methods[0].key_token))
        if methods:
            method = methods[-1]
            assert method.name is not None
            name = str(method.name.value).lower()
            if name in ("weighted", "weightedleastconn", "responsetime"):
                self.error(method.name, f"not implemented balancing method '{name}'")
            elif name not in ("roundrobin", "leastconn"):
                self.error(method.name, f"unexpected balancing method '{method.name.value}'")
            result["balancing_method"] = name
            method_values, _ = self.collect(method.items, "method")
            result["balancing_az_aware"] = method_values.get("az_aware", True)
        return result

    def block_database(self, block: Block) -> None:
        assert block.name is not None
        database = None if block.name.type == "DEFAULT" else str(block.name.value)
        for item in block.items:
            assert isinstance(item, Block)
            self.file_rule(item, database)

    def file_rule(self, block: Block, database: str | None) -> None:
        assert block.name is not None
        group = block.kind == "group"
        user = None if block.name.type == "DEFAULT" else str(block.name.value)
        address, conn_type = self.selector(block.selector or [])
        rule = self.route(block, database, user, group, block.selector or [], address, conn_type)
        identity = rule.identity
        if identity in self.rule_seen:
            message = (
                f"route '{rule.name} {rule.selector}' is redefined "
                f"(first at {self.rule_seen[identity]})"
            )
            # both odyssey readers accept this silently; we keep the first and say so
            self.warn(rule.pos, message + "; the first definition is used")
            return
        self.rule_seen.setdefault(identity, rule.pos)
        self.rules.append(rule)

    def selector(self, tokens: list[Token]) -> tuple[str | None, str]:
        addresses = [t for t in tokens if t.type == "STRING"]
        conn_types = [t for t in tokens if t.type not in ("STRING", "DEFAULT")]
        defaults = [t for t in tokens if t.type == "DEFAULT"]
        if len(tokens) > 2 or len(addresses) > 1 or len(conn_types) > 1:
            bad = tokens[2] if len(tokens) > 2 else tokens[1]
            what = "address" if bad.type in ("STRING", "DEFAULT") else "connection type"
            self.error(bad, f"redefinition of {what}: '{bad.value}'")
        elif self.strict and len(tokens) == 2 and not addresses:
            self.error(
                tokens[1],
                f"unexpected '{tokens[1].value}': expected an address string or '{{'",
            )
        address = None
        if addresses:
            address = str(addresses[0].value)
            self.check_address(addresses[0])
        conn_type = conn_types[0].type.lower() if conn_types else "default"
        del defaults
        return address, conn_type

    _HOSTNAME = re.compile(
        r"^\.?[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*$"
    )

    def check_address(self, token: Token) -> None:
        text = str(token.value)
        if text in ("all", ""):
            return
        if "/" in text:
            try:
                ipaddress.ip_network(text, strict=False)
            except ValueError:
                self.error(token, f"invalid address or hostname: '{text}'")
            return
        try:
            ipaddress.ip_address(text)
        except ValueError:
            pass
        else:
            self.error(token, f"expected network mask in '{text}'")
            return
        if not self._HOSTNAME.match(text):
            self.error(token, f"invalid address or hostname: '{text}'")

    def route(
        self,
        block: Block,
        database: str | None,
        user: str | None,
        group: bool,
        selector: list[Token],
        address: str | None = None,
        conn_type: str = "default",
    ) -> Rule:
        values, positions = self.collect(block.items, "route")
        name = (
            f"{database or 'default_db'}.{f'group_{user}' if group else (user or 'default_user')}"
        )
        if "auth_common_name" in values:
            names = values.pop("auth_common_name")
            values["auth_common_name"] = tuple(n for n in names if n != "default")
            values["auth_common_name_default"] = "default" in names
        for key in ("group_query", "group_query_user", "group_query_db"):
            if key in values and not group:
                message = f"{key} is not allowed outside group, rule {name}"
                if self.strict:
                    self.error(positions[key], message)
                else:
                    self.warn(positions[key], message + " (ignored)")
        for key in ("watchdog_lag_query", "watchdog_lag_interval"):
            if key in values and block.kind != "watchdog":
                message = f"{key} is only allowed inside storage watchdog, rule {name}"
                if self.strict:
                    self.error(positions[key], message)
                else:
                    self.warn(positions[key], message + " (ignored)")
        options: dict[str, list[tuple[str, str]]] = {}
        creds: list[LdapCredentials] = []
        for sub in block.items:
            if not isinstance(sub, Block):
                continue
            if sub.kind == "options":
                which = sub.key_token.type.lower()
                options.setdefault(which, []).extend(
                    (str(k.value), str(v.value)) for k, v in sub.items
                )
            elif sub.kind == "ldap_storage_credentials":
                assert sub.name is not None
                cvalues, _ = self.collect(sub.items, "ldap_storage_credentials")
                cname = str(sub.name.value)
                for ckey in ("ldap_storage_username", "ldap_storage_password"):
                    if not cvalues.get(ckey):
                        self.error(
                            sub.key_token,
                            f"ldap_storage_credentials '{cname}': {ckey} is not set",
                        )
                creds.append(LdapCredentials(name=cname, pos=self.pos(sub.key_token), **cvalues))
        for which, pairs in options.items():
            values[which] = tuple(pairs)
        if not self.strict and values.get("client_max") is not None and values["client_max"] <= 0:
            values["client_max"] = None  # legacy: <= 0 means unset
        if creds:
            values["ldap_storage_credentials"] = tuple(creds)
        del selector
        return Rule(
            database=database,
            user=user,
            group=group,
            address=address,
            conn_type=conn_type,
            order=len(self.rules),
            pos=self.pos(block.key_token),
            key_pos=MappingProxyType(positions),
            **values,
        )

    def block_ldap_endpoint(self, block: Block) -> None:
        assert block.name is not None
        name = str(block.name.value)
        pos = self.pos(block.key_token)
        for other in self.ldap_endpoints:
            if other.name == name:
                self.error(pos, f"duplicate ldap_endpoint definition '{name}'")
        values, positions = self.collect(block.items, "ldap_endpoint")
        self.ldap_endpoints.append(
            LdapEndpoint(name=name, pos=pos, key_pos=MappingProxyType(positions), **values)
        )

    def block_shared_pool(self, block: Block) -> None:
        assert block.name is not None
        name = str(block.name.value)
        pos = self.pos(block.key_token)
        for other in self.shared_pools:
            if other.name == name:
                self.error(pos, f"duplicate shared_pool definition '{name}'")
        values, positions = self.collect(block.items, "shared_pool")
        if "pool_size" not in values:
            self.error(pos, f"pool_size is required in shared_pool '{name}'")
        elif values["pool_size"] <= 0:
            self.error(positions["pool_size"], f"shared_pool '{name}' pool_size must be positive")
        self.shared_pools.append(
            SharedPool(name=name, pos=pos, key_pos=MappingProxyType(positions), **values)
        )

    def block_conn_drop_options(self, block: Block) -> None:
        pos = self.pos(block.key_token)
        values, positions = self.collect(block.items, "conn_drop_options")
        if self.conn_drop is not None:
            if self.strict:
                self.error(pos, "conn_drop_options is redefined")
                return
            merged = dict(self.conn_drop.key_pos)
            merged.update(positions)
            kept = {k: getattr(self.conn_drop, k) for k in self.conn_drop.key_pos}
            kept.update(values)
            values, positions = kept, merged
        self.conn_drop = ConnDropOptions(pos=pos, key_pos=MappingProxyType(positions), **values)

    def block_soft_oom(self, block: Block) -> None:
        pos = self.pos(block.key_token)
        if self.soft_oom is not None:
            self.error(pos, "soft_oom is redefined")
            return
        values, positions = self.collect(block.items, "soft_oom")
        drops = [b for b in block.items if isinstance(b, Block)]
        for extra in drops[1:]:
            self.error(self.pos(extra.key_token), "soft_oom drop is redefined")
        if drops:
            dvalues, dpositions = self.collect(drops[0].items, "soft_oom_drop")
            values.update(dvalues)
            values["drop"] = True
            positions.update(dpositions)
        if "limit" not in values:
            self.error(pos, "soft_oom: limit is required")
        elif values["limit"] <= 0:
            self.error(positions["limit"], "soft_oom: limit must be positive")
        if len(values.get("process") or "") >= 256:
            self.error(positions["process"], "soft_oom: process name is too long")
        if "signal" in values:
            signal = values["signal"].upper()
            if not signal.startswith("SIG"):
                signal = "SIG" + signal
            import signal as _signal

            if not hasattr(_signal, signal):
                self.error(positions["signal"], f"soft_oom: unknown signal '{values['signal']}'")
            values["signal"] = signal
        self.soft_oom = SoftOom(pos=pos, key_pos=MappingProxyType(positions), **values)

    def block_query_parsing(self, block: Block) -> None:
        pos = self.pos(block.key_token)
        if self.query_parsing is not None:
            self.error(pos, "query_parsing is redefined")
            return
        values, positions = self.collect(block.items, "query_parsing")
        if values.get("mode") == "full":
            self.error(positions["mode"], "full mode of query parsing is not supported now")
        self.query_parsing = QueryParsing(pos=pos, key_pos=MappingProxyType(positions), **values)

    def block_load_module(self, block: Block) -> None:
        assert block.name is not None
        pos = self.pos(block.key_token)
        if self.strict:
            self.error(pos, "unknown directive 'load_module' (legacy odyssey only)")
            return
        self.warn(pos, "load_module is not supported by pooler; the block is ignored")
        self.load_modules.append(str(block.name.value))

    # ---------------------------------------------------------------- result

    def config(self, path: str | None, pos: Pos) -> Config:
        values = dict(self.globals)
        workers = values.pop("workers", 1)
        workers_auto = workers == "auto"
        if workers_auto:
            workers = ((os.cpu_count() or 1) + 1) // 2  # odyssey: (ncpu + 1) / 2
        if "client_max" in values and values["client_max"] <= 0:
            values["client_max"] = None
        storages = tuple(
            self.finish_storage(s, values.get("unix_socket_dir")) for s in self.storages
        )
        return Config(
            path=path,
            warnings=tuple(self.warnings),
            listens=tuple(self.listens),
            storages=storages,
            rules=tuple(self.rules),
            ldap_endpoints=tuple(self.ldap_endpoints),
            shared_pools=tuple(self.shared_pools),
            conn_drop_options=self.conn_drop or ConnDropOptions(),
            soft_oom=self.soft_oom,
            query_parsing=self.query_parsing or QueryParsing(),
            load_modules=tuple(self.load_modules),
            includes=tuple(self.files),
            workers=workers,
            workers_auto=workers_auto,
            pos=pos,
            key_pos=MappingProxyType(dict(self.global_pos)),
            **values,
        )

    def finish_storage(self, storage: Storage, unix_socket_dir: str | None) -> Storage:
        from dataclasses import replace

        endpoints: list[Endpoint] = []
        if storage.host is None:
            if unix_socket_dir is not None:
                endpoints.append(
                    Endpoint(None, storage.port, f"{unix_socket_dir}/.s.PGSQL.{storage.port}")
                )
        else:
            error_pos = storage.key_pos.get("host", storage.pos)
            try:
                endpoints = parse_endpoints(storage.host, storage.port)
            except ValueError as exc:
                self.error(error_pos, f"storage '{storage.name}': {exc}")
        return replace(storage, endpoints=tuple(endpoints))
