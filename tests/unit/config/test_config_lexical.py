"""Lexical rules (odyssey.md §1.1) and the tricky cases of grammar-notes §7, both dialects."""

from __future__ import annotations

import os

import pytest
from helpers_config import conf, errors, ok, one_error


def top(text: str, *, strict: bool = False):
    return ok(conf(top=text), strict=strict)


# ---------------------------------------------------------------- whitespace, comments


def test_newlines_are_insignificant() -> None:
    text = (
        'log_format "x" listen { host "*" port 6432 } storage "pg" { type "remote" '
        'host "h" } database default { user default { authentication "none" '
        'storage "pg" pool "session" } }'
    )
    config = ok(text)
    assert config.rules[0].database is None and config.rules[0].user is None


@pytest.mark.parametrize("strict", [False, True])
def test_comments_anywhere(strict: bool) -> None:
    config = top("log_debug no # comment\nlog_query yes#c\n# whole line\n", strict=strict)
    assert config.log_debug is False and config.log_query is True


@pytest.mark.parametrize("strict", [False, True])
def test_hash_inside_string(strict: bool) -> None:
    assert top('pid_file "/run/a#b.pid"', strict=strict).pid_file == "/run/a#b.pid"


def test_form_feed_is_whitespace_only_in_default_dialect() -> None:
    assert top("log_debug\fyes").log_debug is True
    assert "unexpected character '\\x0c'" in one_error(conf(top="log_debug\fyes"), strict=True)


def test_crlf_and_tabs() -> None:
    assert top("log_debug\tyes\r\n").log_debug is True


def test_unexpected_character_has_position() -> None:
    message = one_error(conf(top="log_debug no;"))
    assert message.startswith("<text>:2:13: unexpected character ';'")


@pytest.mark.parametrize("bad", ["log_debug = no", "pid_file '/x'", "priority +1", "priority - 1"])
def test_punctuation_is_rejected(bad: str) -> None:
    for strict in (False, True):
        assert "unexpected" in one_error(conf(top=bad), strict=strict)


# ---------------------------------------------------------------- strings


def test_bare_word_where_string_expected() -> None:
    message = one_error(conf(top="pid_file /x"))
    assert "unexpected character '/'" in message
    message = one_error(conf(listen="tls disable"))
    assert "expected a string for" in message and '"disable"' in message


def test_escaped_quote_default_keeps_raw_text() -> None:
    assert top(r'pid_file "a\"b"').pid_file == r"a\"b"


def test_escaped_quote_strict_unescapes() -> None:
    assert top(r'pid_file "a\"b"', strict=True).pid_file == 'a"b'


def test_other_backslashes_are_kept() -> None:
    config = ok(conf().replace('"%p %t %l [%i %s] (%c) %m\\n"', r'"%m\n\t"'))
    assert config.log_format == r"%m\n\t"


def test_trailing_backslash() -> None:
    # legacy: backslash escapes backslash, the string closes
    assert top(r'pid_file "C:\\"').pid_file == "C:\\\\"
    # HEAD: the final \" is an escaped quote, the string runs on -> error later
    assert errors(conf(top='pid_file "C:\\"\nlog_debug no'), strict=True)


@pytest.mark.parametrize("strict", [False, True])
def test_newline_inside_string(strict: bool) -> None:
    assert top('pid_file "a\nb"', strict=strict).pid_file == "a\nb"


def test_unterminated_string() -> None:
    assert "unterminated string" in one_error(conf() + '\npid_file "abc')


def test_non_ascii_inside_strings() -> None:
    assert top('pid_file "/tmp/ü.pid"').pid_file == "/tmp/ü.pid"


# ---------------------------------------------------------------- numbers and sizes


def test_numbers() -> None:
    config = top("priority 010\nkeepalive_usr_timeout -1")
    assert config.priority == 10 and config.keepalive_usr_timeout == -1


def test_number_followed_by_letters() -> None:
    assert one_error(conf(top="priority 5x")).endswith("expected a number for priority, found '5x'")
    assert "expected a number for readahead, found '10ms'" in one_error(conf(top="readahead 10ms"))


