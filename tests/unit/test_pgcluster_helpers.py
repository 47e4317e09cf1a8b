"""PgCluster's pure helpers (the real server: tests/integration/test_pgcluster.py)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from harness import free_port, release_port

from pooler.pgcluster import (
    PgCluster,
    PgNotInstalledError,
    conninfo,
    find_bindir,
    port_is_free,
    quote_ident,
    quote_literal,
)

# -- pure helpers -----------------------------------------------------------------------


def test_quoting() -> None:
    assert quote_ident("order") == '"order"'
    assert quote_ident('a"b') == '"a""b"'
    assert quote_literal("it's") == "'it''s'"


def test_conninfo_quotes_values() -> None:
    assert conninfo(host="127.0.0.1", port=5432, password=None) == "host=127.0.0.1 port=5432"
    assert conninfo(password="a b'c\\") == r"password='a b\'c\\'"
    assert conninfo(password="") == "password=''"


def test_port_is_free() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        assert not port_is_free(s.getsockname()[1])
    port = free_port()
    try:
        assert port_is_free(port)
    finally:
        release_port(port)


def test_missing_binaries_give_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("POOLER_PG_BINDIR", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(Path, "glob", lambda self, pattern: iter(()))
    with pytest.raises(PgNotInstalledError, match="apt-get install postgresql"):
        find_bindir()
    pg = PgCluster(1)
    try:
        with pytest.raises(PgNotInstalledError, match="initdb"):
            pg.start()
    finally:
        pg.remove()
