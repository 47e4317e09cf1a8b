"""The control-socket protocol: typed messages shared by the server (supervisor) and the tui.

Newline-delimited JSON over a Unix socket; every message carries `"version": 1`.
Documented in docs/control-protocol.md. Pure: no asyncio, no uvloop, no server imports.

    request  {"version": 1, "id": 7, "type": "pools"}
    response {"version": 1, "id": 7, "ok": true, "type": "pools", "data": [...]}
    error    {"version": 1, "id": 7, "ok": false, "error": {"code": "bad_request", "message": "..."}}
    event    {"version": 1, "event": "stats", "data": {...}}          (after "subscribe")
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar

PROTOCOL_VERSION = 1
MAX_LINE = 1 << 20


class ProtocolError(Exception):
    """A message that does not follow the protocol; `code` goes into the error reply."""

    def __init__(self, code: str, message: str, request_id: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.request_id = request_id


# --- requests -------------------------------------------------------------------------


@dataclass
class Request:
    type: ClassVar[str] = ""
    id: int | str | None = None

    def to_json(self) -> dict[str, Any]:
        body = {"version": PROTOCOL_VERSION, "type": self.type}
        body.update(asdict(self))
        return body


@dataclass
class StatusRequest(Request):
    type: ClassVar[str] = "status"


@dataclass
class WorkersRequest(Request):
    type: ClassVar[str] = "workers"


@dataclass
class PoolsRequest(Request):
    type: ClassVar[str] = "pools"


@dataclass
class ClientsRequest(Request):
    type: ClassVar[str] = "clients"


@dataclass
class ServersRequest(Request):
    type: ClassVar[str] = "servers"


@dataclass
class StatsRequest(Request):
    type: ClassVar[str] = "stats"


@dataclass
class SubscribeRequest(Request):
    """Start streaming events; topics: "stats" (every stats_interval: routes + log lines)."""

    type: ClassVar[str] = "subscribe"
    topics: list[str] = field(default_factory=lambda: ["stats"])


@dataclass
class UnsubscribeRequest(Request):
    type: ClassVar[str] = "unsubscribe"
    topics: list[str] = field(default_factory=lambda: ["stats"])


@dataclass
class ConfigGetRequest(Request):
    type: ClassVar[str] = "config_get"


@dataclass
class ReloadRequest(Request):
    type: ClassVar[str] = "reload"


@dataclass
class ConfigValidateRequest(Request):
    """Would this text be a valid config? Errors with positions, or the diff it would apply."""

    type: ClassVar[str] = "config_validate"
    text: str = ""


@dataclass
class ConfigApplyRequest(Request):
    """Validate, write the file atomically, reload. `hash` (sha256 of the file as read, from
    config_get) must still match the file, else error `conflict`."""

    type: ClassVar[str] = "config_apply"
    text: str = ""
    hash: str = ""


@dataclass
class ReloadsRequest(Request):
    """The last reload results (the history), oldest first."""

    type: ClassVar[str] = "reloads"


@dataclass
class PauseRequest(Request):
    type: ClassVar[str] = "pause"
    database: str | None = None


@dataclass
class ResumeRequest(Request):
    type: ClassVar[str] = "resume"
    database: str | None = None


@dataclass
class ReconnectRequest(Request):
    type: ClassVar[str] = "reconnect"
    database: str | None = None


@dataclass
class KillClientRequest(Request):
    type: ClassVar[str] = "kill_client"
    client_id: str = ""


REQUEST_TYPES: dict[str, type[Request]] = {
    cls.type: cls
    for cls in (
        StatusRequest,
        WorkersRequest,
        PoolsRequest,
        ClientsRequest,
        ServersRequest,
        StatsRequest,
        SubscribeRequest,
        UnsubscribeRequest,
        ConfigGetRequest,
        ReloadRequest,
        ConfigValidateRequest,
        ConfigApplyRequest,
        ReloadsRequest,
        PauseRequest,
        ResumeRequest,
        ReconnectRequest,
        KillClientRequest,
    )
}


# --- response data --------------------------------------------------------------------


@dataclass
class ReloadResult:
    ok: bool
    generation: int
    errors: list[str] = field(default_factory=list)
    changes: list[str] = field(default_factory=list)
    at: float = 0.0  # unix time
    trigger: str = ""  # file, SIGHUP, console, control
    restart_required: list[str] = field(default_factory=list)


@dataclass
class Status:
    version: str
    pid: int
    uptime: float  # seconds
    config_path: str
    generation: int
    workers: int
    clients: int
    servers: int
    paused: bool
    last_reload: ReloadResult | None = None


@dataclass
class WorkerInfo:
    index: int
    pid: int | None
    state: str  # running | restarting | retiring
    clients: int
    servers: int
    restarts: int
    cpu_percent: float
    rss_bytes: int
    started_at: float


@dataclass
class PoolInfo:
    database: str  # what the route's clients ask for (pooler.server.stats.route_names)
    user: str
    backend_db: str
    backend_user: str
    rule: str  # the rule it came from: `db.user selector`
    generation: int  # the config generation the rule was born in
    mode: str
    pool_size: int  # 0: unlimited; a shared_pool's size when it names one
    obsolete: bool
    clients: int
    cl_active: int
    cl_waiting: int
    sv_active: int
    sv_idle: int
    sv_login: int
    maxwait_us: int
    xact_count: int
    query_count: int
    bytes_received: int
    bytes_sent: int
    tps: float  # over the last stats window
    qps: float
    avg_xact_us: float
    avg_query_us: float
    avg_wait_us: float
    p50_xact_us: float  # since the route started
    p95_xact_us: float
    p99_xact_us: float
    p99_query_us: float
    p99_wait_us: float
    shared_pool: str | None = None  # pool_size is this shared pool's (its rules share it)


@dataclass
class StatsEvent:
    """Every stats_interval: the pools and odyssey's stats lines of that interval."""

    time: float
    interval: float
    pools: list[PoolInfo]
    lines: list[str]


