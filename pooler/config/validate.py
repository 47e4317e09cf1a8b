"""Whole-config validation, as odyssey does it after reading (odyssey.md §1.11).

Messages reproduce odyssey's (the legacy reader's wording where it is readable, HEAD's where the
legacy text is cryptic). Every check runs, so independent errors are reported together.
"""

from __future__ import annotations

import re

from pooler.config.errors import Diagnostic, Pos, did_you_mean
from pooler.config.model import Config, Rule, Storage

TLS_MODES = ("disable", "allow", "prefer", "require", "verify_ca", "verify_full")
STORAGE_TYPES = ("remote", "local")
AUTH_MODES = ("none", "block", "clear_text", "md5", "scram-sha-256", "cert", "external")
POOL_MODES = ("session", "transaction", "statement")
POOL_ROUTINGS = ("client_visible", "internal")


def hint(value: str | None, choices: tuple[str, ...] | list[str]) -> str:
    """`; did you mean 'x'?` for a value close to one of `choices`, else ''."""
    best = did_you_mean(value, choices) if value else None
    return f"; did you mean '{best}'?" if best is not None else ""


ROLES = ("admin", "stat", "notallow")
TSA_VALUES = ("read-write", "read-only", "prefer-standby", "any")
BALANCING_METHODS = ("roundrobin", "leastconn")


def validate(config: Config, strict: bool) -> tuple[list[Diagnostic], list[Diagnostic]]:
    """Return (errors, warnings) for a built config."""
    v = _Validator(config, strict)
    v.run()
    return v.errors, v.warnings


