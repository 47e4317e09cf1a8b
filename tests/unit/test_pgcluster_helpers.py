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
)

# -- pure helpers -----------------------------------------------------------------------


def test_postgresql_conf_strings_are_quoted(tmp_path: Path) -> None:
    cluster = PgCluster(1, settings={"application_name": "it's a\\b"})
    try:
        assert "application_name = 'it''s a\\\\b'" in cluster._conf_lines()
    finally:
        cluster.remove()


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
