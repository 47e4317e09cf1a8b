"""Shared fixtures: a session PostgreSQL (`pg`) and the `pooler` process factory.

See tests/harness.py for the helpers (wait_until, free_port, make_config, route, Pooler).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `import harness` from any test dir
# An illegal state transition raises in tests (in this process and the poolers it starts)
# instead of being logged: see ServerState in pooler/server/backend.py.
os.environ.setdefault("POOLER_STRICT_STATES", "1")

from harness import (
    DATABASES,
    MD5_PW,
    MD5_USER,
    PLAIN_PW,
    PLAIN_USER,
    SCRAM_PW,
    SCRAM_USER,
    Pooler,
    free_port,
    make_config,
    release_port,
    require_pg,
)

from pooler.compiled import build
from pooler.pgcluster import PgCluster

PG_FIXTURES = {"pg", "pooler"}
UNIT = Path(__file__).resolve().parent / "unit"


def pytest_report_header() -> str:
    """Which build of the hot path the tests run (POOLER_PURE=1: the Python sources)."""
    return f"pooler hot path: {build()}"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that use a PostgreSQL fixture get the `pg` marker (so `-m "not pg"` works);
    tests/unit holds none (it is the fast stage of .ci/run)."""
    for item in items:
        if PG_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.pg)
        if item.get_closest_marker("pg") and UNIT in item.path.parents:
            raise pytest.UsageError(f"{item.nodeid} needs PostgreSQL: move it to tests/integration")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    # Remember each phase's report so fixtures can tell whether the test failed.
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture(scope="session")
def pg() -> Iterator[PgCluster]:
    """One started PostgreSQL per xdist worker, shared by all its tests.

    Roles: ``postgres`` (superuser, trust over 127.0.0.1), ``scram_user``/``scram_pw``
    (scram-sha-256), ``md5_user``/``md5_pw`` (md5), ``plain_user``/``plain_pw`` (password,
    i.e. cleartext); any other role: md5 rule. Databases p0, p1, p2 (p0 has pgbench tables at
    scale 1). max_connections 300, log_connections on (the log names the auth method).
    Tests must leave it as they found it (drop what they create).
    """
    require_pg()
    t0 = time.monotonic()
    port = free_port()
    cluster = PgCluster(
        port,
        max_connections=300,
        settings={"log_connections": True, "log_disconnections": False},
    )
    try:
        cluster.start()
        cluster.create_role(SCRAM_USER, SCRAM_PW, "scram-sha-256")
        cluster.create_role(MD5_USER, MD5_PW, "md5")
        cluster.create_role(PLAIN_USER, PLAIN_PW, "password")
        for db in DATABASES:
            cluster.create_database(db)
        grants = "\n".join(
            f"GRANT ALL ON DATABASE {db} TO {SCRAM_USER}, {MD5_USER}, {PLAIN_USER};"
            for db in DATABASES
        )
        cluster.psql(grants)
        cluster.pgbench("-i", "-s", "1", "-q", db="p0")
        cluster.psql(
            f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {SCRAM_USER}, {MD5_USER}, {PLAIN_USER};",
            db="p0",
        )
        cluster.setup_seconds = time.monotonic() - t0  # type: ignore[attr-defined]
        yield cluster
    finally:
        cluster.remove()
        release_port(port)


@pytest.fixture(scope="module")
def replica(pg: PgCluster) -> Iterator[PgCluster]:
    """A streaming replica of `pg` (``pg_basebackup -R``), started on a free port; one per
    test module that asks for it. Pause its replay with ``SELECT pg_wal_replay_pause()``."""
    port = free_port()
    standby = pg.standby(port)
    try:
        yield standby
    finally:
        standby.remove()
        release_port(port)


PoolerFactory = Callable[..., Pooler]


@pytest.fixture
def pooler(
    pg: PgCluster, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[PoolerFactory]:
    """Factory: ``pooler(config=None, *, start=True, check_log=True, **Pooler_kwargs)``.

    ``config``: odyssey config text with ``{port}``/``{pg_port}``/``{workdir}`` placeholders,
    a dict of :func:`harness.make_config` arguments, or None for ``make_config()``.
    Returns a started :class:`harness.Pooler` (or raises PoolerStartError with its log).
    At teardown every pooler is stopped; a Python traceback in the log of a pooler that
    started fails the test (``check_log=False`` or ``p.check_log = False`` to opt out).
    """
    created: list[Pooler] = []

    def factory(
        config: str | Mapping[str, Any] | None = None,
        *,
        start: bool = True,
        check_log: bool = True,
        **kwargs: Any,
    ) -> Pooler:
        if config is None:
            text = make_config()
        elif isinstance(config, Mapping):
            text = make_config(**config)
        else:
            text = config
        p = Pooler(tmp_path / f"pooler{len(created)}", text, pg_port=pg.port, **kwargs)
        p.check_log = check_log
        created.append(p)
        if start:
            p.start()
        return p

    yield factory

    failed = getattr(request.node, "rep_call", None)
    problems = []
    for p in created:
        p.close()
        if failed is not None and failed.failed:
            print(f"--- log of {p!r} ---\n{p.log_text()[-20000:]}")
        if p.check_log and not p.start_failed:
            try:
                p.assert_log_clean()
            except AssertionError as exc:
                problems.append(str(exc))
    if problems:
        pytest.fail("\n\n".join(problems), pytrace=False)