class _Validator:
    def __init__(self, config: Config, strict: bool) -> None:
        self.c = config
        self.strict = strict
        self.errors: list[Diagnostic] = []
        self.warnings: list[Diagnostic] = []

    def storage_names(self) -> list[str]:
        return [s.name for s in self.c.storages]

    def error(self, pos: Pos | None, message: str) -> None:
        self.errors.append(Diagnostic(pos, message))

    def warn(self, pos: Pos | None, message: str) -> None:
        self.warnings.append(Diagnostic(pos, message, "warning"))

    def gpos(self, key: str) -> Pos:
        return self.c.key_pos.get(key, self.c.pos)

    def run(self) -> None:
        self.check_global()
        self.check_listens()
        self.check_storages()
        self.check_ldap()
        self.check_rules()

    # -------------------------------------------------------------------- global

    def check_global(self) -> None:
        c = self.c
        if c.resolvers < 1:
            self.error(
                self.gpos("resolvers"),
                f"bad resolvers number {c.resolvers} "
                "(value for option 'resolvers' must be between 1 and 2147483647)",
            )
        if c.coroutine_stack_size < 4:
            self.error(
                self.gpos("coroutine_stack_size"),
                f"bad coroutine_stack_size number {c.coroutine_stack_size} (must be >= 4)",
            )
        if c.system_coroutine_stack_size < 4:
            self.error(
                self.gpos("system_coroutine_stack_size"),
                f"bad system_coroutine_stack_size number {c.system_coroutine_stack_size} "
                "(must be >= 4)",
            )
        if c.log_format is None:
            self.error(c.pos, "log_format is not defined")
        if c.unix_socket_dir is not None:
            if c.unix_socket_mode is None:
                self.error(self.gpos("unix_socket_dir"), "unix_socket_mode is not set")
            elif not re.fullmatch(r"[0-7]{1,4}", c.unix_socket_mode):
                self.error(
                    self.gpos("unix_socket_mode"),
                    f"unix_socket_mode '{c.unix_socket_mode}' is not an octal mode like \"0644\"",
                )
        if c.availability_zone is not None and len(c.availability_zone) > 15:
            self.error(self.gpos("availability_zone"), "availability_zone is too long (max 15)")
        if c.enable_online_restart and not c.bindwith_reuseport:
            self.warn(
                self.gpos("bindwith_reuseport"),
                "online restart feature works only with SO_REUSEPORT (bindwith_reuseport yes)",
            )

    # -------------------------------------------------------------------- listen

    def check_listens(self) -> None:
        c = self.c
        if not c.listens:
            self.error(c.pos, "no listen sections defined")
        for listen in c.listens:
            if self.strict and "port" not in listen.key_pos:
                self.error(listen.pos, "listen section is missing 'port'")
            if listen.host is None and c.unix_socket_dir is None:
                self.error(listen.pos, "listen host is not set and no unix_socket_dir is specified")
            if listen.tls not in TLS_MODES:
                self.error(
                    listen.key_pos.get("tls", listen.pos),
                    f"unknown tls mode '{listen.tls}'{hint(listen.tls, TLS_MODES)}",
                )
            if listen.target_session_attrs is not None and (
                listen.target_session_attrs not in TSA_VALUES
            ):
                self.error(
                    listen.key_pos.get("target_session_attrs", listen.pos),
                    f"can't parse target session attrs from '{listen.target_session_attrs}'",
                )
            if listen.balancing_method is not None and (
                listen.balancing_method.lower() not in BALANCING_METHODS
            ):
                self.error(
                    listen.key_pos.get("balancing_method", listen.pos),
                    f"unexpected balancing method '{listen.balancing_method}'",
                )
            for name in listen.storage:
                if c.storage(name) is None:
                    self.error(
                        listen.key_pos.get("storage", listen.pos),
                        f"unknown storage '{name}'{hint(name, self.storage_names())}",
                    )

    # -------------------------------------------------------------------- storages

    def check_storages(self) -> None:
        c = self.c
        if not c.storages:
            self.error(c.pos, "no storage defined")
        for storage in c.storages:
            self.check_storage(storage)

    def check_storage(self, s: Storage) -> None:
        prefix = f"storage '{s.name}'"
        if s.type is None:
            self.error(s.pos, f"{prefix}: no type is specified")
        elif s.type not in STORAGE_TYPES:
            self.error(
                s.key_pos.get("type", s.pos),
                f"{prefix}: unknown type '{s.type}'{hint(s.type, STORAGE_TYPES)}",
            )
        if s.type == "remote" and s.host is None and self.c.unix_socket_dir is None:
            self.error(s.pos, f"{prefix}: no host specified and unix_socket_dir is not set")
        if s.tls not in TLS_MODES:
            self.error(
                s.key_pos.get("tls", s.pos),
                f"{prefix}: unknown storage tls mode '{s.tls}'{hint(s.tls, TLS_MODES)}",
            )
        if s.watchdog is not None:
            self.check_rule(s.watchdog)

    def check_ldap(self) -> None:
        for endpoint in self.c.ldap_endpoints:
            if not endpoint.ldapserver:
                self.error(endpoint.pos, f"ldap_endpoint '{endpoint.name}': ldapserver is not set")

    # -------------------------------------------------------------------- rules

    def check_rules(self) -> None:
        if not self.c.rules:
            self.error(self.c.pos, "no rules defined")
        for rule in self.c.rules:
            self.check_rule(rule)

    def check_rule(self, r: Rule) -> None:
        c = self.c
        prefix = f"rule '{r.name} {r.selector}'"

        def at(key: str) -> Pos:
            return r.key_pos.get(key, r.pos)

        storage = None
        if r.storage is None:
            self.error(r.pos, f"{prefix}: no rule storage is specified")
        else:
            storage = c.storage(r.storage)
            if storage is None:
                self.error(
                    at("storage"),
                    f"{prefix}: no rule storage '{r.storage}' found"
                    f"{hint(r.storage, self.storage_names())}",
                )
        if r.authentication is None:
            self.error(r.pos, f"{prefix}: authentication mode is not defined")
        elif r.authentication not in AUTH_MODES:
            self.error(
                at("authentication"),
                f"{prefix}: has unknown authentication mode '{r.authentication}'"
                f"{hint(r.authentication, AUTH_MODES)}",
            )
        if r.role is not None:
            if r.role not in ROLES:
                self.error(
                    at("role"),
                    f"{prefix}: role type '{r.role}' is unknown "
                    "(expected role: admin, stat or notallow)",
                )
            elif storage is not None and storage.type != "local":
                self.error(at("role"), f"{prefix}: role set for non-local storage")
        if r.pool is None:
            self.error(r.pos, f"{prefix}: pooling mode is not set")
        elif r.pool not in POOL_MODES:
            self.error(
                at("pool"), f"{prefix}: unknown pooling mode '{r.pool}'{hint(r.pool, POOL_MODES)}"
            )
        if r.pool_routing not in POOL_ROUTINGS:
            self.error(
                at("pool_routing"),
                f"{prefix}: unknown pool routing mode '{r.pool_routing}'"
                f"{hint(r.pool_routing, POOL_ROUTINGS)}",
            )
        elif r.pool_routing == "internal" and r.address is not None:
            self.error(
                at("pool_routing"), f"{prefix}: internal rules must have default address_range"
            )
        # passwords and auth_query
        other_sources = (
            r.auth_query or r.auth_pam_service or r.ldap_endpoint_name or r.auth_module
        ) or r.enable_mdb_iamproxy_auth
        if r.authentication in ("md5", "scram-sha-256") and r.password is None and not r.auth_query:
            self.error(r.pos, f"{prefix}: password is not set")
        if r.authentication == "clear_text" and r.password is None and not other_sources:
            self.error(r.pos, f"{prefix}: password is not set")
        if r.auth_query is not None:
            if r.auth_query_user is None:
                self.error(at("auth_query"), f"{prefix}: auth_query_user is not set")
            if r.auth_query_db is None:
                self.error(at("auth_query"), f"{prefix}: auth_query_db is not set")
            if r.auth_pam_service is not None:
                self.error(
                    at("auth_pam_service"),
                    f"{prefix}: auth_query and auth_pam_service are incompatible",
                )
        if r.group:
            for key in ("group_query", "group_query_user", "group_query_db"):
                if getattr(r, key) is None:
                    self.error(r.pos, f"{prefix}: {key} is not set")
        if r.ldap_endpoint_name is not None:
            if c.ldap_endpoint(r.ldap_endpoint_name) is None:
                self.error(
                    at("ldap_endpoint_name"),
                    f"{prefix}: unknown ldap_endpoint '{r.ldap_endpoint_name}'",
                )
            if c.coroutine_stack_size < 16:
                self.error(
                    at("ldap_endpoint_name"),
                    f"rule '{r.name} {r.selector}' use ldap_endpoint. "
                    "coroutine_stack_size must be >= 16",
                )
        elif r.ldap_storage_credentials_attr is not None or r.ldap_storage_credentials:
            self.error(r.pos, f"{prefix}: ldap storage credentials need ldap_endpoint_name")
        if r.shared_pool is not None:
            if c.shared_pool(r.shared_pool) is None:
                self.error(at("shared_pool"), f"{prefix}: unknown shared_pool '{r.shared_pool}'")
            if "pool_size" in r.key_pos:
                self.error(
                    at("pool_size"), f"{prefix}: pool_size and shared_pool are mutually exclusive"
                )
        reserve = r.pool_reserve_prepared_statement and r.pool not in ("session",)
        if r.pool_smart_discard and not r.pool_reserve_prepared_statement:
            self.error(
                at("pool_smart_discard"),
                f"{prefix}: pool smart discard is forbidden without using prepared statements support",
            )
        if (
            reserve
            and r.pool_discard_query is not None
            and "deallocate all" in r.pool_discard_query.lower()
        ):
            self.error(
                at("pool_discard_query"),
                f"{prefix}: pool_discard_query must not contain DEALLOCATE ALL "
                "when prepared statements are reserved",
            )
        if r.target_session_attrs is not None and r.target_session_attrs not in TSA_VALUES:
            self.error(
                at("target_session_attrs"),
                f"{prefix}: can't parse target session attrs from '{r.target_session_attrs}'",
            )
        if r.quantiles is not None and not _quantiles_ok(r.quantiles):
            self.error(at("quantiles"), f"{prefix}: can't parse quantiles from '{r.quantiles}'")
        if r.client_max is not None and r.client_max <= 0 and self.strict:
            self.error(
                at("client_max"),
                "value for option 'client_max' must be between 1 and 2147483647",
            )


def _quantiles_ok(text: str) -> bool:
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        return False
    return all(0.0 <= value <= 1.0 for value in values)