@dataclass
class ConfigInfo:
    path: str
    generation: int
    text: str
    model: dict[str, Any]
    hash: str = ""  # sha256 of the file's bytes: what config_apply must be given back


# --- encoding -------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, default=str, separators=(",", ":")).encode() + b"\n"


def response(request_id: Any, type_: str, data: Any) -> bytes:
    return encode(
        {
            "version": PROTOCOL_VERSION,
            "id": request_id,
            "ok": True,
            "type": type_,
            "data": _plain(data),
        }
    )


def error(request_id: Any, code: str, message: str) -> bytes:
    return encode(
        {
            "version": PROTOCOL_VERSION,
            "id": request_id,
            "ok": False,
            "error": {"code": code, "message": message},
        }
    )


def event(name: str, data: Any) -> bytes:
    return encode({"version": PROTOCOL_VERSION, "event": name, "data": _plain(data)})


def _is(value: Any, annotation: str) -> bool:
    """Does a decoded JSON value have a request field's type (as annotated)?"""
    if annotation == "list[str]":
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    kinds = {"int": int, "str": str, "None": type(None)}
    return any(
        isinstance(value, kinds[name]) and not isinstance(value, bool)
        for name in annotation.split(" | ")
    )


def decode_request(line: bytes) -> Request:
    """Parse one request line; raises ProtocolError (with the id when it was readable)."""
    try:
        body = json.loads(line)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError("bad_json", f"not JSON: {exc}") from None
    except RecursionError:  # `[[[[...` a few thousand deep: not a request, not a crash
        raise ProtocolError("bad_json", "not JSON: nested too deeply") from None
    if not isinstance(body, dict):
        raise ProtocolError("bad_request", "a request is a JSON object")
    request_id = body.get("id")
    if not _is(request_id, "int | str | None"):
        raise ProtocolError("bad_request", "a request id is a number or a string")
    version = body.get("version")
    if version != PROTOCOL_VERSION:
        raise ProtocolError(
            "bad_version", f"unsupported protocol version {version!r} (server speaks 1)", request_id
        )
    type_ = body.get("type")
    cls = REQUEST_TYPES.get(type_) if isinstance(type_, str) else None
    if cls is None:
        raise ProtocolError(
            "unknown_type", f"unknown request type {body.get('type')!r}", request_id
        )
    args = {}
    for f in fields(cls):
        if f.name in body:
            if not _is(body[f.name], str(f.type)):
                raise ProtocolError(
                    "bad_request", f"{type_}: {f.name!r} must be {f.type}", request_id
                )
            args[f.name] = body[f.name]
    try:
        return cls(**args)
    except TypeError as exc:
        raise ProtocolError("bad_request", str(exc), request_id) from None


def decode_data(type_: str, data: Any) -> Any:
    """Typed objects from a response's `data` (the client side of `response`)."""
    if type_ == "status":
        last = data.get("last_reload")
        return Status(**{**data, "last_reload": ReloadResult(**last) if last else None})
    if type_ == "workers":
        return [WorkerInfo(**w) for w in data]
    if type_ == "pools":
        return [PoolInfo(**p) for p in data]
    if type_ == "stats":
        return StatsEvent(
            time=data["time"],
            interval=data["interval"],
            pools=[PoolInfo(**p) for p in data["pools"]],
            lines=list(data["lines"]),
        )
    if type_ == "config_get":
        return ConfigInfo(**data)
    if type_ in ("reload",):
        return ReloadResult(**data)
    if type_ == "reloads":
        return [ReloadResult(**r) for r in data]
    return data
