"""Log lines in odyssey's `log_format` notation, written whole to stdout and/or `log_file`.

One `Log` per process. A line is rendered completely before one `write` call, so lines from
several processes sharing a file never interleave mid-line (O_APPEND writes of a line are
atomic on Linux for the sizes we emit).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

DEFAULT_FORMAT = "%p %t %l (%c) %h %m\\n"
_SYSLOG_PRIORITY = {"fatal": 2, "error": 3, "info": 6, "debug": 7}  # LOG_CRIT..LOG_DEBUG
_BACKSLASH = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}


@dataclass(slots=True)
class LogContext:
    """Who a line is about (any field may be unknown)."""

    client_id: str | None = None
    server_id: str | None = None
    user: str | None = None
    database: str | None = None
    peer_host: str | None = None
    peer_port: int | None = None
    server_host: str | None = None


_NO_CONTEXT = LogContext()


def _escape_tskv(text: str) -> str:
    return (
        text.replace("\\", "\\\\")
        .replace("\0", "\\0")
        .replace("\t", "\\t")
        .replace("\n", "\\n")
        .replace("\r", "\\r")
        .replace("=", "\\=")
    )


def _unescape(fmt: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(fmt):
        ch = fmt[i]
        if ch == "\\" and i + 1 < len(fmt):
            nxt = fmt[i + 1]
            out.append(_BACKSLASH.get(nxt, "\\" + nxt))
            i += 2
            continue
        out.append(ch)
        i += 1
    return "".join(out)


class Log:
    """Render and write log lines; levels: debug, info, error, fatal."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._file: TextIO | None = None
        self.setup()

    def setup(
        self,
        fmt: str = DEFAULT_FORMAT,
        *,
        to_stdout: bool = True,
        path: str | None = None,
        debug: bool = False,
        max_msg_size: int = 0,
    ) -> None:
        """(Re)configure format and sinks. `max_msg_size` > 0 cuts longer messages
        (`log_max_msg_size`, odyssey master)."""
        self.debug_enabled = debug
        self.max_msg_size = max_msg_size
        self._syslog: Callable[[int, str], None] | None = None
        self._json = "json" in fmt.lower()
        self._fmt = _unescape(fmt)
        self._stdout = to_stdout
        self._path = path
        if path:
            self.reopen()
        elif self._file is not None:
            self._file.close()
            self._file = None

    def to_syslog(self, ident: str, facility: str) -> None:
        """Also send every line to syslog (log_syslog), odyssey's facility names."""
        import syslog

        code = getattr(syslog, f"LOG_{facility.upper()}", syslog.LOG_DAEMON)
        syslog.openlog(ident, syslog.LOG_PID, code)
        self._syslog = syslog.syslog

    def reopen(self) -> None:
        """Open (or reopen, after rotation: SIGUSR1) the log file."""
        if not self._path:
            return
        new = open(self._path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115
        old, self._file = self._file, new
        if old is not None:
            old.close()

    def _render(self, level: str, context: str, message: str, ctx: LogContext) -> str:
        now = time.time()
        if self._json:
            record: dict[str, object] = {
                "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
                "pid": os.getpid(),
                "level": level,
                "context": context,
                "message": message,
            }
            if ctx.client_id:
                record["client"] = {
                    "id": ctx.client_id,
                    "ip": ctx.peer_host,
                    "port": ctx.peer_port,
                    "user": ctx.user,
                    "database": ctx.database,
                    "server_host": ctx.server_host,
                }
            if ctx.server_id:
                record["server"] = {"id": ctx.server_id}
            return json.dumps(record) + "\n"
        fmt = self._fmt
        out: list[str] = []
        i = 0
        n = len(fmt)
        while i < n:
            ch = fmt[i]
            if ch != "%" or i + 1 >= n:
                out.append(ch)
                i += 1
                continue
            d = fmt[i + 1]
            i += 2
            if d == "p":
                out.append(str(os.getpid()))
            elif d == "t":
                out.append(time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)))
            elif d == "e":
                out.append(f"{int(now * 1000) % 1000:03d}")
            elif d == "n":
                out.append(str(int(now)))
            elif d == "T":
                out.append(hex(threading.get_ident()))
            elif d == "l":
                out.append(level)
            elif d == "c":
                out.append(context)
            elif d == "m":
                out.append(message)
            elif d == "M":
                out.append(_escape_tskv(message))
            elif d == "i":
                out.append(ctx.client_id or "none")
            elif d == "s":
                out.append(ctx.server_id or "none")
            elif d == "u":
                out.append(ctx.user or "none")
            elif d == "d":
                out.append(ctx.database or "none")
            elif d == "h":
                out.append(ctx.peer_host or "none")
            elif d == "r":
                out.append(str(ctx.peer_port) if ctx.peer_port is not None else "none")
            elif d == "H":
                out.append(ctx.server_host or "none")
            elif d == "x":
                out.append("none")
            elif d == "%":
                out.append("%")
            else:
                out.append("%" + d)
        line = "".join(out)
        return line if line.endswith("\n") else line + "\n"

    def write(self, level: str, context: str, message: str, ctx: LogContext | None = None) -> None:
        if 0 < self.max_msg_size < len(message):
            message = message[: self.max_msg_size]
        line = self._render(level, context, message, ctx or _NO_CONTEXT)
        with self._lock:
            if self._stdout:
                try:
                    sys.stdout.write(line)
                    sys.stdout.flush()
                except (OSError, ValueError):  # stdout went away (a closed pipe): stop using it
                    self._stdout = False
            if self._file is not None:
                with contextlib.suppress(OSError):  # a full disk must not take us down
                    self._file.write(line)
            if self._syslog is not None:
                self._syslog(_SYSLOG_PRIORITY.get(level, 6), line.rstrip("\n"))

    def info(self, context: str, message: str, ctx: LogContext | None = None) -> None:
        self.write("info", context, message, ctx)

    def error(self, context: str, message: str, ctx: LogContext | None = None) -> None:
        self.write("error", context, message, ctx)

    def debug(self, context: str, message: str, ctx: LogContext | None = None) -> None:
        if self.debug_enabled:
            self.write("debug", context, message, ctx)


log = Log()
"""The process-wide log; `configure_from(config)` sets it up from the loaded config."""


def configure_from(config: object) -> None:
    """Point the process log at the sinks and format of a loaded config."""
    log.setup(
        getattr(config, "log_format", None) or DEFAULT_FORMAT,
        to_stdout=bool(getattr(config, "log_to_stdout", True)),
        path=getattr(config, "log_file", None),
        debug=bool(getattr(config, "log_debug", False)),
        max_msg_size=int(getattr(config, "log_max_msg_size", 0) or 0),
    )
    if getattr(config, "log_syslog", False):
        log.to_syslog(
            getattr(config, "log_syslog_ident", None) or "odyssey",
            getattr(config, "log_syslog_facility", None) or "daemon",
        )
