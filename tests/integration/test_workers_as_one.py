"""Several worker processes behaving as one pooler in every corner (issue 15): readiness,
slot fairness when pool_size < workers, worker death, changing `workers`."""

from __future__ import annotations

import signal

from harness import make_config, route, wait_until


def config(pool_size: int, workers: int, **extra) -> str:
    return make_config(
        route(pool="transaction", pool_size=pool_size, pool_discard=False, **extra),
        workers=workers,
        log_session=False,
    )


def test_ready_means_every_worker_serves(pooler):
    """READY=1 (sd_notify) and the "pooler ready" line come only after every worker has
    applied generation 0; RELOADING=1/READY=1 bracket a reload, STOPPING=1 ends."""
    p = pooler(config(4, workers=4))  # start() returns at READY=1
    log = p.log_text()
    ready_line = log.index("pooler ready")
    for index in range(4):
        assert f"worker {index} applied generation 0" in log[:ready_line], log
    assert p.notified()[0] == "READY=1"

    p.write_config(config(5, workers=4))
    p.reload()
    wait_until(lambda: p.notified().count("READY=1") == 2, message=lambda: str(p.notifications))
    states = [n.split("=")[0] for n in p.notifications if not n.startswith(("STATUS", "MONO"))]
    assert states == ["READY", "RELOADING", "READY"]
    log = p.log_text()
    for index in range(4):
        assert f"worker {index} applied generation 1" in log

    p.signal(signal.SIGTERM)
    assert p.wait_exit(timeout=20) == 0
    assert p.notified()[-1] == "STOPPING=1"
