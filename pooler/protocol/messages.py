"""Message type codes and decoders for the message bodies the pooler interprets.

Type codes are plain ``int`` constants (the value of the type byte, ``buf[start]``), so
hot-path comparisons are int comparisons. Some letters mean different things per
direction (``D`` is Describe from the client and DataRow from the server); the names
below say which one is meant.

Decoders take the message *body* (the bytes after the 5-byte header) as bytes, bytearray
or memoryview, e.g. ``decode_parameter_status(mv[start + 5:end])``. Text is decoded as
UTF-8 with ``surrogateescape``, so re-encoding a decoded name or query with
:mod:`pooler.protocol.build` reproduces the original bytes exactly, whatever the
client_encoding. Malformed bodies raise :class:`ProtocolError`.
"""

from __future__ import annotations

from struct import Struct
from typing import NamedTuple

from pooler.protocol.errors import ProtocolError

# --- frontend (client -> server) ---------------------------------------------------------
QUERY = ord("Q")
PARSE = ord("P")
BIND = ord("B")
DESCRIBE = ord("D")
EXECUTE = ord("E")
CLOSE = ord("C")
SYNC = ord("S")
FLUSH = ord("H")
FUNCTION_CALL = ord("F")
TERMINATE = ord("X")
PASSWORD_MESSAGE = ord("p")  # also SASLInitialResponse, SASLResponse, GSSResponse
COPY_DATA = ord("d")  # both directions
COPY_DONE = ord("c")  # both directions
COPY_FAIL = ord("f")

# --- backend (server -> client) ----------------------------------------------------------
AUTHENTICATION = ord("R")
PARAMETER_STATUS = ord("S")
BACKEND_KEY_DATA = ord("K")
READY_FOR_QUERY = ord("Z")
ERROR_RESPONSE = ord("E")
NOTICE_RESPONSE = ord("N")
ROW_DESCRIPTION = ord("T")
DATA_ROW = ord("D")
COMMAND_COMPLETE = ord("C")
EMPTY_QUERY_RESPONSE = ord("I")
PARSE_COMPLETE = ord("1")
BIND_COMPLETE = ord("2")
CLOSE_COMPLETE = ord("3")
NO_DATA = ord("n")
PORTAL_SUSPENDED = ord("s")
PARAMETER_DESCRIPTION = ord("t")
COPY_IN_RESPONSE = ord("G")
COPY_OUT_RESPONSE = ord("H")
COPY_BOTH_RESPONSE = ord("W")
NOTIFICATION_RESPONSE = ord("A")
FUNCTION_CALL_RESPONSE = ord("V")
NEGOTIATE_PROTOCOL_VERSION = ord("v")

FRONTEND_NAMES = {
    QUERY: "Query",
    PARSE: "Parse",
    BIND: "Bind",
    DESCRIBE: "Describe",
    EXECUTE: "Execute",
    CLOSE: "Close",
    SYNC: "Sync",
    FLUSH: "Flush",
    FUNCTION_CALL: "FunctionCall",
    TERMINATE: "Terminate",
    PASSWORD_MESSAGE: "PasswordMessage",
    COPY_DATA: "CopyData",
    COPY_DONE: "CopyDone",
    COPY_FAIL: "CopyFail",
}
BACKEND_NAMES = {
    AUTHENTICATION: "Authentication",
    PARAMETER_STATUS: "ParameterStatus",
    BACKEND_KEY_DATA: "BackendKeyData",
    READY_FOR_QUERY: "ReadyForQuery",
    ERROR_RESPONSE: "ErrorResponse",
    NOTICE_RESPONSE: "NoticeResponse",
    ROW_DESCRIPTION: "RowDescription",
    DATA_ROW: "DataRow",
    COMMAND_COMPLETE: "CommandComplete",
    EMPTY_QUERY_RESPONSE: "EmptyQueryResponse",
    PARSE_COMPLETE: "ParseComplete",
    BIND_COMPLETE: "BindComplete",
    CLOSE_COMPLETE: "CloseComplete",
    NO_DATA: "NoData",
    PORTAL_SUSPENDED: "PortalSuspended",
    PARAMETER_DESCRIPTION: "ParameterDescription",
    COPY_IN_RESPONSE: "CopyInResponse",
    COPY_OUT_RESPONSE: "CopyOutResponse",
    COPY_BOTH_RESPONSE: "CopyBothResponse",
    NOTIFICATION_RESPONSE: "NotificationResponse",
    FUNCTION_CALL_RESPONSE: "FunctionCallResponse",
    NEGOTIATE_PROTOCOL_VERSION: "NegotiateProtocolVersion",
    COPY_DATA: "CopyData",
    COPY_DONE: "CopyDone",
}

