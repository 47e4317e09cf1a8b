"""Keys of every block, defaults, validation messages, include, hba_file, did-you-mean."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers_config import BASE_LISTEN, BASE_STORAGE, BASE_TOP, conf, errors, ok, one_error

from pooler.config import Config, ConfigError, Rule, keywords as kw, load, parse_text
from pooler.config.grammar import grammar_path, grammar_text


def test_grammar_file_is_found_and_lists_every_keyword() -> None:
    assert grammar_path().name == "odyssey.lark"
    text = grammar_text()
    for word in kw.KEYWORDS:
        assert f" {kw.terminal(word)}" in text, word
    # odyssey's 186 reserved words + legacy load_module + pooler's promhttp_server_host and
    # client_max_buffer + odyssey master's tls_workers and log_max_msg_size
    assert len(kw.KEYWORDS) == 191


def test_config_package_imports_no_server_stack() -> None:
    import subprocess
    import sys

    code = (
        "import sys, pooler.config as c; c.parse_text('x', strict=False) if False else None;"
        "bad = {'asyncio', 'uvloop', 'textual'} & set(sys.modules); print(sorted(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------- top level


def test_top_level_defaults() -> None:
    c = ok(conf())
    assert (c.daemonize, c.log_to_stdout, c.log_session, c.log_stats, c.nodelay) == (
        False,
        True,
        True,
        True,
        True,
    )
    assert c.workers == 1 and c.client_max is None and c.promhttp_server_port is None
    assert c.coroutine_stack_size == 16 and c.readahead == 4096 and c.keepalive == 15
    assert c.log_syslog_ident == "odyssey" and c.log_syslog_facility == "daemon"
    assert c.graceful_shutdown_timeout_ms == 30000 and c.backend_connect_timeout_ms == 30000
    assert c.generation == 0 and c.warnings == ()


def test_every_top_level_key_parses() -> None:
    lines = []
    for key in kw.GLOBAL_BOOL:
        lines.append(f"{key} yes")
    for key in kw.GLOBAL_STR:
        if key not in ("hba_file", "unix_socket_mode", "availability_zone"):
            lines.append(f'{key} "x"')
    for key in kw.GLOBAL_INT:
        lines.append(f"{key} {65536 if key == 'client_max_buffer' else 20}")
    lines.append('unix_socket_mode "0644"\navailability_zone "az1"\nbindwith_reuseport yes')
    config = ok(conf(top="\n".join(lines)))
    assert config.daemonize is True and config.pid_file == "x" and config.priority == 20
    assert config.promhttp_server_port == 20
    deprecated = {str(w).split("'")[1] for w in config.warnings if "deprecated" in str(w)}
    assert deprecated == {k for k in kw.DEPRECATED if k in kw.GLOBAL_INT + kw.GLOBAL_BOOL}


def test_client_max_zero_means_unset_in_legacy() -> None:
    assert ok(conf(top="client_max 0")).client_max is None
    assert ok(conf(top="client_max 100")).client_max == 100


def test_promhttp_server_port_is_supported_and_range_checked() -> None:
    assert ok(conf(top="promhttp_server_port 9127")).promhttp_server_port == 9127
    assert "between 1 and 65535" in one_error(conf(top="promhttp_server_port 0"))


def test_pooler_only_keys_metrics_host_and_client_max_buffer() -> None:
    config = ok(conf(top='promhttp_server_host "127.0.0.1, ::1"\nclient_max_buffer 8MB'))
    assert config.promhttp_server_host == "127.0.0.1, ::1"
    assert config.client_max_buffer == 8 * 1024 * 1024
    default = ok(conf())
    assert default.promhttp_server_host is None and default.client_max_buffer == 4 << 20
    assert "between 65536 and 1073741824" in one_error(conf(top="client_max_buffer 1000"))


def test_global_validation_errors_are_collected() -> None:
    text = (
        'unix_socket_dir "/tmp"\nresolvers 0\ncoroutine_stack_size 2\n' + BASE_LISTEN + BASE_STORAGE
    )
    found = errors(text)
    joined = "\n".join(found)
    for cause in (
        "unix_socket_mode is not set",
        "bad resolvers number",
        "bad coroutine_stack_size number",
        "log_format is not defined",
        "no rules defined",
    ):
        assert cause in joined


# ---------------------------------------------------------------- listen


def test_listen_keys_and_defaults() -> None:
    c = ok(
        conf(
            listen='backlog 64 client_login_timeout 5 tls "require" tls_ca_file "ca" '
            'tls_key_file "k" tls_cert_file "c" tls_protocols "tlsv1.2" '
            'target_session_attrs "read-write" catchup_timeout 3 balancing_method "leastconn" '
            'storage "pg" storage "pg"'
        )
    )
    listen = c.listens[0]
    assert (listen.host, listen.port, listen.backlog, listen.client_login_timeout) == (
        "*",
        6432,
        64,
        5,
    )
    assert listen.tls == "require" and listen.tls_protocols == "tlsv1.2"
    assert listen.storage == ("pg", "pg") and listen.balancing_method == "leastconn"
    assert ok(conf()).listens[0].backlog == 128


def test_listen_port_defaults_to_6432_unless_strict() -> None:
    text = (
        BASE_TOP
        + 'listen { host "*" }\n'
        + BASE_STORAGE
        + conf().split(BASE_STORAGE.split("\n")[0])[0][0:0]
    )
    text = conf().replace("    port 6432\n", "", 1)
    assert ok(text).listens[0].port == 6432
    assert "listen section is missing 'port'" in one_error(text, strict=True)


def test_listen_errors() -> None:
    assert "unknown tls mode 'x'" in one_error(conf(listen='tls "x"'))
    assert "can't parse target session attrs" in one_error(conf(listen='target_session_attrs "x"'))
    assert "unknown storage 'nope'" in one_error(conf(listen='storage "nope"'))
    text = conf().replace('host "*"\n', "", 1)
    assert "listen host is not set and no unix_socket_dir is specified" in one_error(text)
    assert "between 1 and 65535" in one_error(conf().replace("port 6432", "port 70000"))
    assert "no listen sections defined" in one_error(BASE_TOP + BASE_STORAGE)


def test_listen_unix_socket() -> None:
    text = conf(top='unix_socket_dir "/tmp"\nunix_socket_mode "0644"').replace('host "*"\n', "", 1)
    assert ok(text).listens[0].host is None


# ---------------------------------------------------------------- storage


def test_storage_keys_and_endpoints() -> None:
    c = ok(
        conf(
            storage='tls "verify_full" tls_ca_file "ca" server_max_routing 4 '
            "endpoints_status_poll_interval 500 "
            'balancing { method "leastconn" { az_aware no } show_notice_messages yes } '
            'watchdog { authentication "none" storage "pg" pool "transaction" '
            'pool_routing "internal" watchdog_lag_query "select 1" watchdog_lag_interval 10 }'
        ).replace('host "127.0.0.1"', 'host "h1:5433,[::1]:5434:az1,h3:az2"')
    )
    s = c.storage("pg")
    assert s is not None and c.storage("nope") is None
    assert [(e.host, e.port, e.availability_zone) for e in s.endpoints] == [
        ("h1", 5433, None),
        ("::1", 5434, "az1"),
        ("h3", 5432, "az2"),
    ]
    assert s.tls == "verify_full" and s.server_max_routing == 4
    assert s.balancing_method == "leastconn" and s.balancing_az_aware is False
    assert s.show_notice_messages is True
    assert s.watchdog is not None and s.watchdog.watchdog_lag_interval == 10
    assert s.watchdog.name == "watchdog_int.watchdog_int"


def test_storage_port_default_and_unix_socket() -> None:
    text = conf(top='unix_socket_dir "/var/run"\nunix_socket_mode "0700"').replace(
        '    host "127.0.0.1"\n    port 5432\n', ""
    )
    s = ok(text).storages[0]
    assert s.port == 5432 and s.host is None
    assert s.endpoints[0].host is None
    assert s.endpoints[0].unix_socket_path == "/var/run/.s.PGSQL.5432"


def test_storage_errors() -> None:
    assert "storage 'pg': unknown type 'x'" in one_error(conf().replace('"remote"', '"x"', 1))
    assert "storage 'pg': no type is specified" in one_error(conf().replace('type "remote"', ""))
    assert "unknown storage tls mode 'x'" in one_error(conf(storage='tls "x"'))
    assert "duplicate storage definition 'pg'" in one_error(conf() + BASE_STORAGE)
    assert "not implemented balancing method" in one_error(
        conf(storage='balancing { method "weighted" { } }')
    )
    assert "bad port" in one_error(conf().replace('"127.0.0.1"', '"h:5x"'))
    second = 'storage "other" { type "remote" host "h" watchdog { authentication "none" storage "pg" pool "session" } }\n'
    dup = conf(storage='watchdog { authentication "none" storage "pg" pool "session" }') + second
    assert "is redefined" in one_error(dup)


def test_local_storage_console_rule() -> None:
    rules = (
        'storage "local" { type "local" }\n'
        'database "console" { user default { authentication "none" role "admin" '
        'storage "local" pool "session" } }\n'
    )
    c = ok(conf(rules=rules))
    assert c.rules[0].role == "admin" and c.storage("local").type == "local"


# ---------------------------------------------------------------- routes


def test_route_defaults() -> None:
    r = ok(conf()).rules[0]
    assert r.pool_size == 0 and r.pool_timeout == 0 and r.pool_discard is True
    assert r.pool_reserve_prepared_statement is True and r.client_show_id is True
    assert r.server_lifetime == 3600 and r.pool_reset_timeout_ms == 1000
    assert r.pool_routing == "client_visible" and r.client_max is None
    assert (r.db_name, r.user_name, r.name) == ("db", "u", "db.u")


def test_every_route_key_parses() -> None:
    parts = []
    for key in kw.ROUTE_BOOL:
        parts.append(f"{key} no")
    skip = {
        "authentication",
        "storage",
        "pool",
        "role",
        "pool_routing",
        "shared_pool",
        "ldap_endpoint_name",
        "target_session_attrs",
        "quantiles",
        "group_query",
        "group_query_user",
        "group_query_db",
        "watchdog_lag_query",
        "auth_query",
        "auth_pam_service",
        "ldap_storage_credentials_attr",
    }
    for key in kw.ROUTE_STR:
        if key not in skip:
            parts.append(f'{key} "v"')
    for key in kw.ROUTE_INT:
        if key not in ("watchdog_lag_interval", "pool_notice_after_waiting_ms"):
            parts.append(f"{key} 7")
    parts.append('target_session_attrs "read-only" quantiles "0.5,0.99"')
    parts.append('auth_common_name default auth_common_name "cn1"')
    parts.append('options { "search_path" "s" "a" "b" } backend_startup_options { "x" "y" }')
    r = ok(conf(route=" ".join(parts))).rules[0]
    assert r.pool_size == 7 and r.pool_discard is False and r.password == "v"
    assert r.auth_common_name == ("cn1",) and r.auth_common_name_default is True
    assert r.options == (("search_path", "s"), ("a", "b")) and r.backend_startup_options == (
        ("x", "y"),
    )
    assert r.keepalive == 7 and r.client_max == 7


def test_wildcards_and_groups() -> None:
    rules = (
        'database default { user default { authentication "none" storage "pg" pool "session" } }\n'
        'database "db" { group "g1" { authentication "none" storage "pg" pool "session" '
        'group_query "select 1" group_query_user "u" group_query_db "d" } }\n'
    )
    c = ok(conf(rules=rules))
    wild, group = c.rules
    assert (wild.db_name, wild.user_name) == ("default_db", "default_user")
    assert group.group and group.user == "g1" and group.user_name == "group_g1"
    assert [r.order for r in c.rules] == [0, 1]


@pytest.mark.parametrize(
    ("route", "cause"),
    [
        ('password "x"', None),
        ("", "password is not set"),
    ],
)
def test_md5_needs_password(route: str, cause: str | None) -> None:
    text = conf(route=route).replace('authentication "none"', 'authentication "md5"')
    if cause is None:
        ok(text)
    else:
        assert cause in one_error(text)


@pytest.mark.parametrize(
    ("route", "cause"),
    [
        ('pool_routing "x"', "unknown pool routing mode 'x'"),
        ('role "admin"', "role set for non-local storage"),
        ('role "client"', "expected role"),
        ('auth_query "select"', "auth_query_user is not set"),
        ('auth_query "select" auth_query_user "u"', "auth_query_db is not set"),
        ('shared_pool "nope"', "unknown shared_pool 'nope'"),
        ('ldap_endpoint_name "nope"', "unknown ldap_endpoint 'nope'"),
        (
            "pool_smart_discard yes pool_reserve_prepared_statement no",
            "pool smart discard is forbidden",
        ),
        ('quantiles "2"', "can't parse quantiles"),
        ('target_session_attrs "x"', "can't parse target session attrs"),
        ('group_query "x"', None),
    ],
)
def test_route_validation(route: str, cause: str | None) -> None:
    if cause is None:
        config = ok(conf(route=route))
        assert any("not allowed outside group" in str(w) for w in config.warnings)
        assert "not allowed outside group" in one_error(conf(route=route), strict=True)
    else:
        assert cause in one_error(conf(route=route))


def test_route_messages_name_the_rule_and_position() -> None:
    text = conf(route='pool "x"').replace('pool "transaction"\n', "")
    message = one_error(text)
    assert "rule 'db.u all': unknown pooling mode 'x'" in message
    assert message.startswith("<text>:")


def test_internal_rule_with_address() -> None:
    text = conf(route='pool_routing "internal"', selector='"10.0.0.0/8"')
    assert "internal rules must have default address_range" in one_error(text)


def test_several_semantic_errors_reported_together() -> None:
    rules = (
        'database "a" { user "x" { storage "nope" pool "session" authentication "none" } '
        'user "y" { storage "pg" pool "bad" authentication "none" } }\n'
    )
    found = errors(conf(rules=rules))
    assert len(found) == 2
    assert "no rule storage 'nope' found" in found[0] and "unknown pooling mode" in found[1]


def test_duplicate_user_block_first_wins() -> None:
    rules = (
        'database "db" { user "u" { authentication "none" storage "pg" pool "session" } '
        'user "u" { authentication "none" storage "pg" pool "transaction" } }\n'
    )
    for strict in (False, True):
        c = ok(conf(rules=rules), strict=strict)
        assert len(c.rules) == 1 and c.rules[0].pool == "session"
        assert any("is redefined" in str(w) for w in c.warnings)


def test_internal_and_client_visible_rule_for_one_user_are_both_kept() -> None:
    rules = (
        'database "db" { user "u" { authentication "none" storage "pg" pool "session" '
        'pool_routing "internal" } '
        'user "u" { authentication "none" storage "pg" pool "transaction" } }\n'
    )
    for strict in (False, True):
        c = ok(conf(rules=rules), strict=strict)
        assert [(r.pool_routing, r.pool) for r in c.rules] == [
            ("internal", "session"),
            ("client_visible", "transaction"),
        ]
        assert not any("is redefined" in str(w) for w in c.warnings)


def test_databases_accumulate() -> None:
    rules = (
        'database "db" { user "a" { authentication "none" storage "pg" pool "session" } }\n'
        'database "db" { user "b" { authentication "none" storage "pg" pool "session" } }\n'
    )
    assert [r.name for r in ok(conf(rules=rules)).rules] == ["db.a", "db.b"]


# ---------------------------------------------------------------- other blocks


def test_ldap_shared_pool_conn_drop_query_parsing() -> None:
    top = (
        'ldap_endpoint "l" { ldapserver "s" ldapport 389 ldapbasedn "dc=x" ldapscheme "ldap" }\n'
        'shared_pool "sp" { pool_size 10 }\n'
        "conn_drop_options { drop_enabled no rate 5 interval_ms 100 }\n"
        "query_parsing { mode disabled }\n"
    )
    route = 'shared_pool "sp" ldap_endpoint_name "l" ldap_storage_credentials_attr "a" '
    route += 'ldap_storage_credentials "c" { ldap_storage_username "u" ldap_storage_password "p" }'
    c = ok(conf(top=top, route=route.replace('authentication "none"', "")))
    assert c.ldap_endpoint("l").ldapport == 389 and c.shared_pool("sp").pool_size == 10
    assert c.conn_drop_options.rate == 5 and c.conn_drop_options.drop_enabled is False
    assert c.query_parsing.mode == "disabled"
    assert c.rules[0].ldap_storage_credentials[0].ldap_storage_username == "u"


def test_other_block_errors() -> None:
    assert "pool_size is required in shared_pool 'sp'" in one_error(
        conf(top='shared_pool "sp" { }')
    )
    assert "pool_size must be positive" in one_error(conf(top='shared_pool "sp" { pool_size 0 }'))
    assert "full mode of query parsing" in one_error(conf(top="query_parsing { mode full }"))
    assert "soft_oom: limit is required" in one_error(conf(top='soft_oom { process "p" }'))
    assert "soft_oom is redefined" in one_error(
        conf(top="soft_oom { limit 1 } soft_oom { limit 1 }")
    )
    assert "ldapserver is not set" in one_error(conf(top='ldap_endpoint "l" { }'))
    twice = "conn_drop_options { rate 2 } online_restart_drop_options { interval_ms 9 }"
    c = ok(conf(top=twice))
    assert (c.conn_drop_options.rate, c.conn_drop_options.interval_ms) == (2, 9)
    assert "conn_drop_options is redefined" in one_error(conf(top=twice), strict=True)


def test_ldap_needs_big_coroutine_stack() -> None:
    top = 'coroutine_stack_size 8\nldap_endpoint "l" { ldapserver "s" }\n'
    text = conf(top=top, route='ldap_endpoint_name "l"')
    assert "use ldap_endpoint. coroutine_stack_size must be >= 16" in one_error(text)


# ---------------------------------------------------------------- did you mean


def test_did_you_mean_in_context() -> None:
    message = one_error(conf(route="pool_sise 10"))
    assert "unknown parameter 'pool_sise'" in message
    assert "did you mean 'pool_size'?" in message
    assert message.startswith("<text>:")


def test_did_you_mean_top_level_and_listen() -> None:
    assert "did you mean 'daemonize'?" in one_error(conf(top="deamonize yes"))
    assert "did you mean 'backlog'?" in one_error(conf(listen="backlg 1"))
    assert "did you mean" not in one_error(conf(top="zzzzzzzz 1"))


# ---------------------------------------------------------------- include


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_include_relative_to_including_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir("/")
    _write(tmp_path / "sub" / "storage.conf", BASE_STORAGE)
    main = _write(
        tmp_path / "main.conf",
        conf().replace(BASE_STORAGE.split("{")[0], 'storage "unused" ')
        + '\ninclude "sub/storage.conf"\n',
    )
    c = load(main)
    assert {s.name for s in c.storages} == {"pg", "unused"}
    assert str(tmp_path / "sub" / "storage.conf") in c.includes
    assert c.storage("pg").pos.file.endswith("storage.conf")


def test_include_working_directory_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "cwd").mkdir()
    _write(tmp_path / "cwd" / "extra.conf", "log_debug yes\n")
    _write(tmp_path / "conf" / "extra.conf", "log_debug no\n")
    main = _write(tmp_path / "conf" / "main.conf", conf() + 'include "extra.conf"\n')
    monkeypatch.chdir(tmp_path / "cwd")
    assert load(main).log_debug is True
    monkeypatch.chdir(tmp_path)
    assert load(main).log_debug is False


def test_include_nested_and_missing(tmp_path: Path) -> None:
    _write(tmp_path / "a.conf", f'include "{tmp_path}/b.conf"\n')
    _write(tmp_path / "b.conf", "log_query yes\n")
    main = _write(tmp_path / "main.conf", conf() + f'include "{tmp_path}/a.conf"\n')
    assert load(main).log_query is True
    bad = _write(tmp_path / "bad.conf", conf() + '\ninclude "/nonexistent/x.conf"\n')
    with pytest.raises(ConfigError) as excinfo:
        load(bad)
    first = str(excinfo.value.diagnostics[0])
    assert first.startswith(f"{bad}:")
    assert "failed to open config file '/nonexistent/x.conf': No such file or directory" in first


def test_include_syntax_error_points_into_included_file(tmp_path: Path) -> None:
    inc = _write(tmp_path / "inc.conf", "\n\nlog_debug maybe\n")
    main = _write(tmp_path / "main.conf", conf() + f'include "{inc}"\n')
    with pytest.raises(ConfigError) as excinfo:
        load(main)
    assert str(excinfo.value.diagnostics[0]).startswith(f"{inc}:3:11:")


def test_include_depth_limit(tmp_path: Path) -> None:
    loop = _write(tmp_path / "loop.conf", f'include "{tmp_path}/loop.conf"\n')
    main = _write(tmp_path / "main.conf", conf() + f'include "{loop}"\n')
    with pytest.raises(ConfigError) as excinfo:
        load(main)
    assert any("include depth limit (16) exceeded" in str(d) for d in excinfo.value.diagnostics)


def test_include_duplicates_across_files(tmp_path: Path) -> None:
    inc = _write(tmp_path / "inc.conf", "log_debug yes\n")
    main = _write(tmp_path / "main.conf", conf(top="log_debug no") + f'include "{inc}"\n')
    assert load(main).log_debug is True
    with pytest.raises(ConfigError, match="duplicate option 'log_debug'"):
        load(main, strict=True)


# ---------------------------------------------------------------- hba_file


def test_hba_file(tmp_path: Path) -> None:
    hba = _write(
        tmp_path / "hba.conf",
        "# comment\nlocal all all allow\nhost db u1,u2 10.0.0.0 255.0.0.0 deny\n",
    )
    c = ok(conf(top=f'hba_file "{hba}"'))
    assert len(c.hba_rules) == 2
    assert c.hba_rules[1].users == ("u1", "u2") and c.hba_rules[1].address == "10.0.0.0/8"
    assert not c.hba_rules[1].allows


def test_hba_file_errors(tmp_path: Path) -> None:
    hba = _write(tmp_path / "hba.conf", "local all all maybe\n")
    message = one_error(conf(top=f'hba_file "{hba}"'))
    assert f"{hba}:1:1: unknown auth method 'maybe'" in message
    message = one_error(conf(top='hba_file "/nonexistent/hba"'))
    assert "failed to open hba file '/nonexistent/hba'" in message


# ---------------------------------------------------------------- bad files


def test_bad_files_give_one_line(tmp_path: Path) -> None:
    cases = {
        tmp_path / "missing.conf": "No such file or directory",
        tmp_path: "is a directory",
        _write(tmp_path / "empty.conf", ""): "config file is empty",
        _write(tmp_path / "blank.conf", "  \n"): "config file is empty",
    }
    bad = tmp_path / "latin1.conf"
    bad.write_bytes(b'pid_file "caf\xe9"\n')
    cases[bad] = "1:14: config file is not valid UTF-8"
    for path, text in cases.items():
        with pytest.raises(ConfigError) as excinfo:
            load(path)
        assert len(excinfo.value.diagnostics) == 1
        line = str(excinfo.value.diagnostics[0])
        assert "\n" not in line and text in line and str(path) in line


def test_str_of_diagnostics() -> None:
    from pooler.config import Diagnostic, Pos

    assert str(Diagnostic(Pos("f", 1, 2), "m")) == "f:1:2: m"
    assert str(Diagnostic(Pos("f", 1, 2), "m", "warning")) == "f:1:2: warning: m"
    assert str(Diagnostic(None, "m")) == "m"
    assert str(Diagnostic(None, "m", file="f")) == "f: m"


def test_parse_text_uses_path_in_messages() -> None:
    with pytest.raises(ConfigError) as excinfo:
        parse_text("log_debug maybe", "my.conf")
    assert str(excinfo.value.diagnostics[0]).startswith("my.conf:1:11:")


def test_model_is_frozen() -> None:
    c = ok(conf())
    assert isinstance(c, Config) and isinstance(c.rules[0], Rule)
    with pytest.raises(AttributeError):
        c.rules[0].pool_size = 3  # type: ignore[misc]
    assert os.cpu_count()


def test_soft_oom_drop_block_enables_dropping() -> None:
    dropping = ok(conf(top="soft_oom { limit 1GB drop { } }")).soft_oom
    assert dropping is not None and dropping.drop
    measuring = ok(conf(top="soft_oom { limit 1GB }")).soft_oom
    assert measuring is not None and not measuring.drop
