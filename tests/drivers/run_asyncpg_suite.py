#!/usr/bin/env python3
"""Run asyncpg's own test suite directly against PostgreSQL and through poolers; compare.

    .venv/bin/python tests/drivers/run_asyncpg_suite.py --sdist asyncpg-0.32.0.tar.gz \
        [--modes direct,session,transaction,pgbouncer-session,pgbouncer-transaction] \
        [--pgbouncer /path/to/pgbouncer] [--workdir DIR] [-k EXPR]

Each mode gets a fresh throwaway PostgreSQL 15 (pooler.pgcluster, as the integration tests),
and, except `direct`, a pooler in front of it listening on 127.0.0.1:

* ``session``: ``pooler serve``, ``pool "session"`` (defaults: ``pool_discard yes``), 1 worker;
* ``transaction``: ``pooler serve``, ``pool "transaction"``, ``pool_reserve_prepared_statement
  yes`` (the default, said explicitly), 1 worker;
* ``pgbouncer-session`` / ``pgbouncer-transaction``: pgbouncer (``--pgbouncer``) with
  ``pool_mode`` session / transaction, ``max_prepared_statements 200`` for the latter.

The suite runs from a copy of the sdist's ``tests/`` (so the installed, compiled asyncpg is
the one tested, not the sdist's uncompiled source) with ``PGHOST``/``PGPORT``/``PGUSER``/
``PGDATABASE`` set: asyncpg's ``_testbase`` then uses the running server
(``RunningCluster``) instead of starting its own. Tests that need a cluster of their own
(``new_cluster``: initdb, pg_hba edits, a hot standby) skip themselves against a running
server, or are deselected (``EXCLUDED`` below, with the reason), as are asyncpg's checks of
its own source tree. ``SUITE_TB=short`` shows tracebacks (default: one line per failure).

The output: per mode, passed/failed/errors/skipped; then every test whose outcome differs from
``direct``, with the first line of its error. ``results.json`` in the workdir has it all.
Everything started is stopped at the end (PostgreSQL, pooler, pgbouncer, the suite's process
group). asyncpg's ``test_connect`` imports ``distro``: it is installed into the workdir with
pip when missing.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from harness import Pooler, free_port, make_config, route, wait_until  # noqa: E402

from pooler.pgcluster import PgCluster  # noqa: E402

MODES = ("direct", "session", "transaction", "pgbouncer-session", "pgbouncer-transaction")

# node-id prefixes deselected in every mode, and why: they cannot run against a server that is
# already running (asyncpg's RunningCluster raises on init/HBA edits and has no address of its
# own), whatever sits in between.
EXCLUDED = {
    "tests/test__sourcecode.py": "runs flake8/mypy over asyncpg's source tree: no server involved",
    "tests/test_connect.py::TestConnectionAttributes": "starts a primary and a hot standby of its "
    "own (initdb, pg_ctl: refused as root); its other cluster tests skip themselves against a "
    "RunningCluster",
}


def unpack(sdist: Path, workdir: Path) -> Path:
    """The sdist's tests/ copied to workdir/suite/tests; returns workdir/suite."""
    suite = workdir / "suite"
    if (suite / "tests").is_dir():
        return suite
    src = workdir / "sdist"
    with tarfile.open(sdist) as tar:
        tar.extractall(src, filter="data")
    (top,) = [p for p in src.iterdir() if p.is_dir()]
    suite.mkdir(parents=True, exist_ok=True)
    shutil.copytree(top / "tests", suite / "tests")
    return suite


def extra_site(workdir: Path) -> Path | None:
    """A pip --target dir with what the suite imports beyond asyncpg (distro), if missing."""
    if importlib.util.find_spec("distro") is not None:
        return None
    target = workdir / "site"
    if not (target / "distro").exists():
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--target", str(target), "distro"],
            check=True,
        )
    return target


@contextlib.contextmanager
def postgres(workdir: Path) -> Iterator[PgCluster]:
    port = free_port()
    pg = PgCluster(
        port,
        max_connections=300,
        settings={"jit": False, "log_connections": False, "max_prepared_transactions": 10},
    )
    try:
        pg.start()
        yield pg
    finally:
        pg.remove()


@contextlib.contextmanager
def pooler(mode: str, pg: PgCluster, workdir: Path) -> Iterator[int]:
    pool = "session" if mode == "session" else "transaction"
    extra = {"pool_reserve_prepared_statement": True} if pool == "transaction" else {}
    config = make_config(
        route(pool=pool, pool_size=0, **extra),
        console=False,
        log_to_stdout=True,
    )
    p = Pooler(workdir / f"pooler-{mode}", config, pg_port=pg.port, start_timeout=60)
    p.start()
    try:
        yield p.port
    finally:
        p.close()


