"""`pooler check` output for broken configs (issue 17): every syntax error with file:line:col,
the block it is in, the token as written, the `{` a missing `}` belongs to, did-you-mean."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner
from helpers_config import conf, errors, ok
from hypothesis import given, settings, strategies as st

from pooler.cli import main
from pooler.config import ConfigError, parse_text


def check(tmp_path: Path, text: str) -> tuple[int, list[str]]:
    path = tmp_path / "pooler.conf"
    path.write_text(text)
    result = CliRunner().invoke(main, ["check", str(path)])
    lines = [line.replace(f"{path}:", "F:") for line in result.output.splitlines()]
    return result.exit_code, lines


def test_a_bad_number_names_the_key_the_token_and_the_block(tmp_path: Path) -> None:
    code, lines = check(tmp_path, conf(route="pool_size 3x"))
    assert code == 1
    assert lines == [
        'F:19:19: expected a number for pool_size, found \'3x\' (in user "u" of database "db")'
    ]


def test_an_unknown_key_after_a_number_is_in_its_block_not_at_top_level(tmp_path: Path) -> None:
    _, lines = check(tmp_path, conf(route="pool_size 3\n        bogus 4"))
    assert lines == ['F:20:9: unknown parameter \'bogus\' in user "u" of database "db"']
    _, lines = check(tmp_path, conf(route="pool_size 3\n        pool_sise 4"))
    assert lines == [
        'F:20:9: unknown parameter \'pool_sise\' in user "u" of database "db"; '
        "did you mean 'pool_size'?"
    ]


def test_an_unclosed_block_names_the_line_of_its_brace(tmp_path: Path) -> None:
    text = conf().replace("    port 6432\n    \n}\n", "    port 6432\n\n", 1)
    assert text.startswith('log_format "%p %t %l [%i %s] (%c) %m\\n"\n\nlisten {\n')
    _, lines = check(tmp_path, text)
    assert lines == ["F:3:8: '{' of listen is never closed: missing '}' before line 7"]
    _, lines = check(tmp_path, conf() + 'database "other" {\n    user "u" {\n')
    assert lines == [
        "F:23:14: '{' of user \"u\" is never closed: missing '}' before end of file",
        "F:22:18: '{' of database \"other\" is never closed: missing '}' before end of file",
    ]


def test_every_syntax_error_is_reported(tmp_path: Path) -> None:
    text = conf(
        top="workers 2x\nbogus_key 1\nstats_interval yes",
        listen="backlg 1",
        storage='tls disable\n    port "5432"',
        route='pool_size 10\n        pool_timeout x\n        options { "a" }\n        client_max 5',
    )
    code, lines = check(tmp_path, text)
    assert code == 1
    assert lines == [
        "F:2:9: expected a number or a string for workers, found '2x'",
        "F:3:1: unknown parameter 'bogus_key' at top level",
        "F:4:16: expected a number for stats_interval, found 'yes'",
        "F:8:5: unknown parameter 'backlg' in listen; did you mean 'backlog'?",
        "F:14:9: expected a string for tls, found 'disable' "
        '(strings must be double-quoted: "disable") (in storage "pg")',
        'F:15:10: expected a number for port, found "5432" (in storage "pg")',
        'F:23:22: expected a number for pool_timeout, found \'x\' (in user "u" of database "db")',
        'F:24:23: expected a string for "a", found \'}\' (in options of user "u")',
    ]


def test_lexical_errors_do_not_stop_the_parse() -> None:
    found = errors(conf(top="log_debug yes;\nbogus 1"))
    assert found == [
        "<text>:2:14: unexpected character ';'",
        "<text>:3:1: unknown parameter 'bogus' at top level",
    ]


def test_did_you_mean_for_modes_and_storage_names() -> None:
    found = errors(
        conf(listen='tls "requir"', route='pool "transactoin"').replace(
            'storage "pg"\n        pool', 'storage "pgg"\n        pool'
        )
    )
    assert "unknown tls mode 'requir'; did you mean 'require'?" in "\n".join(found)
    assert "no rule storage 'pgg' found; did you mean 'pg'?" in "\n".join(found)
    assert "unknown pooling mode 'transactoin'; did you mean 'transaction'?" in "\n".join(found)
    storage_tls = errors(conf(storage='tls "verify_fll"'))
    assert "unknown storage tls mode 'verify_fll'; did you mean 'verify_full'?" in storage_tls[0]


def test_a_valid_config_still_parses() -> None:
    assert ok(conf(route="pool_size 3")).rules[0].pool_size == 3


def test_config_is_optional_in_the_help_of_demo_tui_and_reload() -> None:
    for command in ("demo", "tui", "reload"):
        result = CliRunner().invoke(main, [command, "--help"])
        assert result.exit_code == 0
        assert f"Usage: main {command} [OPTIONS] [CONFIG]" in result.output, result.output
    assert (
        "Usage: main check [OPTIONS] CONFIG\n" in CliRunner().invoke(main, ["check", "-h"]).output
    )


_WORDS = [
    "listen", "storage", "database", "user", "default", "pool_size", "host", "port", "{", "}",
    '"x"', '"pg"', "3", "3x", "yes", "bogus", "\n", "\n  ", "options", "pool", ";", '"open',
    "watchdog", "balancing", "method", "soft_oom", "drop", "load_module", "include",
]  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(_WORDS), max_size=60), st.integers(0, 400))
def test_any_token_soup_gives_positioned_errors_not_a_crash(words: list[str], at: int) -> None:
    """The recovering parser ends on any input, alone or spliced into a valid config, and
    every error it reports has a position."""
    for text in (" ".join(words), conf()[:at] + " ".join(words) + conf()[at:]):
        try:
            parse_text(text)
        except ConfigError as exc:
            for d in exc.diagnostics:
                assert d.pos is not None and d.pos.line >= 1 and d.pos.column >= 1, str(d)
