"""Online restart (SIGUSR2 with `enable_online_restart`, odyssey §2.11): hand the pooler over to
a new process without refusing a login or cutting a transaction.

The running supervisor (the *old* process) fork+execs its own command line
(`sys.orig_argv`, so the code on disk now runs: possibly a new version) with its listen
sockets inherited and described in `$POOLER_HANDOVER`, plus the write end of a pipe. The
*new* process adopts those very sockets (no bind: the same kernel sockets, their queues and
their place in the SO_REUSEPORT group kept; only what its config adds is bound), creates its
control socket (renamed over the old one's path, see ControlServer.start) and /metrics
(SO_REUSEPORT), starts its workers, and once every worker serves writes `ready PID` to the
pipe (and tells systemd `MAINPID=PID` and `READY=1`). Then the old process hands over: it
closes its control socket and /metrics, its workers stop accepting (the sockets stay open in
the new process: what is queued there is the new one's to accept) and drain (see
`pooler.server.drain`), and it exits when its last client is gone.

Why hand the sockets over rather than bind new SO_REUSEPORT sockets as odyssey does: a
listening socket that is closed resets the connections queued in it (unless the kernel has
`tcp_migrate_req`), so a fresh bind plus a close of the old ones refuses the logins that
arrived in between; and our cBPF steering program picks a socket by its position in the
SO_REUSEPORT group, which the new process keeps only if it uses the same sockets. Unix
sockets are handed over the same way (odyssey cannot share them).

A new process that fails before it is ready (invalid config on disk, a port it must add is
taken, a crash) writes `failed REASON` or just closes the pipe: the old one logs the reason
and goes on serving as if nothing happened. A second SIGUSR2 while a new process starts is
ignored with a line naming it; one received while the old process drains is ignored too
(the new process is the one to signal).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass

from pooler.config import Config
from pooler.logs import log
from pooler.supervisor.listen import Bound, bind_listen
from pooler.supervisor.notify import notify

HANDOVER_ENV = "POOLER_HANDOVER"
READY_TIMEOUT = 60.0  # seconds for a new process to serve before the old one gives up on it
REAP_TIMEOUT = 10.0  # seconds for a failed new process to exit


# --- the new process ----------------------------------------------------------------------


@dataclass
class Inherited:
    """What the old process handed over: the pipe to report to and the listen sockets,
    per worker index: (host or None for unix, port) -> the sockets for that listen."""

    report_fd: int
    sockets: list[dict[tuple[str | None, int], list[socket.socket]]]

    def report(self, line: str) -> None:
        """Tell the old process `ready PID` or `failed REASON` (once; the pipe closes)."""
        if self.report_fd < 0:
            return
        try:
            os.write(self.report_fd, (line.replace("\n", " ") + "\n").encode())
        except OSError:
            pass  # the old process is gone: nobody waits for the answer
        finally:
            os.close(self.report_fd)
            self.report_fd = -1


def inherited() -> Inherited | None:
    """The hand-over this process was started with (`$POOLER_HANDOVER`), or None. The
    variable is removed: this process's own successor gets its own."""
    raw = os.environ.pop(HANDOVER_ENV, None)
    if not raw:
        return None
    data = json.loads(raw)
    os.set_inheritable(data["report"], False)
    per_worker: list[dict[tuple[str | None, int], list[socket.socket]]] = []
    opened: dict[int, socket.socket] = {}  # a unix socket is one fd shared by all workers
    for bound in data["sockets"]:
        groups: dict[tuple[str | None, int], list[socket.socket]] = {}
        for host, port, fd in bound:
            if fd not in opened:
                opened[fd] = socket.socket(fileno=fd)
                opened[fd].set_inheritable(False)
                opened[fd].setblocking(False)
            groups.setdefault((host, port), []).append(opened[fd])
        per_worker.append(groups)
    return Inherited(data["report"], per_worker)


