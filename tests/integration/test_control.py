"""Every control-socket request against a real `pooler serve --control PATH` (workers 2)."""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
import sys
from pathlib import Path

import pytest
from harness import SERVE_COMMAND, make_config, patience, route, wait_until

from pooler.control import schema
from pooler.control.client import ControlClient, ControlError, default_control_path


def start(pooler, path=None, **kw):
    p = pooler(
        make_config(route(pool="transaction", pool_size=2), workers=2, stats_interval=1, **kw),
        command=(*SERVE_COMMAND, "--control", str(path or "{workdir}/ctl.sock")),
        start=False,
    )
    p.command = [a.replace("{workdir}", str(p.workdir)) for a in p.command]
    p.start()
    path = path or p.workdir / "ctl.sock"
    wait_until(path.exists)
    return p, path


async def test_every_request(pooler):
    p, path = start(pooler)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    async with ControlClient(path) as c:
        status = await c.status()
        assert status.workers == 2 and status.config_path.endswith("pooler.conf")
        conn = await p.aconnect("p0")
        await conn.execute("select 1")
        workers = await c.workers()
        assert len(workers) == 2 and all(w.pid and w.rss_bytes > 0 for w in workers)
        assert all(w.restarts == 0 for w in workers)

        async def pools():
            return [x for x in await c.pools() if x.backend_db == "p0"]

        from harness import async_wait_until

        pool = (await async_wait_until(pools))[0]
        assert pool.mode == "transaction" and pool.pool_size == 2
        clients = await c.clients()
        victim = next(x for x in clients if x["database"] == "p0")
        assert "id" in victim and victim["type"] == "C"
        servers = await c.servers()
        assert all(s["type"] == "S" for s in servers)
        stats = await c.stats()
        assert isinstance(stats, schema.StatsEvent)
        config = await c.config_get()
        assert "listen" in config.text and config.model["workers"] == 2
        reload = await c.reload()
        assert reload.ok and reload.generation == 1
        assert (await c.status()).last_reload.ok
        await c.pause("p0")
        await c.resume("p0")
        await c.reconnect()
        await c.kill_client(victim["id"])
        with pytest.raises(ControlError, match="not_found"):
            await c.kill_client("c-nope")
        with pytest.raises(Exception):  # noqa: B017 - the connection is gone
            await conn.execute("select 1")
        await conn.close()
        # subscription: events every stats_interval, with odyssey's lines
        events = c.subscribe()
        first = await asyncio.wait_for(events.__anext__(), patience(5))
        assert first.lines and first.lines[0].startswith("clients ")
        # malformed requests: an error reply each, and the socket stays up
        bad = await c.raw(b"{not json")
        assert bad["ok"] is False and bad["error"]["code"] == "bad_json"
        bad = await c.raw({"type": "status", "version": 99, "id": 5})
        assert bad["error"]["code"] == "bad_version"
        bad = await c.raw({"type": "frobnicate", "id": 6})
        assert bad["error"]["code"] == "unknown_type"
        assert (await c.status()).workers == 2
    # a failed reload is reported
    p.write_config("not { a config")
    async with ControlClient(path) as c:
        result = await c.reload()
        assert not result.ok and result.errors


def test_default_path_next_to_the_config(pooler):
    p = pooler(make_config())
    path = default_control_path(p.config_path)
    assert path == p.workdir / ".pooler.conf.control"
    wait_until(path.exists, message=lambda: f"{path}: {list(p.workdir.iterdir())}\n{p.log_text()}")


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to connect as another uid")
def test_other_uid_is_refused(pooler):
    import tempfile

    shared = Path(tempfile.mkdtemp(prefix="pooler-ctl-"))
    shared.chmod(0o755)
    p, path = start(pooler, shared / "ctl.sock")
    os.chmod(path, 0o666)  # even if someone widens the mode, the uid check refuses
    code = (
        "import os, socket, sys; os.setgid(65534); os.setuid(65534);"
        "s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]);"
        "print(s.makefile().readline())"
    )
    import subprocess

    out = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=10
    )
    assert "forbidden" in out.stdout, out
    p.stop()
    shutil.rmtree(shared, ignore_errors=True)
