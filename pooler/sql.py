"""Quoting for the SQL text pooler writes itself (session parameters, test and demo setup)."""

from __future__ import annotations


def quote_ident(name: str) -> str:
    """An identifier that means `name` exactly: ``order`` -> ``"order"``."""
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    """A string literal that means `value` whatever the session's standard_conforming_strings
    (with a backslash inside, an E'' literal, as PostgreSQL's own quote_literal does)."""
    quoted = "'" + value.replace("'", "''") + "'"
    if "\\" in value:
        return "E" + quoted.replace("\\", "\\\\")
    return quoted
