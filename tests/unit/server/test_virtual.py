"""pooler/server/virtual.py: which simple queries the pooler answers or rewrites."""

from __future__ import annotations

import pytest

from pooler.server import virtual
from pooler.server.virtual import Statement


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("SHOW odyssey.target_session_attrs", Statement("show", "odyssey.target_session_attrs")),
        ("show ODYSSEY.Target_Session_Attrs;", Statement("show", "odyssey.target_session_attrs")),
        (
            "set odyssey.target_session_attrs = 'read-only'",
            Statement("set", "odyssey.target_session_attrs", "read-only"),
        ),
        (
            "SET SESSION odyssey.target_session_attrs TO any ;",
            Statement("set", "odyssey.target_session_attrs", "any"),
        ),
        ("set application_name='it''s'", Statement("set", "application_name", "it's")),
        ('SET "Odd.Name" TO x', Statement("set", "Odd.Name", "x")),
        ("  set application_name to 'a'  ", Statement("set", "application_name", "a")),
    ],
)
def test_recognised(sql: str, expected: Statement) -> None:
    assert virtual.parse(sql) == expected


@pytest.mark.parametrize(
    "sql",
    [
        "select 1",
        "set application_name = 'a'; select 1",  # more than one statement: the server's
        "SET LOCAL application_name = 'a'",
        "show all",  # (a name, but nothing of ours: the caller lets it through)
        "set x",
        "settings",
    ],
)
def test_not_recognised_or_not_ours(sql: str) -> None:
    statement = virtual.parse(sql)
    assert statement is None or statement.name not in (
        "application_name",
        virtual.TARGET_SESSION_ATTRS,
    )


def test_application_name_rewrite_quotes() -> None:
    assert (
        virtual.application_name_query("it's", "10.0.0.1")
        == "set application_name to 'it''s - 10.0.0.1';"
    )


def test_a_bare_begin_only() -> None:
    for sql in ("BEGIN", "begin;", "  Begin Work ; ", "BEGIN TRANSACTION"):
        assert virtual.is_bare_begin(sql), sql
    for sql in (
        "BEGIN ISOLATION LEVEL SERIALIZABLE",
        "begin; select 1",
        "START TRANSACTION",
        "BEGINX",
    ):
        assert not virtual.is_bare_begin(sql), sql
