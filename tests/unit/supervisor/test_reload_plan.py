"""What a reload keeps, changes live, or makes obsolete — decided without processes."""

import os
from dataclasses import replace
from pathlib import Path

import pytest

from pooler.config import ConfigError, parse_text
from pooler.config.diff import rule_births
from pooler.config.files import write_atomically
from pooler.supervisor.reload import Reloader, file_hash

BASE = """
log_format "%m\\n"
listen {{ host "127.0.0.1" port 6432 }}
storage "pg" {{ type "remote" host "127.0.0.1" port {pg_port} }}
workers {workers}
database "app" {{
    user default {{
        authentication "none"
        storage "pg"
        storage_db "{storage_db}"
        pool "transaction"
        pool_size {pool_size}
    }}
}}
database default {{
    user default {{ authentication "none" storage "pg" pool "session" }}
}}
"""


def config(generation=0, *, pool_size=10, storage_db="app", pg_port=5432, workers=1):
    text = BASE.format(pool_size=pool_size, storage_db=storage_db, pg_port=pg_port, workers=workers)
    return replace(parse_text(text, "test.conf"), generation=generation)


def births_of(old, new, births):
    return {ident[0]: birth for ident, birth in rule_births(old, new, births).items()}


def test_live_change_keeps_the_route():
    old = config(0)
    births = {rule.identity: 0 for rule in old.rules}
    assert births_of(old, config(1, pool_size=40), births) == {"app": 0, None: 0}


def test_storage_db_change_makes_the_route_obsolete():
    old = config(0)
    births = {rule.identity: 0 for rule in old.rules}
    assert births_of(old, config(1, storage_db="other"), births) == {"app": 1, None: 0}


def test_storage_change_makes_every_route_on_it_obsolete():
    old = config(0)
    births = {rule.identity: 0 for rule in old.rules}
    assert births_of(old, config(1, pg_port=5433), births) == {"app": 1, None: 1}


def test_plan_classifies_changes(tmp_path):
    path = tmp_path / "pooler.conf"
    running = config(0)
    reloader = Reloader(path, running)
    text = BASE.format(pool_size=40, storage_db="app", pg_port=5432, workers=2).replace(
        "port 6432", "port 6433"
    )
    plan = reloader.plan(running, text)
    assert plan.config.generation == 1
    assert plan.workers_changed
    assert any("pool_size 10 -> 40" in change for change in plan.changes)
    assert any("listen" in change for change in plan.restart_required)


def test_invalid_text_is_refused_with_positions(tmp_path):
    reloader = Reloader(tmp_path / "pooler.conf", config(0))
    with pytest.raises(ConfigError) as info:
        reloader.plan(config(0), BASE.format(pool_size="x", storage_db="a", pg_port=1, workers=1))
    [diagnostic] = info.value.diagnostics
    assert diagnostic.pos is not None and diagnostic.pos.line > 1


def test_write_atomically_keeps_mode(tmp_path):
    path = tmp_path / "pooler.conf"
    path.write_text("old")
    os.chmod(path, 0o640)
    before = file_hash(path)
    write_atomically(path, "new text")
    assert path.read_text() == "new text"
    assert path.stat().st_mode & 0o777 == 0o640
    assert file_hash(path) != before
    assert [p.name for p in Path(tmp_path).iterdir()] == ["pooler.conf"]