#: Backend messages that start COPY mode (CopyIn, CopyOut, CopyBoth).
COPY_RESPONSES = frozenset({COPY_IN_RESPONSE, COPY_OUT_RESPONSE, COPY_BOTH_RESPONSE})

# --- ReadyForQuery transaction status bytes ----------------------------------------------
TX_IDLE = ord("I")
TX_IN_TRANSACTION = ord("T")
TX_FAILED = ord("E")

# --- Authentication request codes --------------------------------------------------------
AUTH_OK = 0
AUTH_KERBEROS_V5 = 2
AUTH_CLEARTEXT_PASSWORD = 3
AUTH_MD5_PASSWORD = 5
AUTH_GSS = 7
AUTH_GSS_CONTINUE = 8
AUTH_SSPI = 9
AUTH_SASL = 10
AUTH_SASL_CONTINUE = 11
AUTH_SASL_FINAL = 12

_I16 = Struct("!h")
_I32 = Struct("!i")
_II = Struct("!ii")
_ENC = "utf-8"
_ERRS = "surrogateescape"


def message_name(mtype: int, frontend: bool) -> str:
    """Human name of a type byte, for logs: ``message_name(ord('Z'), False)``."""
    names = FRONTEND_NAMES if frontend else BACKEND_NAMES
    return names.get(mtype) or f"unknown({chr(mtype)!r})"


def _b(body: bytes | bytearray | memoryview) -> bytes:
    return body if type(body) is bytes else bytes(body)


def _cstr(body: bytes, pos: int) -> tuple[str, int]:
    """Read a NUL-terminated string at pos; return (text, position after the NUL)."""
    nul = body.find(b"\0", pos)
    if nul < 0:
        raise ProtocolError("invalid message format: missing string terminator")
    return body[pos:nul].decode(_ENC, _ERRS), nul + 1


# --- backend decoders --------------------------------------------------------------------


def decode_ready_for_query(body: bytes | bytearray | memoryview) -> int:
    """Transaction status byte: ``TX_IDLE``, ``TX_IN_TRANSACTION`` or ``TX_FAILED``."""
    if len(body) != 1:
        raise ProtocolError("invalid ReadyForQuery message")
    return body[0]


def decode_parameter_status(body: bytes | bytearray | memoryview) -> tuple[str, str]:
    """``(name, value)``."""
    b = _b(body)
    name, pos = _cstr(b, 0)
    value, pos = _cstr(b, pos)
    if pos != len(b):
        raise ProtocolError("invalid ParameterStatus message")
    return name, value


def decode_backend_key_data(body: bytes | bytearray | memoryview) -> tuple[int, int]:
    """``(pid, secret)`` of a protocol 3.0 BackendKeyData (4-byte secret)."""
    if len(body) != 8:
        raise ProtocolError("invalid BackendKeyData message (only 4-byte keys supported)")
    return _II.unpack_from(body, 0)


def decode_error_fields(body: bytes | bytearray | memoryview) -> dict[str, str]:
    """ErrorResponse/NoticeResponse fields as ``{code: value}``, e.g. ``{"S": "ERROR",
    "V": "ERROR", "C": "42P01", "M": "relation ... does not exist", ...}``."""
    b = _b(body)
    fields: dict[str, str] = {}
    pos, n = 0, len(b)
    while True:
        if pos >= n:
            raise ProtocolError("invalid error message: missing terminator")
        code = b[pos]
        if code == 0:
            if pos + 1 != n:
                raise ProtocolError("invalid error message: data after terminator")
            return fields
        fields[chr(code)], pos = _cstr(b, pos + 1)


