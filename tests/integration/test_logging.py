"""log_config, log_session and log_query as they show in the pooler's log."""

from __future__ import annotations

import re

from harness import make_config, route

from pooler import __version__
from pooler.compiled import build


def test_log_config_session_and_query(pooler):
    p = pooler(
        make_config(route("p0", "postgres"), log_config=True, log_session=True, log_query=True)
    )
    assert p.log_contains(r"\(config\) rule p0\.postgres all: authentication none")
    assert p.log_contains(r"\(config\) storage 'postgres_server' remote 127\.0\.0\.1:\d+")
    assert p.sql("select 'logged-query-marker'", dbname="p0") == [("logged-query-marker",)]
    p.wait_for_log(r"\(query\) select 'logged-query-marker'")
    p.wait_for_log(r"\(startup\) new client connection 127\.0\.0\.1:\d+")
    p.wait_for_log(r"\(main\) client disconnected, route p0\.postgres")


def test_quiet_when_turned_off(pooler):
    p = pooler(make_config(route("p0", "postgres"), log_session=False, log_query=False))
    assert p.sql("select 'quiet-marker'", dbname="p0") == [("quiet-marker",)]
    assert not p.log_contains("quiet-marker")
    assert not p.log_contains("new client connection")


def test_the_start_up_line_says_which_build_of_the_hot_path_runs(pooler):
    p = pooler(make_config(route("p0", "postgres")))
    # (the server inherits this process's environment: POOLER_PURE=1 reaches it too)
    line = rf"\(supervisor\) pooler {re.escape(__version__)} \({re.escape(build())}\)$"
    assert p.log_contains(line)
