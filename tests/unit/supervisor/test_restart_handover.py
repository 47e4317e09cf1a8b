"""The listen sockets an online restart hands over (pooler/supervisor/restart.py)."""

from __future__ import annotations

import json
import os
import socket

from pooler.config import parse_text
from pooler.supervisor import restart
from pooler.supervisor.listen import bind_listeners


def config(workers: int, ports: list[int]):
    listens = "\n".join(f'listen {{ host "127.0.0.1" port {port} }}' for port in ports)
    text = f"""
log_format "%m\\n"
workers {workers}
{listens}
storage "s" {{ type "remote" host "127.0.0.1" port 5432 }}
database default {{ user default {{ authentication "none" storage "s" pool "session" }} }}
"""
    return parse_text(text, "t.conf")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def handed_over(sockets, monkeypatch) -> restart.Inherited:
    """What the new process sees: the description through $POOLER_HANDOVER, fds duplicated
    (as inherited)."""
    read_fd, write_fd = os.pipe()
    os.close(read_fd)
    dups = [
        [(listen, socket.socket(fileno=os.dup(sock.fileno()))) for listen, sock in bound]
        for bound in sockets
    ]
    description, fds = restart.handover_description(dups, write_fd)
    assert write_fd in fds and all(sock.fileno() in fds for b in dups for _, sock in b)
    for bound in dups:
        for _, sock in bound:
            sock.detach()  # the fd is the "new process's" now
    monkeypatch.setenv(restart.HANDOVER_ENV, description)
    handed = restart.inherited()
    assert handed is not None and restart.HANDOVER_ENV not in os.environ
    return handed


def test_the_same_sockets_are_adopted_per_worker(monkeypatch):
    port = free_port()
    old = config(2, [port])
    sockets = bind_listeners(old, 2)
    handed = handed_over(sockets, monkeypatch)
    adopted = restart.adopt_listeners(old, handed)
    assert len(adopted) == 2
    for before, after in zip(sockets, adopted, strict=True):
        # the same kernel socket (same inode), not a new bind
        assert [os.fstat(s.fileno()).st_ino for _, s in before] == [
            os.fstat(s.fileno()).st_ino for _, s in after
        ]
    handed.report("ready 1")  # (its read end is gone: ignored)


def test_a_new_worker_and_a_new_listen_are_bound_a_dropped_listen_closed(monkeypatch):
    kept, dropped, added = free_port(), free_port(), free_port()
    sockets = bind_listeners(config(1, [kept, dropped]), 1)
    handed = handed_over(sockets, monkeypatch)
    new = config(2, [kept, added])
    adopted = restart.adopt_listeners(new, handed)
    assert [[listen.port for listen, _ in bound] for bound in adopted] == [[kept, added]] * 2
    first = {listen.port: sock for listen, sock in adopted[0]}
    assert os.fstat(first[kept].fileno()).st_ino == os.fstat(sockets[0][0][1].fileno()).st_ino
    closed = [sock for groups in handed.sockets for socks in groups.values() for sock in socks]
    assert any(sock.fileno() == -1 for sock in closed)  # the dropped listen's copy


def test_successor_runs_this_command_line_with_this_interpreter(monkeypatch):
    monkeypatch.setattr("sys.orig_argv", ["python3", "-m", "pooler", "serve", "x.conf"])
    command = restart.successor_command()
    assert command[1:] == ["-m", "pooler", "serve", "x.conf"]
    assert os.path.isabs(command[0])


def test_no_handover_without_the_variable(monkeypatch):
    monkeypatch.delenv(restart.HANDOVER_ENV, raising=False)
    assert restart.inherited() is None


def test_description_is_json_per_worker():
    sock = socket.socket()
    try:
        cfg = config(1, [free_port()])
        [listen] = cfg.listens
        description, _ = restart.handover_description([[(listen, sock)]], 99)
        assert json.loads(description) == {
            "report": 99,
            "sockets": [[["127.0.0.1", listen.port, sock.fileno()]]],
        }
    finally:
        sock.close()
