"""Framing of the PostgreSQL v3 byte stream: the untyped startup packet and typed messages.

Startup
-------
:func:`read_startup` parses the first packet a client sends (``int32 length`` including
itself, ``int32 code``, payload) into a :class:`StartupPacket`, :class:`SSLRequest`,
:class:`GSSENCRequest` or :class:`CancelRequest`, returning ``(message, consumed)``, or
``None`` while the packet is incomplete. After an SSLRequest/GSSENCRequest the client sends
another startup packet (on the encrypted channel, or in clear after an ``N`` answer).

Typed messages
--------------
Every later message is ``type byte + int32 length (including itself, not the type) + body``.
:class:`MessageSplitter` finds message boundaries in a stream fed in arbitrary chunks and
reports them as *positions* in its buffer, so a proxy can forward byte ranges without
building per-message objects. Each event is a 4-tuple of ints ``(kind, type, start, end)``
indexing ``splitter.buffer``:

``MESSAGE``
    a complete message: ``buffer[start:end]`` is the whole message, header included;
    the body is ``buffer[start + 5:end]``.
``HEAD``
    the beginning of a message larger than ``max_buffered`` that is not complete yet:
    ``buffer[start:end]`` holds the 5-byte header plus whatever body bytes have arrived,
    at least ``head_size`` bytes of the message (so a consumer can read a bounded prefix:
    a statement name, a first keyword).
    The message is *not* accumulated: the rest of it is passed through as ``CHUNK`` events.
    ``splitter.remaining`` is the number of body bytes still to come.
``CHUNK``
    further body bytes of the streamed message (``type`` repeats the message type).
    After the last chunk ``splitter.remaining == 0`` and normal framing resumes.

Forwarding every event's range in order reproduces the stream exactly, so a relay can
treat the three kinds alike and look only at the few messages it cares about::

    splitter = MessageSplitter(max_buffered=64 * 1024)

    def data_received(data: bytes) -> None:
        splitter.feed(data)
        buf = splitter.buffer              # fetch after feed(): it may be a new object
        for kind, mtype, start, end in splitter:
            if kind == MESSAGE and mtype == READY_FOR_QUERY:
                tx_status = buf[start + 5]  # b"I", b"T" or b"E" as an int
            out.write(buf[start:end])     # or memoryview(buf)[start:end]

Positions stay valid until the next :meth:`MessageSplitter.feed` (or
:meth:`MessageSplitter.forget_reported`). If the consumer stops
iterating early (``break``), the events not yet seen are produced again by the next
iteration; nothing is lost. Complete messages are always reported as ``MESSAGE``, even
if larger than ``max_buffered`` (they are already in memory); types listed in
``always_buffer`` (e.g. Parse, ErrorResponse) are never streamed, only bounded by
``max_length``. ``max_lengths`` gives some types a lower limit (PostgreSQL's 10,000 bytes
for Sync, Describe...); a type given a negative limit is not accepted at all.

:func:`iter_messages` is the simple, allocating variant for tests and cold paths.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from struct import Struct

from pooler.protocol.errors import (
    CHARACTER_NOT_IN_REPERTOIRE,
    FEATURE_NOT_SUPPORTED,
    INVALID_AUTHORIZATION_SPECIFICATION,
    ProtocolError,
)

__all__ = [
    "CANCEL_REQUEST_CODE",
    "CHUNK",
    "GSSENC_REQUEST_CODE",
    "HEAD",
    "MAX_MESSAGE_LENGTH",
    "MAX_STARTUP_PACKET_LENGTH",
    "MESSAGE",
    "PROTOCOL_3_0",
    "SSL_REQUEST_CODE",
    "CancelRequest",
    "GSSENCRequest",
    "MessageSplitter",
    "SSLRequest",
    "StartupPacket",
    "iter_messages",
    "read_startup",
]

PROTOCOL_3_0 = 3 << 16  # 196608
CANCEL_REQUEST_CODE = 80877102  # 1234 << 16 | 5678
SSL_REQUEST_CODE = 80877103  # 1234 << 16 | 5679
GSSENC_REQUEST_CODE = 80877104  # 1234 << 16 | 5680
MAX_STARTUP_PACKET_LENGTH = 10000  # PostgreSQL's limit (pqcomm.h)
MAX_MESSAGE_LENGTH = 1 << 30  # PostgreSQL's PQ_LARGE_MESSAGE_LIMIT is 1 GiB - 1

MESSAGE = 0
HEAD = 1
CHUNK = 2

_I32 = Struct("!i")
_II = Struct("!ii")
_III = Struct("!iii")
_U32 = Struct("!I")
_u32_from = _U32.unpack_from


# --------------------------------------------------------------------------- startup


@dataclass(frozen=True, slots=True)
class StartupPacket:
    """A StartupMessage. ``params`` always holds ``user`` and ``database``."""

    protocol: int
    params: dict[str, str] = field(default_factory=dict)

    @property
    def user(self) -> str:
        return self.params["user"]

    @property
    def database(self) -> str:
        return self.params["database"]

    @property
    def options(self) -> str | None:
        return self.params.get("options")

    @property
    def application_name(self) -> str | None:
        return self.params.get("application_name")

    @property
    def replication(self) -> str | None:
        """The raw ``replication`` value (``true``/``database``/...), None if absent."""
        return self.params.get("replication")

    @property
    def minor_version(self) -> int:
        return self.protocol & 0xFFFF

    @property
    def protocol_options(self) -> dict[str, str]:
        """``_pq_.*`` protocol extension options; the server must NegotiateProtocolVersion."""
        return {k: v for k, v in self.params.items() if k.startswith("_pq_.")}


@dataclass(frozen=True, slots=True)
class SSLRequest:
    """The client asks for TLS; answer one byte, ``S`` or ``N``."""


@dataclass(frozen=True, slots=True)
class GSSENCRequest:
    """The client asks for GSSAPI encryption; answer ``N`` to refuse."""


@dataclass(frozen=True, slots=True)
class CancelRequest:
    """Cancel the query running on the session identified by (pid, secret)."""

    pid: int
    secret: int = field(repr=False)


def read_startup(
    buf: bytes | bytearray | memoryview,
) -> tuple[StartupPacket | SSLRequest | GSSENCRequest | CancelRequest, int] | None:
    """Parse the untyped first packet at the start of ``buf``.

    Returns ``(message, bytes_consumed)`` or ``None`` if more bytes are needed. Bytes after
    the packet are left alone (``consumed`` says where they start). Raises
    :class:`ProtocolError` with PostgreSQL's message and SQLSTATE for invalid packets.
    """
    n = len(buf)
    if n < 4:
        return None
    (length,) = _I32.unpack_from(buf, 0)
    if length < 8 or length > MAX_STARTUP_PACKET_LENGTH:
        raise ProtocolError("invalid length of startup packet")
    if n < length:
        return None
    (code,) = _I32.unpack_from(buf, 4)
    if code in (SSL_REQUEST_CODE, GSSENC_REQUEST_CODE):
        if length != 8:
            raise ProtocolError("invalid length of startup packet")
        return (SSLRequest() if code == SSL_REQUEST_CODE else GSSENCRequest()), 8
    if code == CANCEL_REQUEST_CODE:
        if length != 16:
            raise ProtocolError("invalid length of query cancel packet")
        _, pid, secret = _III.unpack_from(buf, 4)
        return CancelRequest(pid, secret), 16
    major, minor = code >> 16, code & 0xFFFF
    if major != 3:
        raise ProtocolError(
            f"unsupported frontend protocol {major}.{minor}: server supports 3.0 to 3.0",
            FEATURE_NOT_SUPPORTED,
        )
    return StartupPacket(code, _startup_params(bytes(buf[8:length]))), length


def _startup_params(payload: bytes) -> dict[str, str]:
    if not payload or payload[-1] != 0:
        raise ProtocolError("invalid startup packet layout: expected terminator as last byte")
    body = payload[:-1]  # key\0value\0 pairs
    if body and body[-1] != 0:
        raise ProtocolError("invalid startup packet layout: expected terminator as last byte")
    parts = body[:-1].split(b"\0") if body else []
    if len(parts) % 2:
        raise ProtocolError("invalid startup packet layout: expected terminator as last byte")
    params: dict[str, str] = {}
    try:
        for i in range(0, len(parts), 2):
            key = parts[i].decode()
            if not key:
                raise ProtocolError("invalid startup packet layout: empty parameter name")
            params[key] = parts[i + 1].decode()
    except UnicodeDecodeError:
        raise ProtocolError(
            'invalid byte sequence for encoding "UTF8" in startup packet',
            CHARACTER_NOT_IN_REPERTOIRE,
        ) from None
    user = params.get("user")
    if not user:
        raise ProtocolError(
            "no PostgreSQL user name specified in startup packet",
            INVALID_AUTHORIZATION_SPECIFICATION,
        )
    if not params.get("database"):
        params["database"] = user
    return params


# --------------------------------------------------------------------------- typed messages


_LIMIT_TABLES: dict[tuple[int, int], tuple[Mapping[int, int] | None, tuple[int, ...]]] = {}


def _limit_table(max_length: int, max_lengths: Mapping[int, int] | None) -> tuple[int, ...]:
    """The per-type length limits as a 256-entry table, built once per (limit, mapping):
    every client's splitter gets one (building it per connection doubled a login's cost)."""
    key = (max_length, id(max_lengths))
    cached = _LIMIT_TABLES.get(key)
    if cached is not None and cached[0] is max_lengths:
        return cached[1]
    table = [max_length] * 256
    for mtype, limit in (max_lengths or {}).items():
        table[mtype] = min(limit, max_length)
    _LIMIT_TABLES[key] = (max_lengths, tuple(table))
    return _LIMIT_TABLES[key][1]


class MessageSplitter:
    """Incremental framing of typed messages; see the module docstring for the event API.

    ``max_buffered``: an incomplete message whose total size (type byte included) exceeds
    this is streamed as HEAD + CHUNK events instead of being accumulated.
    ``max_length``: largest accepted length field; above it (or below 4) ProtocolError.
    ``always_buffer``: message types that are never streamed (their bodies get parsed).
    ``head_size``: a streamed message is reported (HEAD) once this many of its bytes are in.
    ``max_lengths``: per-type limits below ``max_length``; a negative one refuses the type.
    """

    __slots__ = (
        "_always",
        "_limits",
        "_pos",
        "_stream_type",
        "buffer",
        "head_size",
        "max_buffered",
        "max_length",
        "remaining",
    )

    def __init__(
        self,
        max_buffered: int = 64 * 1024,
        max_length: int = MAX_MESSAGE_LENGTH,
        always_buffer: Iterable[int] = (),
        head_size: int = 0,
        max_lengths: Mapping[int, int] | None = None,
    ) -> None:
        self.max_buffered = max_buffered
        self.max_length = max_length
        self.head_size = head_size
        self._limits = _limit_table(max_length, max_lengths)
        self._always = frozenset(always_buffer)
        #: bytes or bytearray the event positions refer to; replaced by feed().
        self.buffer: bytes | bytearray = b""
        self._pos = 0  # first byte not yet reported
        #: body bytes of the streamed message still to come (0 when not streaming)
        self.remaining = 0
        self._stream_type = 0

    @property
    def streaming(self) -> bool:
        """True while in the middle of a streamed (HEAD already reported) message."""
        return self.remaining > 0

    @property
    def pending(self) -> int:
        """Bytes held but not reported yet (a partial message, or events not iterated)."""
        return len(self.buffer) - self._pos

    def at_boundary(self) -> bool:
        """True when everything fed so far has been reported and ends a message."""
        return self.remaining == 0 and self._pos == len(self.buffer)

    def lone(self, data: bytes) -> int:
        """len(data) when `data` is exactly one whole message (more than a header) and
        everything fed before was reported and ended a message (`at_boundary`): a relay
        may then take it as it is, without feeding it (no limit applies to a message that
        arrived whole in one chunk). Else 0."""
        n = len(data)
        if (
            n > 5
            and self.remaining == 0
            and self._pos == len(self.buffer)
            and n == 1 + ((data[1] << 24) | (data[2] << 16) | (data[3] << 8) | data[4])
        ):
            return n
        return 0

    def forget_reported(self) -> None:
        """Drop the buffer if every byte in it was reported (a large chunk is not kept
        alive while its client is idle)."""
        if self._pos == len(self.buffer) and self._pos:
            self.buffer = b""
            self._pos = 0

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append a chunk. ``bytes`` are kept by reference when nothing is pending."""
        buf = self.buffer
        pos = self._pos
        if pos == len(buf):
            self.buffer = data if type(data) is bytes else bytes(data)
        elif type(buf) is bytearray:
            del buf[:pos]
            buf += data
        else:
            nbuf = bytearray(memoryview(buf)[pos:])
            nbuf += data
            self.buffer = nbuf
        self._pos = 0

    def __iter__(self) -> Iterator[tuple[int, int, int, int]]:
        buf = self.buffer
        n = len(buf)
        pos = self._pos
        unpack = _u32_from
        limits = self._limits
        while True:
            if self.remaining:
                if pos >= n:
                    return
                end = pos + self.remaining
                if end > n:
                    end = n
                self.remaining -= end - pos
                self._pos = end
                yield CHUNK, self._stream_type, pos, end
                pos = end
                continue
            if n - pos < 5:
                return
            mtype = buf[pos]
            (length,) = unpack(buf, pos + 1)
            if length < 4 or length > limits[mtype]:
                if limits[mtype] < 0:
                    raise ProtocolError(f"invalid frontend message type {mtype}")
                raise ProtocolError(
                    f"invalid message length {length} for message type {mtype:#04x}"
                )
            end = pos + 1 + length
            if end <= n:
                self._pos = end
                yield MESSAGE, mtype, pos, end
                pos = end
            elif (
                length + 1 > self.max_buffered
                and mtype not in self._always
                and n - pos >= self.head_size
            ):
                self._stream_type = mtype
                self.remaining = end - n
                self._pos = n
                yield HEAD, mtype, pos, n
                pos = n
            else:
                return


def iter_messages(data: bytes | bytearray | memoryview) -> list[tuple[int, bytes]]:
    """Split a complete byte string into ``[(type, body), ...]`` (allocating; cold paths).

    Raises :class:`ProtocolError` on a bad length or a truncated trailing message.
    """
    data = bytes(data)
    out: list[tuple[int, bytes]] = []
    pos, n = 0, len(data)
    while pos < n:
        if n - pos < 5:
            raise ProtocolError("truncated message header")
        (length,) = _u32_from(data, pos + 1)
        if length < 4 or length > MAX_MESSAGE_LENGTH:
            raise ProtocolError(f"invalid message length {length}")
        end = pos + 1 + length
        if end > n:
            raise ProtocolError("truncated message")
        out.append((data[pos], data[pos + 5 : end]))
        pos = end
    return out
