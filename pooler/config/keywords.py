"""Keyword tables of odyssey's configuration language, per context.

These tables mirror `grammar/odyssey.lark` (a unit test checks that they agree) and odyssey's
`sources/cfg/keywords.c`. The grammar decides *where* a key may appear and what token type its
value has; these tables give the builder the value kind and the human-readable context names
used in diagnostics.
"""

from __future__ import annotations

GLOBAL_BOOL = [
    "daemonize",
    "sequential_routing",
    "enable_online_restart",
    "virtual_processing",
    "virtual_transaction",
    "graceful_die_on_errors",
    "bindwith_reuseport",
    "enable_host_watcher",
    "log_debug",
    "log_to_stdout",
    "log_config",
    "log_session",
    "log_query",
    "log_stats",
    "log_async",
    "log_syslog",
    "smart_search_path_enquoting",
    "nodelay",
    "disable_nolinger",
    "log_general_stats_prom",
    "log_route_stats_prom",
]
GLOBAL_STR = [
    "pid_file",
    "unix_socket_dir",
    "unix_socket_mode",
    "locks_dir",
    "external_auth_socket_path",
    "availability_zone",
    "log_file",
    "log_format",
    "log_syslog_ident",
    "log_syslog_facility",
    "cpu_affinity",
    "hba_file",
    "promhttp_server_host",  # pooler only
]
GLOBAL_INT = [
    "priority",
    "graceful_shutdown_timeout_ms",
    "log_queue_depth",
    "stats_interval",
    "client_max",
    "client_max_routing",
    "server_login_retry",
    "readahead",
    "keepalive",
    "keepalive_keep_interval",
    "keepalive_probes",
    "keepalive_usr_timeout",
    "max_sigterms_to_die",
    "backend_connect_timeout_ms",
    "cancel_timeout_ms",
    "cancel_queue_timeout_ms",
    "cancel_max_inflight",
    "resolvers",
    "dns_cache_ttl",
    "cache_msg_gc_size",
    "cache_coroutine",
    "coroutine_stack_size",
    "system_coroutine_stack_size",
    "promhttp_server_port",
    "group_checker_interval",
    "pipeline",
    "cache",
    "cache_chunk",
    "packet_read_size",
    "packet_write_queue",
    "client_max_buffer",  # pooler only
    "log_max_msg_size",  # odyssey master
]
GLOBAL_SPECIAL = [
    "workers",
    "tls_workers",  # odyssey master
    "include",
    "listen",
    "storage",
    "database",
    "ldap_endpoint",
    "shared_pool",
    "conn_drop_options",
    "online_restart_drop_options",
    "soft_oom",
    "query_parsing",
    "load_module",
]

LISTEN_STR = [
    "host",
    "target_session_attrs",
    "balancing_method",
    "tls",
    "tls_ca_file",
    "tls_key_file",
    "tls_cert_file",
    "tls_protocols",
    "storage",
]
LISTEN_INT = ["port", "client_login_timeout", "backlog", "catchup_timeout"]
LISTEN_BOOL = ["compression"]

STORAGE_STR = [
    "type",
    "host",
    "tls",
    "tls_ca_file",
    "tls_key_file",
    "tls_cert_file",
    "tls_protocols",
]
STORAGE_INT = ["port", "server_max_routing", "endpoints_status_poll_interval"]
STORAGE_SPECIAL = ["watchdog", "balancing"]

ROUTE_STR = [
    "authentication",
    "auth_module",
    "mdb_iamproxy_socket_path",
    "auth_pam_service",
    "target_session_attrs",
    "auth_query",
    "auth_query_db",
    "auth_query_user",
    "password",
    "role",
    "quantiles",
    "pool",
    "pool_routing",
    "pool_discard_query",
    "shared_pool",
    "storage",
    "storage_db",
    "storage_user",
    "storage_password",
    "ldap_endpoint_name",
    "ldap_storage_credentials_attr",
    "watchdog_lag_query",
    "group_query",
    "group_query_user",
    "group_query_db",
]
ROUTE_BOOL = [
    "enable_mdb_iamproxy_auth",
    "password_passthrough",
    "client_fwd_error",
    "client_show_id",
    "reserve_session_server_connection",
    "application_name_add_host",
    "server_drop_on_cached_plan_error",
    "maintain_params",
    "pool_discard",
    "pool_smart_discard",
    "pool_cancel",
    "pool_rollback",
    "pool_reserve_prepared_statement",
    "pool_pin_on_listen",
    "pool_attach_check",
    "pool_acquire_fail_fast",
    "log_debug",
    "log_query",
]
ROUTE_INT = [
    "client_max",
    "server_lifetime",
    "ldap_pool_size",
    "ldap_pool_timeout",
    "ldap_pool_ttl",
    "min_pool_size",
    "pool_size",
    "pool_timeout",
    "pool_ttl",
    "pool_reset_timeout_ms",
    "pool_notice_after_waiting_ms",
    "pool_client_idle_timeout",
    "pool_idle_in_transaction_timeout",
    "watchdog_lag_interval",
    "catchup_timeout",
    "catchup_checks",
    "keepalive",
    "keepalive_keep_interval",
    "keepalive_probes",
    "keepalive_usr_timeout",
]
ROUTE_SPECIAL = [
    "auth_common_name",
    "ldap_storage_credentials",
    "options",
    "backend_startup_options",
]
CREDS_STR = ["ldap_storage_username", "ldap_storage_password"]

