"""The benchmark's child processes: each started in its own process group, all stopped
together on exit (`stop_all`); ports for the targets (bench/targets.py) to listen on."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from pooler.pgcluster import port_is_free

_children: list[subprocess.Popen[Any]] = []


def spawn(
    argv: list[str], *, log: Path, cwd: Path, env: dict[str, str] | None = None, **kw: Any
) -> subprocess.Popen[Any]:
    with log.open("ab") as out:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=env,
            start_new_session=True,  # own process group: Ctrl-C reaches us only; we stop it
            **kw,
        )
    track(proc)
    return proc


def track(proc: subprocess.Popen[Any]) -> None:
    """Stop `proc` with the others on exit (`stop_all`)."""
    _children.append(proc)


def forget(proc: subprocess.Popen[Any]) -> None:
    with contextlib.suppress(ValueError):
        _children.remove(proc)


def stop_proc(proc: subprocess.Popen[Any] | None, timeout: float = 10.0) -> None:
    if proc is None:
        return
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)
    forget(proc)


def stop_all() -> None:
    for proc in list(_children):
        stop_proc(proc)


def wait_logged(
    proc: subprocess.Popen[Any], log: Path, offset: int, text: str, timeout: float
) -> None:
    """Wait until `text` appears in `log` after byte `offset`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with log.open("rb") as f:
            f.seek(offset)
            if text.encode() in f.read():
                return
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)
    raise RuntimeError(f"no {text!r} after {timeout} s:\n{log.read_text()[-3000:]}")


_next_port = 15432


def pick_port() -> int:
    """Ports below the ephemeral range (an outgoing connection never takes them)."""
    global _next_port
    while not port_is_free(_next_port):
        _next_port += 1
    port = _next_port
    _next_port += 1
    return port
