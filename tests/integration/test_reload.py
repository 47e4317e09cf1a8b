"""Hot reload through every trigger: SIGHUP, the file changing, console RELOAD, control apply."""

from __future__ import annotations

import asyncio
import hashlib
import re
import signal
import subprocess
import sys

import psycopg
import pytest
from harness import make_config, route, wait_until

from pooler.control.client import ControlClient, ControlError


def config(pool_size: int = 4, storage_db: str = "p0", workers: int = 2, **extra) -> str:
    return make_config(
        route(
            "app",
            "postgres",
            pool="transaction",
            pool_size=pool_size,
            storage_db=storage_db,
            pool_discard=False,
        ),
        workers=workers,
        **extra,
    )


def pool_size_of(p, database: str = "app") -> int:
    """pool_size of the live route as the console reports it (SHOW DATABASES)."""
    rows = p.admin("show databases")
    return next(int(row[5]) for row in rows if row[0] == database)


def current_db(conn: psycopg.Connection) -> str:
    return conn.execute("select current_database()").fetchone()[0]


def wait_applied(p, generation: int, workers: int = 2) -> None:
    """Every worker runs `generation` or a later one (new clients route by it). A worker that
    started late may go straight to a later generation, so look at each one's latest."""

    def latest() -> dict[str, int]:
        applied: dict[str, int] = {}
        for worker, gen in re.findall(r"worker (\d+) applied generation (\d+)", p.log_text()):
            applied[worker] = max(applied.get(worker, 0), int(gen))
        return applied

    wait_until(lambda: len(latest()) >= workers and min(latest().values()) >= generation)


def test_sighup_applies_pool_size_live_and_keeps_clients(pooler, pg):
    p = pooler(config(pool_size=4))
    with p.connect("app", prepare_threshold=None) as client:
        client.execute("begin")
        client.execute("select 1")
        p.write_config(config(pool_size=9))
        p.signal(signal.SIGHUP)
        p.wait_for_log(r"reloaded, generation 1")
        client.execute("commit")  # the transaction spanning the reload finishes
        assert current_db(client) == "p0"
    wait_until(lambda: pool_size_of(p) == 9)
    assert "pool_size 4 -> 9" in p.log_text()


def test_invalid_config_changes_nothing(pooler):
    p = pooler(config(pool_size=4))
    with p.connect("app", prepare_threshold=None) as client:
        text = config(pool_size=4).replace("pool_size 4", "pool_sise 5")
        p.write_config(text)
        p.signal(signal.SIGHUP)
        p.wait_for_log(r"reload failed: .*pooler.conf:\d+:\d+: ")
        assert "did you mean" in p.log_text() or "pool_sise" in p.log_text()
        assert current_db(client) == "p0"  # the client never noticed
    with pytest.raises(psycopg.Error, match="pool_sise"):
        p.admin("reload")  # the console answers a failed RELOAD with an ERROR
    assert pool_size_of(p) == 4


def test_changed_route_becomes_obsolete_old_clients_stay(pooler):
    p = pooler(config(storage_db="p0"))
    old = p.connect("app", prepare_threshold=None)
    try:
        assert current_db(old) == "p0"
        p.write_config(config(storage_db="p1"))
        p.signal(signal.SIGHUP)
        wait_applied(p, 1)
        with p.connect("app", prepare_threshold=None) as new:
            assert current_db(new) == "p1"  # new clients: the new route
        for _ in range(3):
            assert current_db(old) == "p0"  # the old client: its old route, untouched
    finally:
        old.close()


def test_file_change_on_disk_is_picked_up(pooler):
    p = pooler(config(pool_size=4))
    p.write_config(config(pool_size=6))  # written by rename, as editors do
    p.wait_for_log(r"\(file\)")
    p.wait_for_log(r"reloaded, generation 1")
    wait_until(lambda: pool_size_of(p) == 6)


def test_workers_change_is_applied(pooler):
    p = pooler(config(workers=1))
    p.write_config(config(workers=3))
    p.signal(signal.SIGHUP)
    p.wait_for_log(r"worker 2 started")
    assert "restart required" not in p.log_text()
    with p.connect("app", prepare_threshold=None) as conn:
        assert current_db(conn) == "p0"


def test_listen_change_is_reported_as_restart_required(pooler):
    p = pooler(config())
    p.write_config(config(listen={"backlog": 7}))
    p.signal(signal.SIGHUP)
    p.wait_for_log(r"restart required: .*listen")


def test_control_validate_and_apply(pooler, tmp_path):
    control = tmp_path / "ctl.sock"
    p = pooler(
        config(pool_size=4),
        command=[sys.executable, "-m", "pooler", "serve", "{config}", "--control", str(control)],
    )

    wait_until(control.exists)  # the supervisor opens it once its workers are up

    async def scenario() -> None:
        async with ControlClient(control) as client:
            info = await client.config_get()
            text, digest = info.text, info.hash
            assert digest == hashlib.sha256(text.encode()).hexdigest()
            bad = await client.config_validate(text.replace("pool_size 4", "pool_size x"))
            assert bad["ok"] is False and bad["errors"][0]["line"] > 1
            good = await client.config_validate(text.replace("pool_size 4", "pool_size 7"))
            assert good["ok"] and any("pool_size 4 -> 7" in c for c in good["changes"])
            applied = await client.config_apply(text.replace("pool_size 4", "pool_size 7"), digest)
            assert applied["ok"] and applied["generation"] == 1
            with pytest.raises(ControlError) as conflict:
                await client.config_apply(text, digest)  # the file changed since `digest`
            assert conflict.value.code == "conflict"
            history = await client.reloads()
            assert history[-1].trigger == "control" and history[-1].ok

    asyncio.run(scenario())
    assert "pool_size 7" in p.config_path.read_text()
    wait_until(lambda: pool_size_of(p) == 7)


def pooler_reload(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pooler", "reload", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_pooler_reload_prints_the_diff_or_every_error(pooler, tmp_path):
    """`pooler reload CONFIG` reloads this pooler only, through its control socket (issue 17)."""
    p = pooler(config(pool_size=2))
    p.write_config(config(pool_size=5))
    done = pooler_reload(str(p.config_path))
    assert done.returncode == 0, done.stderr
    assert 'route "app"."postgres": pool_size 2 -> 5' in done.stdout
    assert re.search(r"serving generation [1-9]", done.stdout)
    assert pool_size_of(p) == 5

    broken = config(pool_size=5).replace("pool_size 5", "pool_size 3x\n\t\tbogus 1")
    p.write_config(broken)
    failed = pooler_reload(str(p.config_path))
    assert failed.returncode == 1
    errors = failed.stderr.splitlines()
    assert re.fullmatch(
        rf"{re.escape(str(p.config_path))}:\d+:\d+: expected a number for pool_size, found '3x'"
        r' \(in user "postgres" of database "app"\)',
        errors[0],
    ), errors
    assert "unknown parameter 'bogus'" in errors[1]
    assert errors[-1].startswith("reload failed: nothing changed, still serving generation")
    assert pool_size_of(p) == 5

    nobody = pooler_reload("--control", str(tmp_path / "none.sock"))
    assert nobody.returncode == 2 and "no pooler answers on" in nobody.stderr
