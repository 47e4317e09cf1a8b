"""Log lines in odyssey's log_format notation, JSON mode, and the syslog sink."""

import json
import os

from pooler.logs import Log, LogContext


def render(fmt, level="info", context="startup", message="hello", **ctx):
    out = Log()
    out.setup(fmt, to_stdout=False)
    return out._render(level, context, message, LogContext(**ctx))


def test_every_escape():
    line = render(
        "%p|%l|%c|%m|%i|%s|%u|%d|%h|%r|%H|%x|%%|%Q|\\t\\n",
        client_id="c1",
        user="u",
        database="d",
        peer_host="1.2.3.4",
        peer_port=5,
    )
    assert line == f"{os.getpid()}|info|startup|hello|c1|none|u|d|1.2.3.4|5|none|none|%|%Q|\t\n"


def test_tskv_escape_and_newline_appended():
    assert render("%M", message="a=b\tc") == "a\\=b\\tc\n"


def test_json_mode():
    record = json.loads(render('{"json": true}', client_id="c9", user="u"))
    assert record["message"] == "hello" and record["client"]["id"] == "c9"


def test_syslog_sink_gets_whole_lines_with_levels(monkeypatch):
    import syslog

    from pooler.logs import Log

    sent = []
    monkeypatch.setattr(syslog, "openlog", lambda *a: sent.append(("open", *a)))
    monkeypatch.setattr(syslog, "syslog", lambda priority, text: sent.append((priority, text)))
    out = Log()
    out.setup("%l (%c) %m\\n", to_stdout=False)
    out.to_syslog("pooler", "local0")
    out.error("config", "bad thing")
    out.info("main", "fine")
    assert sent[0] == ("open", "pooler", syslog.LOG_PID, syslog.LOG_LOCAL0)
    assert sent[1:] == [(3, "error (config) bad thing"), (6, "info (main) fine")]
