"""SQL quoting (pooler.sql): what pooler writes into SQL text means what it was given."""

from __future__ import annotations

from pooler.sql import quote_ident, quote_literal


def test_identifiers() -> None:
    assert quote_ident("order") == '"order"'
    assert quote_ident('a"b') == '"a""b"'


def test_literals_mean_the_value_whatever_standard_conforming_strings() -> None:
    assert quote_literal("it's") == "'it''s'"
    assert quote_literal("a\\b'c") == "E'a\\\\b''c'"