LDAP_STR = [
    "ldapserver",
    "ldapprefix",
    "ldapsuffix",
    "ldapsearchattribute",
    "ldapscope",
    "ldapscheme",
    "ldapbasedn",
    "ldapbinddn",
    "ldapbindpasswd",
    "ldapsearchfilter",
]
LDAP_INT = ["ldapport"]

SHARED_POOL_INT = ["pool_size"]
CONN_DROP_BOOL = ["drop_enabled"]
CONN_DROP_INT = ["rate", "interval_ms"]
SOFT_OOM_KEYS = ["limit", "process", "check_interval_ms", "drop"]
SOFT_OOM_DROP_KEYS = ["signal", "max_rate"]
QUERY_PARSING_KEYS = ["mode", "mem_limit"]
BALANCING_KEYS = ["method", "show_notice_messages"]
METHOD_KEYS = ["az_aware"]
DB_KEYS = ["user", "group"]

VALUE_WORDS = [
    "yes",
    "no",
    "default",
    "local",
    "host",
    "hostssl",
    "hostnossl",
    "disabled",
    "minimal",
    "full",
]

CONNECTION_TYPES = ("local", "host", "hostssl", "hostnossl")

#: Context name -> keys valid there (used for "did you mean" and "valid in" hints).
CONTEXTS: dict[str, tuple[str, ...]] = {
    "top level": tuple(GLOBAL_BOOL + GLOBAL_STR + GLOBAL_INT + GLOBAL_SPECIAL),
    "listen": tuple(LISTEN_STR + LISTEN_INT + LISTEN_BOOL),
    "storage": tuple(STORAGE_STR + STORAGE_INT + STORAGE_SPECIAL),
    "database": tuple(DB_KEYS),
    "user/group/watchdog (route)": tuple(ROUTE_STR + ROUTE_BOOL + ROUTE_INT + ROUTE_SPECIAL),
    "ldap_storage_credentials": tuple(CREDS_STR),
    "ldap_endpoint": tuple(LDAP_STR + LDAP_INT),
    "shared_pool": tuple(SHARED_POOL_INT),
    "conn_drop_options": tuple(CONN_DROP_BOOL + CONN_DROP_INT),
    "soft_oom": tuple(SOFT_OOM_KEYS),
    "soft_oom.drop": tuple(SOFT_OOM_DROP_KEYS),
    "query_parsing": tuple(QUERY_PARSING_KEYS),
    "balancing": tuple(BALANCING_KEYS),
    "balancing.method": tuple(METHOD_KEYS),
}


def _all_keywords() -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for keys in CONTEXTS.values():
        for key in keys:
            seen.setdefault(key, None)
    for word in VALUE_WORDS:
        seen.setdefault(word, None)
    return tuple(seen)


#: Every reserved word, in table order (the order decides ties in "did you mean").
KEYWORDS: tuple[str, ...] = _all_keywords()
KEYWORD_SET = frozenset(KEYWORDS)

#: Keys accepted and ignored, with a warning (odyssey HEAD: "deprecated and ignored").
DEPRECATED = frozenset(
    [
        "pipeline",
        "cache",
        "cache_chunk",
        "packet_read_size",
        "packet_write_queue",
        "graceful_die_on_errors",
        "compression",
        "ldap_pool_size",
        "ldap_pool_timeout",
        "ldap_pool_ttl",
        "catchup_checks",
    ]
)

#: Keys whose values are secrets (in whichever block they appear): a config diff says only
#: that one changed, and the model handed out over the control socket has them blanked.
SECRET_KEYS = frozenset({"password", "storage_password", "ldapbindpasswd", "ldap_storage_password"})


def terminal(word: str) -> str:
    """Name of the Lark terminal for a keyword (`pool_size` -> `POOL_SIZE`)."""
    return word.upper()
