"""diff() and the `pooler check` / `serve --test` command line."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner
from helpers_config import conf, ok

from pooler.cli import main
from pooler.config import Change, diff


def texts(changes: list[Change]) -> list[str]:
    return [c.text for c in changes]


def test_no_changes() -> None:
    assert diff(ok(conf()), ok(conf())) == []


def test_route_key_change_is_live() -> None:
    changes = diff(ok(conf(route="pool_size 30")), ok(conf(route="pool_size 40")))
    assert changes == [Change('route "db"."u": pool_size 30 -> 40', False)]


def test_route_added_removed() -> None:
    old = ok(conf())
    new = ok(conf().replace('user "u"', 'user default "10.0.0.0/8" hostssl'))
    assert texts(diff(old, new)) == [
        'route "db"."default_user" 10.0.0.0/8 hostssl added',
        'route "db"."u" removed',
    ]


def test_storage_change_is_live_and_hides_passwords() -> None:
    old = ok(conf(route='storage_password "a"'))
    new = ok(conf(route='storage_password "b"').replace('"127.0.0.1"', '"10.0.0.1"'))
    changes = diff(old, new)
    assert Change('storage "pg": host "127.0.0.1" -> "10.0.0.1"', False) in changes
    assert Change('route "db"."u": storage_password changed', False) in changes
    assert all('"b"' not in c.text for c in changes)


def test_restart_required_changes() -> None:
    old = ok(conf())
    new = ok(
        conf(top='workers 4\npid_file "/run/p"\nlog_file "/log"\ndaemonize yes', listen="backlog 5")
    )
    changes = {c.text: c.restart_required for c in diff(old, new)}
    assert changes["workers 1 -> 4"] is True
    assert changes['pid_file unset -> "/run/p"'] is True
    assert changes['log_file unset -> "/log"'] is True
    assert changes["daemonize no -> yes"] is True
    assert changes["listen *:6432: backlog 128 -> 5 (listen changes need a restart)"] is True


def test_live_global_changes() -> None:
    changes = diff(ok(conf()), ok(conf(top="log_debug yes\nclient_max 10")))
    assert changes == [
        Change("log_debug no -> yes", False),
        Change("client_max unset -> 10", False),
    ]


def test_listen_added_and_str() -> None:
    new = ok(conf() + 'listen { host "127.0.0.1" port 7000 }')
    (change,) = diff(ok(conf()), new)
    assert change.restart_required and "listen 127.0.0.1:7000 added" in change.text
    assert str(change).startswith("restart required: ")


def test_generation_and_positions_are_ignored() -> None:
    from dataclasses import replace

    old = ok(conf())
    new = replace(ok("\n\n" + conf()), generation=5)
    assert diff(old, new) == []


# ---------------------------------------------------------------- CLI


def _run(*args: str):
    return CliRunner().invoke(main, list(args))


def test_cli_valid(tmp_path: Path) -> None:
    path = tmp_path / "ok.conf"
    path.write_text(conf(top="log_debug no\nlog_debug yes"))
    result = _run("check", str(path))
    assert result.exit_code == 0
    assert "config is valid" in result.output
    assert f"{path}:3:1: warning: duplicate option 'log_debug'" in result.output


def test_cli_invalid(tmp_path: Path) -> None:
    path = tmp_path / "bad.conf"
    path.write_text(conf(route="pool_sise 3"))
    result = _run("check", str(path))
    assert result.exit_code == 1
    assert f"{path}:" in result.output and "did you mean 'pool_size'?" in result.output
    assert "config is valid" not in result.output
    assert "Traceback" not in result.output


def test_cli_strict(tmp_path: Path) -> None:
    path = tmp_path / "legacy.conf"
    path.write_text(conf().replace("    port 6432\n", "", 1))
    assert _run("check", str(path)).exit_code == 0
    result = _run("check", "--strict", str(path))
    assert result.exit_code == 1 and "listen section is missing 'port'" in result.output


def test_cli_bad_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.conf"
    empty.write_text("")
    latin = tmp_path / "latin.conf"
    latin.write_bytes(b"\xff\xfe")
    for path, text in (
        (tmp_path / "missing.conf", "No such file or directory"),
        (tmp_path, "is a directory"),
        (empty, "config file is empty"),
        (latin, "not valid UTF-8"),
    ):
        result = _run("check", str(path))
        assert result.exit_code == 1, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and text in lines[0] and str(path) in lines[0]


def test_cli_serve_test_alias(tmp_path: Path) -> None:
    path = tmp_path / "ok.conf"
    path.write_text(conf())
    result = _run("serve", "--test", str(path))
    assert result.exit_code == 0 and "config is valid" in result.output
    path.write_text(conf(route='pool "x"'))
    assert _run("serve", "--test", str(path)).exit_code == 1