class Authentication(NamedTuple):
    """An Authentication request: ``code`` (AUTH_*) and the bytes after it."""

    code: int
    data: bytes

    @property
    def salt(self) -> bytes:
        """The 4-byte salt of an AUTH_MD5_PASSWORD request."""
        return self.data

    @property
    def mechanisms(self) -> list[str]:
        """SASL mechanism names of an AUTH_SASL request."""
        return decode_sasl_mechanisms(self.data)


def decode_authentication(body: bytes | bytearray | memoryview) -> Authentication:
    b = _b(body)
    if len(b) < 4:
        raise ProtocolError("invalid Authentication message")
    (code,) = _I32.unpack_from(b, 0)
    data = b[4:]
    if code == AUTH_MD5_PASSWORD and len(data) != 4:
        raise ProtocolError("invalid AuthenticationMD5Password message")
    if code in (AUTH_OK, AUTH_CLEARTEXT_PASSWORD) and data:
        raise ProtocolError("invalid Authentication message")
    return Authentication(code, data)


def decode_sasl_mechanisms(data: bytes) -> list[str]:
    """The list of NUL-terminated names ended by an empty name (AuthenticationSASL)."""
    out: list[str] = []
    pos = 0
    while True:
        name, pos = _cstr(data, pos)
        if not name:
            if pos != len(data):
                raise ProtocolError("invalid AuthenticationSASL message")
            return out
        out.append(name)


def decode_command_complete(body: bytes | bytearray | memoryview) -> str:
    """The command tag, e.g. ``"SELECT 3"``, ``"BEGIN"``, ``"INSERT 0 1"``."""
    b = _b(body)
    tag, pos = _cstr(b, 0)
    if pos != len(b):
        raise ProtocolError("invalid CommandComplete message")
    return tag


def decode_copy_response(body: bytes | bytearray | memoryview) -> tuple[int, tuple[int, ...]]:
    """Copy{In,Out,Both}Response: ``(overall_format, per_column_formats)``."""
    b = _b(body)
    if len(b) < 3:
        raise ProtocolError("invalid CopyResponse message")
    fmt = b[0]
    (ncols,) = _I16.unpack_from(b, 1)
    if ncols < 0 or len(b) != 3 + 2 * ncols:
        raise ProtocolError("invalid CopyResponse message")
    return fmt, Struct(f"!{ncols}h").unpack_from(b, 3)


def decode_negotiate_protocol_version(
    body: bytes | bytearray | memoryview,
) -> tuple[int, list[str]]:
    """``(newest_minor_supported, unrecognized_protocol_options)``."""
    b = _b(body)
    if len(b) < 8:
        raise ProtocolError("invalid NegotiateProtocolVersion message")
    minor, count = _II.unpack_from(b, 0)
    names: list[str] = []
    pos = 8
    for _ in range(count):
        name, pos = _cstr(b, pos)
        names.append(name)
    if pos != len(b):
        raise ProtocolError("invalid NegotiateProtocolVersion message")
    return minor, names


class Field(NamedTuple):
    """One RowDescription column."""

    name: str
    table_oid: int
    column: int
    type_oid: int
    type_size: int
    type_modifier: int
    format: int


_FIELD = Struct("!ihihih")


def decode_row_description(body: bytes | bytearray | memoryview) -> list[Field]:
    b = _b(body)
    if len(b) < 2:
        raise ProtocolError("invalid RowDescription message")
    (count,) = _I16.unpack_from(b, 0)
    pos = 2
    out = []
    for _ in range(count):
        name, pos = _cstr(b, pos)
        if pos + _FIELD.size > len(b):
            raise ProtocolError("invalid RowDescription message")
        out.append(Field(name, *_FIELD.unpack_from(b, pos)))
        pos += _FIELD.size
    if pos != len(b):
        raise ProtocolError("invalid RowDescription message")
    return out


def decode_data_row(body: bytes | bytearray | memoryview) -> list[bytes | None]:
    """Column values as raw bytes (``None`` for NULL)."""
    b = _b(body)
    if len(b) < 2:
        raise ProtocolError("invalid DataRow message")
    (count,) = _I16.unpack_from(b, 0)
    pos, n = 2, len(b)
    out: list[bytes | None] = []
    for _ in range(count):
        if pos + 4 > n:
            raise ProtocolError("invalid DataRow message")
        (size,) = _I32.unpack_from(b, pos)
        pos += 4
        if size == -1:
            out.append(None)
            continue
        if size < 0 or pos + size > n:
            raise ProtocolError("invalid DataRow message")
        out.append(b[pos : pos + size])
        pos += size
    if pos != n:
        raise ProtocolError("invalid DataRow message")
    return out