@pytest.mark.parametrize(
    ("text", "value"), [("8KB", 8192), ("8kb", 8192), ("1Mb", 1024**2), ("2b", 2)]
)
def test_legacy_size_suffix_on_any_number(text: str, value: int) -> None:
    assert top(f"readahead {text}").readahead == value


def test_size_suffix_errors() -> None:
    assert "size suffixes are B, KB, MB, GB" in one_error(conf(top="readahead 8K"))
    assert "expected 'number'" in one_error(conf(top="readahead 8KB"), strict=True)
    assert "expected 'number'" in one_error(conf(route="pool_timeout 1KB"), strict=True)
    assert ok(conf(route="pool_timeout 1KB")).rules[0].pool_timeout == 1024


@pytest.mark.parametrize("strict", [False, True])
def test_sizes_for_limit_and_mem_limit(strict: bool) -> None:
    config = top(
        'soft_oom { limit 2GB process "postgres" drop { signal "SIGTERM" max_rate 5 } }\n'
        "query_parsing { mode minimal mem_limit 8M }",
        strict=strict,
    )
    assert config.soft_oom is not None and config.soft_oom.limit == 2 * 1024**3
    assert config.soft_oom.max_rate == 5 and config.soft_oom.signal == "SIGTERM"
    assert config.query_parsing.mem_limit == 8 * 1024**2


def test_int_range() -> None:
    assert "out of int range" in one_error(conf(top="client_max 99999999999"))


def test_non_negative_rules() -> None:
    assert "pool_size must be non-negative" in one_error(conf(route="pool_size -1"), strict=True)
    config = ok(conf(route="pool_size -1"))
    assert any("pool_size must be non-negative" in str(w) for w in config.warnings)


# ---------------------------------------------------------------- keywords and booleans


def test_keywords_case_insensitive_by_default() -> None:
    config = top("DAEMONIZE YES\nLog_Debug Yes")
    assert config.daemonize is True and config.log_debug is True


def test_keywords_case_sensitive_in_strict() -> None:
    message = one_error(conf(top="log_debug YES"), strict=True)
    assert "<text>:2:11:" in message and "expected yes or no for log_debug" in message
    message = one_error(conf(top="DAEMONIZE yes"), strict=True)
    assert "unknown parameter 'DAEMONIZE'" in message and "case-sensitive" in message


@pytest.mark.parametrize("value", ["on", "true", "1", '"yes"'])
def test_only_yes_no_are_booleans(value: str) -> None:
    for strict in (False, True):
        assert "expected yes or no for log_debug" in one_error(
            conf(top=f"log_debug {value}"), strict=strict
        )


def test_keyword_prefix_is_not_matched() -> None:
    # `cache` vs `cache_coroutine`, `pool` vs `pool_size`
    config = top("cache_coroutine 10")
    assert config.cache_coroutine == 10
    assert ok(conf(route="pool_size 3")).rules[0].pool_size == 3


def test_leading_underscore_word() -> None:
    assert "unknown parameter '_x'" in one_error(conf(top="_x 1"))


# ---------------------------------------------------------------- duplicates


def test_duplicate_scalar_last_wins_with_warning() -> None:
    config = top("log_debug no\nlog_debug yes")
    assert config.log_debug is True
    assert any(
        "duplicate option 'log_debug'" in str(w) and "warning" in str(w) for w in config.warnings
    )


def test_duplicate_scalar_is_error_in_strict() -> None:
    assert "duplicate option 'log_debug'" in one_error(
        conf(top="log_debug no\nlog_debug yes"), strict=True
    )


# ---------------------------------------------------------------- workers


@pytest.mark.parametrize(
    ("value", "strict"), [('"auto"', False), ('"auto"', True), ('"au"', False), ('""', False)]
)
def test_workers_auto(value: str, strict: bool) -> None:
    config = top(f"workers {value}", strict=strict)
    assert config.workers_auto and config.workers >= 1


