"""soft_oom's measures and choices (pooler/supervisor/soft_oom.py), on this host's /proc."""

from __future__ import annotations

import os

from pooler.config import Endpoint, SoftOom
from pooler.supervisor import soft_oom


def test_the_named_processes_memory_is_their_pss() -> None:
    comm = soft_oom.comm_of(os.getpid())
    assert comm
    used, counted = soft_oom.used_memory(SoftOom(limit=1, process=comm))
    assert counted and counted >= 1 and used >= (soft_oom.pss_of(os.getpid()) or 1) > 0
    used, counted = soft_oom.used_memory(SoftOom(limit=1, process="no such process name"))
    assert (used, counted) == (0, 0)


def test_without_a_process_the_hosts_used_memory() -> None:
    used, counted = soft_oom.used_memory(SoftOom(limit=1))
    assert counted is None and used > 0


def test_the_largest_first_and_only_local_backends() -> None:
    found = [soft_oom.Process(1, "a", 5), soft_oom.Process(2, "b", 9), soft_oom.Process(3, "c", 7)]
    assert [p.pid for p in soft_oom.largest(found, 2)] == [2, 3]
    assert soft_oom.is_local(Endpoint(host=None, port=5432, unix_socket_path="/tmp/.s.PGSQL.5432"))
    assert soft_oom.is_local(Endpoint(host="127.0.0.1", port=5432))
    assert soft_oom.is_local(Endpoint(host="::1", port=5432))
    assert not soft_oom.is_local(Endpoint(host="10.0.0.7", port=5432))
    assert not soft_oom.is_local(Endpoint(host="db.example", port=5432))


def test_only_postgres_processes_are_backend_candidates() -> None:
    assert soft_oom.backend_processes([os.getpid()]) == []  # a python process: never signalled
