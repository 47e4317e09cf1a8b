"""Shared snippets for the config tests."""

from __future__ import annotations

from pooler.config import Config, ConfigError, parse_text

BASE_TOP = 'log_format "%p %t %l [%i %s] (%c) %m\\n"\n'
BASE_LISTEN = 'listen {\n    host "*"\n    port 6432\n}\n'
BASE_STORAGE = 'storage "pg" {\n    type "remote"\n    host "127.0.0.1"\n    port 5432\n}\n'
BASE_ROUTE = 'authentication "none"\n        storage "pg"\n        pool "transaction"\n'


def conf(
    top: str = "",
    listen: str = "",
    storage: str = "",
    route: str = "",
    rules: str | None = None,
    selector: str = "",
) -> str:
    """A valid config with the given extra text in each place."""
    listen_block = f'listen {{\n    host "*"\n    port 6432\n    {listen}\n}}\n'
    storage_block = f'storage "pg" {{\n    type "remote"\n    host "127.0.0.1"\n    port 5432\n    {storage}\n}}\n'
    if rules is None:
        rules = (
            f'database "db" {{\n    user "u" {selector} {{\n        {BASE_ROUTE}        {route}\n'
            "    }\n}\n"
        )
    return BASE_TOP + top + "\n" + listen_block + storage_block + rules


def ok(text: str, *, strict: bool = False, path: str = "<text>") -> Config:
    return parse_text(text, path, strict=strict)


def errors(text: str, *, strict: bool = False, path: str = "<text>") -> list[str]:
    try:
        parse_text(text, path, strict=strict)
    except ConfigError as exc:
        return [str(d) for d in exc.diagnostics]
    raise AssertionError("expected a ConfigError")


def one_error(text: str, *, strict: bool = False) -> str:
    found = errors(text, strict=strict)
    return "\n".join(found)