def adopt_listeners(config: Config, handed: Inherited) -> list[Bound]:
    """The listen sockets, per worker index: the handed-over ones where the config still has
    their listen, new ones (bound as at a start) where it adds a listen or a worker. Handed-
    over workers beyond `workers` keep their sockets (the steering program addresses sockets
    by position in their SO_REUSEPORT group). A handed-over listen the config no longer has is
    closed. Raises OSError (a port to add is taken...)."""
    count = max(config.workers, len(handed.sockets))
    per_worker: list[Bound] = [[] for _ in range(count)]
    fresh_unix: dict[int, socket.socket] = {}  # a new unix socket is shared by all workers
    used: set[int] = set()
    for index in range(count):
        groups = handed.sockets[index] if index < len(handed.sockets) else {}
        for listen in config.listens:
            socks = groups.get((listen.host, listen.port))
            if socks:
                per_worker[index].extend((listen, sock) for sock in socks)
                used.update(id(sock) for sock in socks)
            elif index < config.workers:
                if listen.host is None:
                    if listen.port not in fresh_unix:
                        [fresh_unix[listen.port]] = bind_listen(config, listen)
                    per_worker[index].append((listen, fresh_unix[listen.port]))
                else:
                    per_worker[index].extend((listen, sock) for sock in bind_listen(config, listen))
    for groups in handed.sockets:
        for socks in groups.values():
            for sock in socks:
                if id(sock) not in used:
                    sock.close()
    return per_worker


# --- the old process ----------------------------------------------------------------------


def successor_command() -> list[str]:
    """This process's own command line, run by this interpreter (`python -m pooler serve
    …` and the `pooler` script alike)."""
    argv = list(getattr(sys, "orig_argv", [])) or [sys.executable, *sys.argv]
    return [sys.executable, *argv[1:]]


def handover_description(sockets: list[Bound], report_fd: int) -> tuple[str, list[int]]:
    """$POOLER_HANDOVER for the new process and the fds it must inherit."""
    fds: list[int] = [report_fd]
    described = []
    for bound in sockets:
        described.append([[listen.host, listen.port, sock.fileno()] for listen, sock in bound])
        fds.extend(sock.fileno() for _, sock in bound)
    return json.dumps({"report": report_fd, "sockets": described}), sorted(set(fds))


async def start_successor(sockets: list[Bound]) -> tuple[int, str]:
    """Fork+exec the new process with the listen sockets; wait until it reports. Returns
    (its pid, "") once it serves, or (pid, why it failed): the old process goes on serving.

    A plain Popen, not an asyncio subprocess: the loop's transport would kill the new
    process when the old one's loop closes."""
    read_fd, write_fd = os.pipe()
    description, fds = handover_description(sockets, write_fd)
    env = {**os.environ, HANDOVER_ENV: description}
    command = successor_command()
    try:
        process = subprocess.Popen(command, pass_fds=fds, env=env, stdin=subprocess.DEVNULL)
    except OSError as exc:
        os.close(read_fd)
        return 0, f"cannot start {command[0]}: {exc}"
    finally:
        os.close(write_fd)
    log.info("online-restart", f"new process started, pid {process.pid}")
    try:
        line = await asyncio.wait_for(_read_line(read_fd), READY_TIMEOUT)
    except TimeoutError:
        line = ""
        process.kill()
        reason = f"it was not ready within {READY_TIMEOUT:g} s (killed)"
    finally:
        os.close(read_fd)
    if line.startswith("ready "):
        # (a daemonizing new process reports from its grandchild; this child has exited)
        return int(line.split()[1]), ""
    if line.startswith("failed "):
        reason = line.removeprefix("failed ")
    code = await _reap(process)
    if not line:
        reason = f"it exited with code {code} before it was ready"
    return process.pid, reason


async def _read_line(fd: int) -> str:
    """One line from a pipe (empty at EOF), without blocking the loop."""
    os.set_blocking(fd, False)
    loop = asyncio.get_running_loop()
    data = b""
    while b"\n" not in data:
        readable = loop.create_future()
        loop.add_reader(fd, readable.set_result, None)
        try:
            await readable
        finally:
            loop.remove_reader(fd)
        try:
            chunk = os.read(fd, 4096)
        except BlockingIOError:
            continue
        if not chunk:
            break
        data += chunk
    return data.decode(errors="replace").split("\n", 1)[0].strip()


async def _reap(process: subprocess.Popen[bytes]) -> int | None:
    """The exit code of a new process that failed (killed after REAP_TIMEOUT)."""
    for _ in range(int(REAP_TIMEOUT / 0.05)):
        if process.poll() is not None:
            return process.returncode
        await asyncio.sleep(0.05)
    process.kill()
    return process.wait()


def announce_main_pid(pid: int) -> None:
    """systemd (`Type=notify`, `NotifyAccess=all`): the new process is the service now."""
    notify(f"MAINPID={pid}", "READY=1", f"STATUS=serving, pid {pid} (online restart)")
