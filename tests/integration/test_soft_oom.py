"""`soft_oom`: over its memory limit the pooler refuses new clients and (with `drop`) ends the
PostgreSQL backends of its own servers using the most memory (issue 18)."""

from __future__ import annotations

import os
import subprocess
import sys

import psycopg
import pytest
from harness import make_config, route, wait_until

# A process whose memory the test controls: it renames itself (comm) and grows on request.
HOG = r"""
import ctypes, sys
ctypes.CDLL(None).prctl(15, sys.argv[1].encode(), 0, 0, 0)  # PR_SET_NAME
held = []
print("ready", flush=True)
for line in sys.stdin:
    if line.strip() == "grow":
        held.append(b"x" * (160 << 20))
    else:
        held.clear()
    print("done", flush=True)
"""


class Hog:
    def __init__(self, name: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", HOG, name],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None and self.proc.stdout.readline() == "ready\n"

    def tell(self, what: str) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(what + "\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline() == "done\n"

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(10)


@pytest.fixture
def hog():
    h = Hog(f"oomhog{os.getpid() % 100000}")
    yield h
    h.close()


def refused(p) -> str | None:
    """The login error through the pooler, None when the login succeeds."""
    try:
        with p.connect("p1", connect_timeout=10) as conn:
            conn.execute("select 1")
    except psycopg.OperationalError as exc:
        return str(exc)
    return None


def test_over_the_limit_logins_are_refused_and_backends_dropped(pooler, pg, hog):
    name = f"oomhog{os.getpid() % 100000}"
    soft_oom = (
        "soft_oom {\n"
        "\tlimit 64MB\n"
        f'\tprocess "{name}"\n'
        "\tcheck_interval_ms 100\n"
        '\tdrop {\n\t\tsignal "SIGTERM"\n\t\tmax_rate 1\n\t}\n'
        "}"
    )
    p = pooler(make_config(route("p1", "postgres")) + soft_oom + "\n")
    held = p.connect("p1")  # a session pool: its server stays linked
    pid = held.execute("select pg_backend_pid()").fetchone()[0]
    assert refused(p) is None
    hog.tell("grow")  # 160 MB of the named process: over 64 MB
    wait_until(lambda: refused(p) is not None, timeout=15, message="logins refused")
    assert "soft out of memory" in (refused(p) or "")
    p.admin("show pools")  # the console still answers
    # the server of `held` was the pooler's backend using the most memory: ended
    wait_until(
        lambda: pg.psql(f"select count(*) from pg_stat_activity where pid = {pid}") == "0",
        timeout=15,
        message="the backend ended",
    )
    with pytest.raises(psycopg.Error):
        held.execute("select 1")
    held.close()
    assert p.log_contains(r"drop connection due to soft oom \(usage is \d+ KB\)")
    assert p.log_contains(rf"sending SIGTERM to {pid} \(postgres")
    hog.tell("shrink")
    wait_until(lambda: refused(p) is None, timeout=15, message="logins accepted again")
    assert pg.psql("select 1") == "1"  # PostgreSQL itself was never signalled