@pytest.mark.parametrize(("ncpu", "workers"), [(1, 1), (2, 1), (3, 2), (4, 2), (8, 4), (9, 5)])
def test_workers_auto_is_half_the_cpus_as_odyssey(
    monkeypatch: pytest.MonkeyPatch, ncpu: int, workers: int
) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: ncpu)
    assert top('workers "auto"').workers == workers  # odyssey.md §1.4: (ncpu+1)/2


def test_workers_prefix_of_auto_is_error_in_strict() -> None:
    assert "is invalid value for workers" in one_error(conf(top='workers "au"'), strict=True)


def test_workers_number() -> None:
    assert top("workers 4").workers == 4
    assert "bad workers number" in one_error(conf(top="workers 0"))


# ---------------------------------------------------------------- selectors


@pytest.mark.parametrize(
    ("selector", "address", "conn_type"),
    [
        ("", None, "default"),
        ('"10.0.0.0/8"', "10.0.0.0/8", "default"),
        ("hostssl", None, "hostssl"),
        ('"10.0.0.0/8" hostssl', "10.0.0.0/8", "hostssl"),
        ('hostssl "10.0.0.0/8"', "10.0.0.0/8", "hostssl"),
        ("default", None, "default"),
        ('default "1.2.3.4/32"', "1.2.3.4/32", "default"),
        ('"localhost"', "localhost", "default"),
        ('".example.com" local', ".example.com", "local"),
    ],
)
def test_selectors_both_dialects(selector: str, address: str | None, conn_type: str) -> None:
    for strict in (False, True):
        rule = ok(conf(selector=selector), strict=strict).rules[0]
        assert (rule.address, rule.conn_type) == (address, conn_type)


def test_legacy_only_selector_default_host() -> None:
    rule = ok(conf(selector="default host")).rules[0]
    assert (rule.address, rule.conn_type) == (None, "host")
    assert errors(conf(selector="default host"), strict=True)


def test_user_default_default() -> None:
    text = conf().replace('user "u"', "user default default")
    rule = ok(text).rules[0]
    assert rule.user is None and rule.conn_type == "default"
    assert ok(text, strict=True).rules[0].user is None


@pytest.mark.parametrize("selector", ['"a/8" "b/8"', "host local", '"10.0.0.0/8" host default'])
def test_bad_selectors(selector: str) -> None:
    assert "redefinition of" in one_error(conf(selector=selector))


def test_address_checks() -> None:
    assert "expected network mask in '10.0.0.1'" in one_error(conf(selector='"10.0.0.1"'))
    assert "invalid address or hostname" in one_error(conf(selector='"10.0.0.0/99"'))
    assert "invalid address or hostname" in one_error(conf(selector='"bad_host!"'))


def test_quoted_default_is_a_name() -> None:
    text = conf().replace('database "db"', 'database "default"')
    assert ok(text).rules[0].database == "default"


# ---------------------------------------------------------------- misplaced items


def test_key_in_wrong_block() -> None:
    message = one_error(conf(route="port 1"))
    assert "unexpected parameter 'port'" in message and "valid in: listen, storage" in message


def test_include_inside_block() -> None:
    assert "unexpected parameter 'include'" in one_error(conf(route='include "x"'))


def test_options_odd_count() -> None:
    assert "expected a string for" in one_error(conf(route='options { "search_path" }'))


def test_unquoted_signal() -> None:
    text = conf(top="soft_oom { limit 1GB drop { signal SIGTERM } }")
    assert "expected a string for" in one_error(text)


def test_missing_closing_brace_reports_end_of_file() -> None:
    message = one_error(conf() + "listen {")
    assert "end of file" in message


def test_load_module_legacy_only() -> None:
    config = top('load_module "mod.so" { anything 1 "x" yes }')
    assert config.load_modules == ("mod.so",)
    assert any("load_module" in str(w) for w in config.warnings)
    assert "load_module" in one_error(conf(top='load_module "m" { }'), strict=True)
