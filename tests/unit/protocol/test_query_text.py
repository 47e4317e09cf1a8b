from __future__ import annotations

import pytest

from pooler.protocol.query_text import opens_transaction_block


@pytest.mark.parametrize(
    "text",
    [
        "begin",
        "BEGIN;",
        "  begin isolation level serializable",
        "Start  Transaction read only",
        "start\ntransaction",
        "-- a comment\nbegin",
        "/* one */ /* two\n */begin work",
        "begin; select 1",
    ],
)
def test_transaction_openers(text):
    data = b"Q\0\0\0\0" + text.encode() + b"\0"
    assert opens_transaction_block(data, 5, len(data) - 1)


@pytest.mark.parametrize(
    "text",
    ["select 1", "beginning", "commit", "start_time", "-- begin", "/* begin */ select 1", ""],
)
def test_other_queries(text):
    data = b"Q\0\0\0\0" + text.encode() + b"\0"
    assert not opens_transaction_block(data, 5, len(data) - 1)
