"""Encoders: build complete wire messages (header included) as ``bytes``.

Strings are encoded as UTF-8 with ``surrogateescape`` (the inverse of the decoders in
:mod:`pooler.protocol.messages`); a NUL inside a string raises ``ValueError`` since it
would corrupt the framing. Fixed messages are module constants (``SYNC``, ``AUTH_OK``...)
and their functions return those constants.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from struct import Struct

from pooler.protocol import messages as m
from pooler.protocol.framing import (
    CANCEL_REQUEST_CODE,
    GSSENC_REQUEST_CODE,
    PROTOCOL_3_0,
    SSL_REQUEST_CODE,
)

_HDR = Struct("!BI")
_I16 = Struct("!h")
_I32 = Struct("!i")
_II = Struct("!ii")
_ENC = "utf-8"
_ERRS = "surrogateescape"

TEXT_OID = 25


def message(mtype: int, body: bytes | bytearray) -> bytes:
    """Any message from its type and an encoded body."""
    return _HDR.pack(mtype, len(body) + 4) + body


_msg = message  # the builders below


def _cstr(s: str | bytes) -> bytes:
    b = s.encode(_ENC, _ERRS) if isinstance(s, str) else bytes(s)
    if b"\0" in b:
        raise ValueError("string contains a NUL byte")
    return b + b"\0"


# --- untyped startup packets -------------------------------------------------------------


def startup_message(params: Mapping[str, str], protocol: int = PROTOCOL_3_0) -> bytes:
    """StartupMessage with the given parameters (``user`` is required by servers)."""
    body = b"".join(_cstr(k) + _cstr(v) for k, v in params.items()) + b"\0"
    return _I32.pack(len(body) + 8) + _I32.pack(protocol) + body


SSL_REQUEST = Struct("!ii").pack(8, SSL_REQUEST_CODE)
GSSENC_REQUEST = Struct("!ii").pack(8, GSSENC_REQUEST_CODE)


def ssl_request() -> bytes:
    return SSL_REQUEST


def gssenc_request() -> bytes:
    return GSSENC_REQUEST


def cancel_request(pid: int, secret: int) -> bytes:
    return Struct("!iiii").pack(16, CANCEL_REQUEST_CODE, pid, secret)


# --- authentication (backend side) -------------------------------------------------------

AUTH_OK = _msg(m.AUTHENTICATION, _I32.pack(m.AUTH_OK))
AUTH_CLEARTEXT_PASSWORD = _msg(m.AUTHENTICATION, _I32.pack(m.AUTH_CLEARTEXT_PASSWORD))


def auth_ok() -> bytes:
    return AUTH_OK


def auth_cleartext_password() -> bytes:
    return AUTH_CLEARTEXT_PASSWORD


def auth_md5_password(salt: bytes) -> bytes:
    if len(salt) != 4:
        raise ValueError("md5 salt must be 4 bytes")
    return _msg(m.AUTHENTICATION, _I32.pack(m.AUTH_MD5_PASSWORD) + salt)


def auth_sasl(mechanisms: Iterable[str]) -> bytes:
    body = _I32.pack(m.AUTH_SASL) + b"".join(_cstr(x) for x in mechanisms) + b"\0"
    return _msg(m.AUTHENTICATION, body)


def auth_sasl_continue(data: bytes) -> bytes:
    return _msg(m.AUTHENTICATION, _I32.pack(m.AUTH_SASL_CONTINUE) + data)


def auth_sasl_final(data: bytes) -> bytes:
    return _msg(m.AUTHENTICATION, _I32.pack(m.AUTH_SASL_FINAL) + data)


# --- authentication (frontend side) ------------------------------------------------------


def password_message(password: str) -> bytes:
    """PasswordMessage: cleartext password or an ``md5...`` response."""
    return _msg(m.PASSWORD_MESSAGE, _cstr(password))


def sasl_initial_response(mechanism: str, data: bytes) -> bytes:
    return _msg(m.PASSWORD_MESSAGE, _cstr(mechanism) + _I32.pack(len(data)) + data)


def sasl_response(data: bytes) -> bytes:
    return _msg(m.PASSWORD_MESSAGE, data)


# --- session status ----------------------------------------------------------------------


def parameter_status(name: str, value: str) -> bytes:
    return _msg(m.PARAMETER_STATUS, _cstr(name) + _cstr(value))


def backend_key_data(pid: int, secret: int) -> bytes:
    return _msg(m.BACKEND_KEY_DATA, _II.pack(pid, secret))


READY_FOR_QUERY_IDLE = _msg(m.READY_FOR_QUERY, b"I")
READY_FOR_QUERY_IN_TRANSACTION = _msg(m.READY_FOR_QUERY, b"T")
READY_FOR_QUERY_FAILED = _msg(m.READY_FOR_QUERY, b"E")
_RFQ = {
    m.TX_IDLE: READY_FOR_QUERY_IDLE,
    m.TX_IN_TRANSACTION: READY_FOR_QUERY_IN_TRANSACTION,
    m.TX_FAILED: READY_FOR_QUERY_FAILED,
}


def ready_for_query(status: str | int = "I") -> bytes:
    """ReadyForQuery; status ``"I"``, ``"T"``, ``"E"`` (or the TX_* ints)."""
    key = ord(status) if isinstance(status, str) else status
    try:
        return _RFQ[key]
    except KeyError:
        raise ValueError(f"invalid transaction status {status!r}") from None


def negotiate_protocol_version(newest_minor: int, unrecognized: Sequence[str] = ()) -> bytes:
    body = Struct("!ii").pack(newest_minor, len(unrecognized))
    return _msg(m.NEGOTIATE_PROTOCOL_VERSION, body + b"".join(_cstr(o) for o in unrecognized))


# --- errors and notices ------------------------------------------------------------------


def error_fields(mtype: int, fields: Mapping[str, str]) -> bytes:
    """ErrorResponse/NoticeResponse (``mtype``) from a ``{code: value}`` mapping."""
    parts = []
    for code, value in fields.items():
        if len(code) != 1 or code == "\0":
            raise ValueError("error field codes are single non-NUL characters")
        parts.append(code.encode("latin-1") + _cstr(value))
    return _msg(mtype, b"".join(parts) + b"\0")


def _error(
    mtype: int,
    severity: str,
    sqlstate: str,
    message: str,
    detail: str | None,
    hint: str | None,
) -> bytes:
    fields = {"S": severity, "V": severity, "C": sqlstate, "M": message}
    if detail is not None:
        fields["D"] = detail
    if hint is not None:
        fields["H"] = hint
    return error_fields(mtype, fields)


def error_response(
    severity: str,
    sqlstate: str,
    message: str,
    detail: str | None = None,
    hint: str | None = None,
) -> bytes:
    """ErrorResponse with fields S, V, C, M[, D][, H]; severity e.g. ``"FATAL"``."""
    return _error(m.ERROR_RESPONSE, severity, sqlstate, message, detail, hint)


def notice_response(
    severity: str,
    sqlstate: str,
    message: str,
    detail: str | None = None,
    hint: str | None = None,
) -> bytes:
    """NoticeResponse; severity e.g. ``"NOTICE"``, ``"WARNING"``."""
    return _error(m.NOTICE_RESPONSE, severity, sqlstate, message, detail, hint)


# --- frontend queries --------------------------------------------------------------------

SYNC = _msg(m.SYNC, b"")
FLUSH = _msg(m.FLUSH, b"")
TERMINATE = _msg(m.TERMINATE, b"")
COPY_DONE = _msg(m.COPY_DONE, b"")


def query(sql: str) -> bytes:
    return _msg(m.QUERY, _cstr(sql))


def parse(name: str, query: str, param_types: Sequence[int] = ()) -> bytes:
    body = (
        _cstr(name)
        + _cstr(query)
        + Struct(f"!h{len(param_types)}I").pack(len(param_types), *param_types)
    )
    return _msg(m.PARSE, body)


def bind(
    portal: str,
    statement: str,
    param_formats: Sequence[int] = (),
    params: Sequence[bytes | None] = (),
    result_formats: Sequence[int] = (),
) -> bytes:
    parts = [
        _cstr(portal),
        _cstr(statement),
        Struct(f"!h{len(param_formats)}h").pack(len(param_formats), *param_formats),
        _I16.pack(len(params)),
    ]
    for p in params:
        if p is None:
            parts.append(_I32.pack(-1))
        else:
            parts.append(_I32.pack(len(p)))
            parts.append(bytes(p))
    parts.append(Struct(f"!h{len(result_formats)}h").pack(len(result_formats), *result_formats))
    return _msg(m.BIND, b"".join(parts))


def bind_raw(portal: str, statement: str, rest: bytes) -> bytes:
    """Re-encode a Bind from :func:`messages.decode_bind` parts (e.g. to rename the
    statement)."""
    return _msg(m.BIND, _cstr(portal) + _cstr(statement) + rest)


def describe(kind: str, name: str = "") -> bytes:
    """Describe a statement (``kind="S"``) or portal (``"P"``)."""
    if kind not in ("S", "P"):
        raise ValueError("kind must be 'S' or 'P'")
    return _msg(m.DESCRIBE, kind.encode() + _cstr(name))


def execute(portal: str = "", max_rows: int = 0) -> bytes:
    return _msg(m.EXECUTE, _cstr(portal) + _I32.pack(max_rows))


def close(kind: str, name: str = "") -> bytes:
    """Close a statement (``kind="S"``) or portal (``"P"``)."""
    if kind not in ("S", "P"):
        raise ValueError("kind must be 'S' or 'P'")
    return _msg(m.CLOSE, kind.encode() + _cstr(name))


def sync() -> bytes:
    return SYNC


def flush() -> bytes:
    return FLUSH


def terminate() -> bytes:
    return TERMINATE


def copy_data(data: bytes) -> bytes:
    return _msg(m.COPY_DATA, bytes(data))


def copy_done() -> bytes:
    return COPY_DONE


def copy_fail(message: str) -> bytes:
    return _msg(m.COPY_FAIL, _cstr(message))


# --- backend results ---------------------------------------------------------------------

EMPTY_QUERY_RESPONSE = _msg(m.EMPTY_QUERY_RESPONSE, b"")
PARSE_COMPLETE = _msg(m.PARSE_COMPLETE, b"")
BIND_COMPLETE = _msg(m.BIND_COMPLETE, b"")
CLOSE_COMPLETE = _msg(m.CLOSE_COMPLETE, b"")
NO_DATA = _msg(m.NO_DATA, b"")


def command_complete(tag: str) -> bytes:
    return _msg(m.COMMAND_COMPLETE, _cstr(tag))


def empty_query_response() -> bytes:
    return EMPTY_QUERY_RESPONSE


# PostgreSQL's oid and typlen of the column types of the results pooler answers itself
TYPES = {
    "text": (TEXT_OID, -1),
    "int4": (23, 4),
    "int8": (20, 8),
    "bool": (16, 1),
    "timestamptz": (1184, 8),
    "numeric": (1700, -1),
    "float4": (700, 4),
}
_FIELD = Struct("!ihihih")


def row_description(columns: Sequence[str | tuple[str, str]]) -> bytes:
    """RowDescription, text format; a column is a name (type ``text``) or ``(name, type)``
    with a type named in :data:`TYPES`."""
    parts = [_I16.pack(len(columns))]
    for column in columns:
        name, kind = (column, "text") if isinstance(column, str) else column
        oid, typlen = TYPES[kind]
        parts.append(_cstr(name) + _FIELD.pack(0, 0, oid, typlen, -1, 0))
    return _msg(m.ROW_DESCRIPTION, b"".join(parts))


def data_row(values: Sequence[str | bytes | None]) -> bytes:
    """DataRow of text values; ``None`` is NULL."""
    parts = [_I16.pack(len(values))]
    for v in values:
        if v is None:
            parts.append(_I32.pack(-1))
        else:
            b = v.encode(_ENC, _ERRS) if isinstance(v, str) else bytes(v)
            parts.append(_I32.pack(len(b)))
            parts.append(b)
    return _msg(m.DATA_ROW, b"".join(parts))


def _text(value: object) -> str | bytes | None:
    """A value in PostgreSQL's text format: None is NULL, a bool ``t``/``f``, else ``str()``."""
    if value is None or isinstance(value, (str, bytes)):
        return value
    if isinstance(value, bool):
        return "t" if value else "f"
    return str(value)


def result_set(
    columns: Sequence[str | tuple[str, str]],
    rows: Iterable[Sequence[object]],
    tag: str | None = None,
    notices: Iterable[str] = (),
) -> bytes:
    """A result pooler answers itself (admin console, a virtual SHOW): NoticeResponse* then
    RowDescription DataRow* (none without columns: a command's result) then CommandComplete.

    Columns are as in :func:`row_description`; values are sent in text format (see
    ``_text``). ``tag`` defaults to ``"SELECT <row count>"``; a row whose width differs from
    the columns' raises ``ValueError``.
    """
    parts = [notice_response("NOTICE", "00000", notice) for notice in notices]
    count = 0
    if columns:
        parts.append(row_description(columns))
        for row in rows:
            if len(row) != len(columns):
                raise ValueError("row width differs from the number of columns")
            parts.append(data_row([_text(v) for v in row]))
            count += 1
    parts.append(command_complete(tag if tag is not None else f"SELECT {count}"))
    return b"".join(parts)
