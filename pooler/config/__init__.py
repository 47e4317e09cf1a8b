"""odyssey-syntax configuration: parse, validate, diff.

    load(path, *, strict=False) -> Config            # raises ConfigError
    parse_text(text, path="<text>", *, strict=False) -> Config

`strict=False` accepts what either odyssey reader accepts (legacy <= 1.5.2 and master);
`strict=True` applies odyssey master's (HEAD) rules. See docs/configuration.md.
This package must stay free of asyncio servers, uvloop and textual.
"""

from __future__ import annotations

import os
from dataclasses import replace

from pooler.config.diff import Change, diff
from pooler.config.errors import ConfigError, Diagnostic, Pos
from pooler.config.model import (
    Config,
    ConnDropOptions,
    Endpoint,
    HbaRule,
    LdapCredentials,
    LdapEndpoint,
    Listen,
    QueryParsing,
    Rule,
    SharedPool,
    SoftOom,
    Storage,
)

__all__ = [
    "Change",
    "Config",
    "ConfigError",
    "ConnDropOptions",
    "Diagnostic",
    "Endpoint",
    "HbaRule",
    "LdapCredentials",
    "LdapEndpoint",
    "Listen",
    "Pos",
    "QueryParsing",
    "Rule",
    "SharedPool",
    "SoftOom",
    "Storage",
    "diff",
    "load",
    "parse_text",
]


def load(path: str | os.PathLike[str], *, strict: bool = False) -> Config:
    """Read, parse and validate the config file at `path` (and its includes)."""
    from pooler.config.files import read_text_file

    path = os.fspath(path)
    text = read_text_file(path)
    if not text.strip():
        what = "empty" if not text else "empty (only whitespace)"
        raise ConfigError([Diagnostic(None, f"config file is {what}", file=path)])
    return parse_text(text, path, strict=strict)


def parse_text(text: str, path: str = "<text>", *, strict: bool = False) -> Config:
    """Parse and validate config text; `path` is used in messages and for relative includes."""
    from pooler.config.files import read_text_file, resolve_relative
    from pooler.config.hba import parse_hba
    from pooler.config.syntax import parse_items
    from pooler.config.transform import Builder
    from pooler.config.validate import validate

    items = parse_items(text, path, strict)
    builder = Builder(strict)
    builder.process(items, path, 0)
    config = builder.config(None if path.startswith("<") else path, Pos(path, 1, 1))
    errors = list(builder.errors)
    warnings = list(builder.warnings)

    if config.hba_file is not None:
        hba_pos = config.key_pos.get("hba_file", config.pos)
        hba_path = resolve_relative(config.hba_file, hba_pos.file)
        try:
            hba_text = read_text_file(hba_path, "hba file")
        except ConfigError as exc:
            errors.extend(Diagnostic(d.pos or hba_pos, d.message) for d in exc.diagnostics)
        else:
            rules, hba_errors = parse_hba(hba_text, hba_path)
            errors.extend(hba_errors)
            config = replace(config, hba_rules=tuple(rules), includes=(*config.includes, hba_path))

    more_errors, more_warnings = validate(config, strict)
    errors.extend(more_errors)
    warnings.extend(more_warnings)
    if errors:
        raise ConfigError(errors)
    return replace(config, warnings=tuple(warnings))