@contextlib.contextmanager
def pgbouncer(mode: str, binary: str, pg: PgCluster, workdir: Path) -> Iterator[int]:
    d = workdir / f"{mode}"
    d.mkdir(parents=True, exist_ok=True)
    port = free_port()
    pool_mode = mode.split("-", 1)[1]
    (d / "userlist.txt").write_text('"postgres" ""\n')
    (d / "pgbouncer.ini").write_text(
        "[databases]\n"
        f"* = host=127.0.0.1 port={pg.port}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\n"
        f"unix_socket_dir =\nauth_type = trust\nauth_file = {d}/userlist.txt\n"
        f"pool_mode = {pool_mode}\nmax_client_conn = 1000\ndefault_pool_size = 200\n"
        f"max_prepared_statements = {200 if pool_mode == 'transaction' else 0}\n"
        f"logfile = {d}/pgbouncer.log\npidfile = {d}/pgbouncer.pid\n"
        "ignore_startup_parameters = extra_float_digits\n"
    )
    user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if user:
        shutil.chown(d, user="postgres")
        for f in d.iterdir():
            shutil.chown(f, user="postgres")
    proc = subprocess.Popen(
        [*user, binary, str(d / "pgbouncer.ini")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        from harness import is_listening

        wait_until(lambda: is_listening(port), timeout=30)
        yield port
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)


def run_suite(
    suite: Path, port: int, out: Path, site: Path | None, kexpr: str | None, timeout: int
) -> dict[str, dict[str, str]]:
    env = {
        **os.environ,
        "PGHOST": "127.0.0.1",
        "PGPORT": str(port),
        "PGUSER": "postgres",
        "PGDATABASE": "postgres",
        "PYTHONPATH": str(site) if site else "",
    }
    for var in ("PGPASSWORD", "PGSERVICE", "PGSSLMODE", "PGOPTIONS"):
        env.pop(var, None)
    argv = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "-p",
        "no:asyncio",
        "-p",
        "no:randomly",
        "-p",
        "no:textual-snapshot",
        "-o",
        "addopts=",
        "--rootdir",
        str(suite),
        "-c",
        os.devnull,
        "--import-mode=importlib",
        "--tb=" + os.environ.get("SUITE_TB", "line"),
        f"--timeout={timeout}",
        f"--junitxml={out}",
        "tests",
    ]
    for prefix in EXCLUDED:
        argv.append(f"--deselect={prefix}")
    if kexpr:
        argv += ["-k", kexpr]
    proc = subprocess.Popen(argv, cwd=suite, env=env, start_new_session=True)
    try:
        proc.wait()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    return parse_junit(out)


def parse_junit(path: Path) -> dict[str, dict[str, str]]:
    results: dict[str, dict[str, str]] = {}
    if not path.exists():
        return results
    for case in ET.parse(path).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        outcome, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[child.tag]
                message = (child.get("message") or child.text or "").strip().splitlines()
                message = message[0][:300] if message else ""
                break
        results[name] = {"outcome": outcome, "message": message}
    return results


def counts(results: dict[str, dict[str, str]]) -> dict[str, int]:
    c = {"passed": 0, "failed": 0, "error": 0, "skipped": 0}
    for r in results.values():
        c[r["outcome"]] += 1
    return c


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sdist", type=Path, required=True, help="asyncpg-X.Y.Z.tar.gz")
    ap.add_argument("--modes", default="direct,session,transaction")
    ap.add_argument("--pgbouncer", default=None, help="pgbouncer binary (pgbouncer-* modes)")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("-k", dest="kexpr", default=None, help="pytest -k for the suite")
    ap.add_argument("--timeout", type=int, default=120, help="seconds per test")
    args = ap.parse_args()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    for m in modes:
        if m not in MODES:
            ap.error(f"unknown mode {m!r}; modes: {', '.join(MODES)}")
        if m.startswith("pgbouncer") and not args.pgbouncer:
            ap.error(f"{m} needs --pgbouncer")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="asyncpg-suite-"))
    workdir.mkdir(parents=True, exist_ok=True)
    suite = unpack(args.sdist, workdir)
    site = extra_site(workdir)
    all_results: dict[str, dict[str, dict[str, str]]] = {}
    for mode in modes:
        t0 = time.monotonic()
        out = workdir / f"junit-{mode}.xml"
        with postgres(workdir) as pg:
            if mode == "direct":
                cm: contextlib.AbstractContextManager[int] = contextlib.nullcontext(pg.port)
            elif mode.startswith("pgbouncer"):
                cm = pgbouncer(mode, args.pgbouncer, pg, workdir)
            else:
                cm = pooler(mode, pg, workdir)
            with cm as port:
                all_results[mode] = run_suite(suite, port, out, site, args.kexpr, args.timeout)
        print(f"== {mode}: {counts(all_results[mode])} in {time.monotonic() - t0:.0f} s")
    (workdir / "results.json").write_text(json.dumps(all_results, indent=1, sort_keys=True))
    print(f"\nworkdir: {workdir}")
    print("| mode | passed | failed | errors | skipped | differ from direct |")
    print("|---|---|---|---|---|---|")
    base = all_results.get("direct")
    for mode, res in all_results.items():
        c = counts(res)
        differ = "-"
        if base is not None and mode != "direct":
            differ = str(
                sum(1 for t, r in res.items() if base.get(t, {}).get("outcome") != r["outcome"])
            )
        print(
            f"| {mode} | {c['passed']} | {c['failed']} | {c['error']} | {c['skipped']} | {differ} |"
        )
    if base is not None:
        for mode, res in all_results.items():
            if mode == "direct":
                continue
            diffs = sorted(
                t for t, r in res.items() if base.get(t, {}).get("outcome") != r["outcome"]
            )
            if diffs:
                print(f"\n-- {mode}: {len(diffs)} differ from direct")
                for t in diffs:
                    print(f"  {base.get(t, {}).get('outcome', '?')} -> {res[t]['outcome']}: {t}")
                    if res[t]["message"]:
                        print(f"      {res[t]['message']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