# --- frontend decoders -------------------------------------------------------------------


def decode_query(body: bytes | bytearray | memoryview) -> str:
    """The SQL text of a simple Query."""
    b = _b(body)
    sql, pos = _cstr(b, 0)
    if pos != len(b):
        raise ProtocolError("invalid Query message")
    return sql


class Parse(NamedTuple):
    name: str
    query: str
    param_types: tuple[int, ...]


def decode_parse(body: bytes | bytearray | memoryview) -> Parse:
    """Parse: statement name (``""`` = unnamed), query text, parameter type OIDs."""
    b = _b(body)
    name, pos = _cstr(b, 0)
    query, pos = _cstr(b, pos)
    if pos + 2 > len(b):
        raise ProtocolError("invalid Parse message")
    (count,) = _I16.unpack_from(b, pos)
    pos += 2
    if count < 0 or pos + 4 * count != len(b):
        raise ProtocolError("invalid Parse message")
    # OIDs are unsigned on the wire
    return Parse(name, query, Struct(f"!{count}I").unpack_from(b, pos))


class Bind(NamedTuple):
    portal: str
    statement: str
    rest: bytes  # formats, parameters and result formats, undecoded


def decode_bind(body: bytes | bytearray | memoryview) -> Bind:
    """Bind: portal and statement names; the remainder is kept raw for re-encoding."""
    b = _b(body)
    portal, pos = _cstr(b, 0)
    statement, pos = _cstr(b, pos)
    return Bind(portal, statement, b[pos:])


def _kind_name(body: bytes | bytearray | memoryview, what: str) -> tuple[str, str]:
    b = _b(body)
    if len(b) < 2 or b[0] not in (0x53, 0x50):  # 'S', 'P'
        raise ProtocolError(f"invalid {what} message")
    name, pos = _cstr(b, 1)
    if pos != len(b):
        raise ProtocolError(f"invalid {what} message")
    return chr(b[0]), name


def decode_close(body: bytes | bytearray | memoryview) -> tuple[str, str]:
    """Close: ``(kind, name)`` with kind ``"S"`` (statement) or ``"P"`` (portal)."""
    return _kind_name(body, "Close")


def decode_describe(body: bytes | bytearray | memoryview) -> tuple[str, str]:
    """Describe: ``(kind, name)`` with kind ``"S"`` (statement) or ``"P"`` (portal)."""
    return _kind_name(body, "Describe")


def decode_execute(body: bytes | bytearray | memoryview) -> tuple[str, int]:
    """Execute: ``(portal, max_rows)``."""
    b = _b(body)
    portal, pos = _cstr(b, 0)
    if pos + 4 != len(b):
        raise ProtocolError("invalid Execute message")
    return portal, _I32.unpack_from(b, pos)[0]


def decode_password(body: bytes | bytearray | memoryview) -> str:
    """PasswordMessage: the cleartext password or ``md5...`` response."""
    b = _b(body)
    pw, pos = _cstr(b, 0)
    if pos != len(b):
        raise ProtocolError("invalid password packet size")
    return pw


def decode_sasl_initial_response(body: bytes | bytearray | memoryview) -> tuple[str, bytes]:
    """SASLInitialResponse: ``(mechanism, client_first_data)`` (-1 length gives ``b""``)."""
    b = _b(body)
    mech, pos = _cstr(b, 0)
    if pos + 4 > len(b):
        raise ProtocolError("malformed SASLInitialResponse message")
    (size,) = _I32.unpack_from(b, pos)
    pos += 4
    if size == -1:
        size = 0
    if size < 0 or pos + size != len(b):
        raise ProtocolError("malformed SASLInitialResponse message")
    return mech, b[pos:]


def decode_sasl_response(body: bytes | bytearray | memoryview) -> bytes:
    """SASLResponse: the raw SASL data."""
    return _b(body)
