"""The configuration model: frozen dataclasses, field names spelled as odyssey spells its keys.

Defaults are odyssey's (reference: odyssey.md §1.4-§1.9); where odyssey's documentation and its
code disagree, the code wins. Every object carries the position of the block that defined it,
and `key_pos` maps each key that was set to where it was set (not compared, not hashed).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from types import MappingProxyType
from typing import Any

from pooler.config.errors import Diagnostic, Pos
from pooler.config.keywords import SECRET_KEYS

NO_POS = Pos("<default>", 0, 0)


def _empty_map() -> Mapping[str, Pos]:
    return MappingProxyType({})


@dataclass(frozen=True)
class Endpoint:
    """One backend address of a storage (`host "h1:5432,h2"` gives two)."""

    host: str | None  # None -> unix socket
    port: int
    unix_socket_path: str | None = None
    availability_zone: str | None = None

    def __str__(self) -> str:
        if self.host is None:
            return f"unix:{self.unix_socket_path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class Listen:
    host: str | None = None  # None -> unix socket in unix_socket_dir
    port: int = 6432
    backlog: int = 128
    client_login_timeout: int = 15000  # ms
    tls: str = "disable"
    tls_ca_file: str | None = None
    tls_key_file: str | None = None
    tls_cert_file: str | None = None
    tls_protocols: str | None = None
    target_session_attrs: str | None = None
    catchup_timeout: int = 0
    balancing_method: str | None = None  # HEAD only
    storage: tuple[str, ...] = ()  # HEAD only: fallback storages
    pos: Pos = NO_POS
    key_pos: Mapping[str, Pos] = field(default_factory=_empty_map, compare=False, repr=False)

    @property
    def name(self) -> str:
        return f"{self.host if self.host is not None else 'unix'}:{self.port}"


@dataclass(frozen=True)
class LdapCredentials:
    name: str
    ldap_storage_username: str | None = None
    ldap_storage_password: str | None = None
    pos: Pos = NO_POS


@dataclass(frozen=True)
class Rule:
    """A `user`/`group` block inside a `database` block (or a storage `watchdog`)."""

    database: str | None  # None = `default` wildcard
    user: str | None  # None = `default` wildcard; for groups the group name
    group: bool = False
    address: str | None = None  # None = any
    conn_type: str = "default"  # default | local | host | hostssl | hostnossl
    order: int = 0
    pos: Pos = NO_POS
    # authentication
    authentication: str | None = None
    password: str | None = None
    auth_common_name: tuple[str, ...] = ()
    auth_common_name_default: bool = False  # `auth_common_name default`
    auth_query: str | None = None
    auth_query_db: str | None = None
    auth_query_user: str | None = None
    auth_pam_service: str | None = None
    auth_module: str | None = None
    enable_mdb_iamproxy_auth: bool = False
    mdb_iamproxy_socket_path: str | None = None
    password_passthrough: bool = False
    ldap_endpoint_name: str | None = None
    ldap_storage_credentials_attr: str | None = None
    ldap_storage_credentials: tuple[LdapCredentials, ...] = ()
    role: str | None = None
    # pool
    pool: str | None = None
    pool_routing: str = "client_visible"
    pool_size: int = 0  # 0 = unlimited
    min_pool_size: int = 0
    pool_timeout: int = 0  # ms, 0 = forever
    pool_ttl: int = 0  # s
    pool_discard: bool = True
    pool_smart_discard: bool = False
    pool_discard_query: str | None = None
    pool_cancel: bool = True
    pool_rollback: bool = True
    pool_reset_timeout_ms: int = 1000
    pool_reserve_prepared_statement: bool = True
    pool_pin_on_listen: bool = False
    pool_attach_check: bool = True
    pool_acquire_fail_fast: bool = False
    pool_notice_after_waiting_ms: int = -1
    pool_client_idle_timeout: int = 0  # s
    pool_idle_in_transaction_timeout: int = 0  # s
    shared_pool: str | None = None
    # clients
    client_max: int | None = None
    client_fwd_error: bool = False
    client_show_id: bool = True
    reserve_session_server_connection: bool = True
    application_name_add_host: bool = False
    # servers
    server_lifetime: int = 3600  # s
    server_drop_on_cached_plan_error: bool = True
    maintain_params: bool = True
    options: tuple[tuple[str, str], ...] = ()
    backend_startup_options: tuple[tuple[str, str], ...] = ()
    storage: str | None = None
    storage_db: str | None = None
    storage_user: str | None = None
    storage_password: str | None = None
    target_session_attrs: str | None = None
    catchup_timeout: int = 0
    quantiles: str | None = None
    log_debug: bool = False
    log_query: bool = False
    keepalive: int = 0
    keepalive_keep_interval: int = 0
    keepalive_probes: int = 0
    keepalive_usr_timeout: int = 0
    watchdog_lag_query: str | None = None
    watchdog_lag_interval: int = 0
    group_query: str | None = None
    group_query_user: str | None = None
    group_query_db: str | None = None
    key_pos: Mapping[str, Pos] = field(default_factory=_empty_map, compare=False, repr=False)

    @property
    def db_name(self) -> str:
        return "default_db" if self.database is None else self.database

    @property
    def user_name(self) -> str:
        if self.group:
            return f"group_{self.user}"
        return "default_user" if self.user is None else self.user

    @property
    def name(self) -> str:
        return f"{self.db_name}.{self.user_name}"

    @property
    def selector(self) -> str:
        """Address and connection type as odyssey prints them (`all`, `10.0.0.0/8 hostssl`)."""
        text = self.address if self.address is not None else "all"
        if self.conn_type != "default":
            text += f" {self.conn_type}"
        return text

    @functools.cached_property  # (the rule never changes: built once, not at every login)
    def identity(self) -> tuple[str | None, str | None, bool, str | None, str, bool]:
        """What makes two rules the same rule. An internal rule (auth_query, watchdog) and a
        client-visible one for the same user are two rules (odyssey routes each kind of client
        to its own)."""
        internal = self.pool_routing == "internal"
        return (self.database, self.user, self.group, self.address, self.conn_type, internal)


@dataclass(frozen=True)
class Storage:
    name: str
    type: str = "remote"  # remote | local
    host: str | None = None  # raw string
    endpoints: tuple[Endpoint, ...] = ()
    port: int = 5432  # odyssey: 0 when unset; we use 5432 (docs/configuration.md)
    port_set: bool = False
    tls: str = "disable"
    tls_ca_file: str | None = None
    tls_key_file: str | None = None
    tls_cert_file: str | None = None
    tls_protocols: str | None = None
    server_max_routing: int = 0  # 0 = number of workers
    endpoints_status_poll_interval: int = 1000  # ms
    balancing_method: str = "roundrobin"
    balancing_az_aware: bool = True
    show_notice_messages: bool = False
    watchdog: Rule | None = None
    pos: Pos = NO_POS
    key_pos: Mapping[str, Pos] = field(default_factory=_empty_map, compare=False, repr=False)


@dataclass(frozen=True)
class LdapEndpoint:
    name: str
    ldapserver: str | None = None
    ldapport: int = 0
    ldapprefix: str | None = None
    ldapsuffix: str | None = None
    ldapbasedn: str | None = None
    ldapbinddn: str | None = None
    ldapbindpasswd: str | None = None
    ldapsearchattribute: str | None = None
    ldapsearchfilter: str | None = None
    ldapscheme: str | None = None
    ldapscope: str | None = None
    pos: Pos = NO_POS
    key_pos: Mapping[str, Pos] = field(default_factory=_empty_map, compare=False, repr=False)


@dataclass(frozen=True)
class SharedPool:
    name: str
    pool_size: int = 0
    pos: Pos = NO_POS
    key_pos: Mapping[str, Pos] = field(default_factory=_empty_map, compare=False, repr=False)


@dataclass(frozen=True)
class ConnDropOptions:
    drop_enabled: bool = True
    rate: int = 1
    interval_ms: int = 1000
    pos: Pos | None = None
    key_pos: Mapping[str, Pos] = field(default_factory=_empty_map, compare=False, repr=False)


@dataclass(frozen=True)
class SoftOom:
    limit: int = 0  # bytes
    process: str | None = None
    check_interval_ms: int = 1000
    signal: str = "SIGTERM"
    max_rate: int = 3
    drop: bool = False  # a `drop { }` block: signal backends while over the limit
    pos: Pos = NO_POS
    key_pos: Mapping[str, Pos] = field(default_factory=_empty_map, compare=False, repr=False)


@dataclass(frozen=True)
class QueryParsing:
    mode: str = "minimal"
    mem_limit: int = 1024 * 1024
    pos: Pos | None = None
    key_pos: Mapping[str, Pos] = field(default_factory=_empty_map, compare=False, repr=False)


@dataclass(frozen=True)
class HbaRule:
    """One line of an odyssey `hba_file` (odyssey.md §1.10)."""

    conn_type: str  # local | host | hostssl | hostnossl
    databases: tuple[str, ...]  # "all", "sameuser" or names
    users: tuple[str, ...]  # "all" or names
    address: str | None  # network, e.g. "127.0.0.0/24"; None for local
    method: str  # allow | trust | deny | reject
    pos: Pos = NO_POS

    @property
    def allows(self) -> bool:
        return self.method in ("allow", "trust")


@dataclass(frozen=True)
class Config:
    path: str | None
    generation: int = 0
    warnings: tuple[Diagnostic, ...] = ()
    listens: tuple[Listen, ...] = ()
    storages: tuple[Storage, ...] = ()
    rules: tuple[Rule, ...] = ()
    ldap_endpoints: tuple[LdapEndpoint, ...] = ()
    shared_pools: tuple[SharedPool, ...] = ()
    conn_drop_options: ConnDropOptions = ConnDropOptions()
    soft_oom: SoftOom | None = None
    query_parsing: QueryParsing = QueryParsing()
    hba_rules: tuple[HbaRule, ...] = ()
    load_modules: tuple[str, ...] = ()  # legacy `load_module` paths (not supported, warned)
    includes: tuple[str, ...] = ()  # every file read besides `path` (includes, hba_file)
    workers: int = 1  # "auto" resolved to (cpu count + 1) // 2, as odyssey
    workers_auto: bool = False
    # top-level keys (odyssey.md §1.4)
    daemonize: bool = False
    priority: int = 0
    sequential_routing: bool = False
    pid_file: str | None = None
    unix_socket_dir: str | None = None
    unix_socket_mode: str | None = None
    locks_dir: str | None = None
    external_auth_socket_path: str | None = None
    availability_zone: str | None = None
    log_file: str | None = None
    log_format: str | None = None
    log_to_stdout: bool = True
    log_syslog: bool = False
    log_syslog_ident: str = "odyssey"
    log_syslog_facility: str = "daemon"
    log_debug: bool = False
    log_config: bool = False
    log_session: bool = True
    log_query: bool = False
    log_stats: bool = True
    log_async: bool = True
    log_queue_depth: int = 30000
    log_general_stats_prom: bool = False
    log_route_stats_prom: bool = False
    promhttp_server_port: int | None = None
    # pooler only: /metrics addresses (comma-separated, "*" = every interface); unset = the
    # TCP listen addresses (127.0.0.1 when there are only unix sockets)
    promhttp_server_host: str | None = None
    client_max_buffer: int = 4 * 1024 * 1024  # pooler only: bytes held for one client
    log_max_msg_size: int = 0  # odyssey master: a log message is cut to this many chars; 0: whole
    tls_workers: int | str = 0  # odyssey master: TLS handshake threads (none in pooler)
    stats_interval: int = 3
    resolvers: int = 1
    readahead: int = 4096
    nodelay: bool = True
    disable_nolinger: bool = False
    keepalive: int = 15
    keepalive_keep_interval: int = 5
    keepalive_probes: int = 3
    keepalive_usr_timeout: int = 0
    cache_coroutine: int = 1024
    cache_msg_gc_size: int = 0
    coroutine_stack_size: int = 16
    system_coroutine_stack_size: int = 32
    client_max: int | None = None
    client_max_routing: int = 0
    server_login_retry: int = 1
    max_sigterms_to_die: int = 3
    backend_connect_timeout_ms: int = 30000
    cancel_timeout_ms: int = 1000
    cancel_queue_timeout_ms: int = -1
    cancel_max_inflight: int = -1
    dns_cache_ttl: int = 30000
    graceful_shutdown_timeout_ms: int = 30000
    enable_online_restart: bool = True
    bindwith_reuseport: bool = True
    enable_host_watcher: bool = False
    smart_search_path_enquoting: bool = False
    cpu_affinity: str | None = None
    hba_file: str | None = None
    group_checker_interval: int = 7000
    virtual_processing: bool = False
    virtual_transaction: bool = True
    pos: Pos = NO_POS
    key_pos: Mapping[str, Pos] = field(default_factory=_empty_map, compare=False, repr=False)

    def storage(self, name: str) -> Storage | None:
        for storage in self.storages:
            if storage.name == name:
                return storage
        return None

    def ldap_endpoint(self, name: str) -> LdapEndpoint | None:
        for endpoint in self.ldap_endpoints:
            if endpoint.name == name:
                return endpoint
        return None

    def shared_pool(self, name: str) -> SharedPool | None:
        for pool in self.shared_pools:
            if pool.name == name:
                return pool
        return None

    def pool_size_of(self, rule: Rule) -> int:
        """The most servers the rule's routes may have: its `shared_pool`'s pool_size (a cap
        its routes share with every rule naming that pool) or its own (0: unlimited)."""
        shared = self.shared_pool(rule.shared_pool) if rule.shared_pool is not None else None
        return shared.pool_size if shared is not None else rule.pool_size


def redacted(config: Config) -> dict[str, Any]:
    """The model as plain dicts and lists (the control API's `config_get`), every secret
    blanked."""
    plain: dict[str, Any] = _plain("", config)
    return plain


def _plain(key: str, value: Any) -> Any:
    if key in SECRET_KEYS:
        return None if value is None else "********"
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(f.name, getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, Mapping):  # key_pos and the like: keys are names, not secrets
        return {k: _plain("", v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain("", v) for v in value]
    return value
