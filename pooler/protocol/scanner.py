"""Find PostgreSQL message boundaries in a relayed byte stream without copying it.

The relay forwards every chunk it reads as it is; the scanner only walks the 5-byte headers
and hands back the bodies of the few message types whose content matters (ReadyForQuery,
ParameterStatus, ErrorResponse, ...). Bodies of other messages are skipped, however large,
so a 100 MB DataRow is never held in memory. Headers and wanted bodies split across chunks
are reassembled. Pure: no I/O, tested on byte strings.
"""

from __future__ import annotations

from struct import Struct, unpack_from
from types import SimpleNamespace

try:
    import cython
except ImportError:  # Cython compiles this module where it can (scanner.pxd); pure Python else
    cython = SimpleNamespace(compiled=False)

_LENGTH = Struct("!i")

MAX_MESSAGE = 1 << 30  # PostgreSQL's own limit for a message (1 GiB)
MAX_WANTED_BODY = 1 << 20  # a wanted body larger than this is skipped, not collected


class StreamError(Exception):
    """The byte stream is not a sequence of PostgreSQL messages."""


class MessageScanner:
    """Walk typed messages (1 type byte + int32 length) across arbitrary chunks."""

    __slots__ = ("_body", "_header", "_need", "_type", "wanted")

    def __init__(self, wanted: frozenset[int] | set[int]) -> None:
        self.wanted = frozenset(wanted)
        self._need = 0  # body bytes of the current message still to come
        self._header = bytearray()  # a header split across chunks
        self._body: bytearray | None = None  # a wanted body split across chunks
        self._type = 0

    @property
    def at_boundary(self) -> bool:
        """True when the stream so far ends exactly at a message boundary."""
        return self._need == 0 and not self._header

    @property
    def partial_len(self) -> int:
        """How many of the last bytes fed belong to a message that is still incomplete and
        may be wanted (a header not yet whole, or a wanted body being collected); a relay
        that may drop wanted messages holds them back until the message is whole."""
        if self._header:
            return len(self._header)
        if self._body is not None:
            return 5 + len(self._body)
        return 0

    def feed(self, data: bytes) -> list[tuple[int, bytes | None, int]]:
        """Consume a chunk; return (type, body, end) for every wanted message.

        `end` is the offset in `data` just past the message. `body` is None for a wanted
        message too large to collect (it is still reported, when its header is read).
        """
        out: list[tuple[int, bytes | None, int]] = []
        i = 0
        n = len(data)
        wanted = self.wanted
        max_wanted = MAX_WANTED_BODY
        if not self._need and not self._header:
            # Fast path (the usual chunk: whole messages): walk them with locals only; the
            # general loop below takes over at the first partial or oversized one.
            length_at = _LENGTH.unpack_from
            compiled = cython.compiled
            while n - i >= 5:
                msg_type = data[i]
                if compiled:  # four byte reads in C; unsigned, so a length of 2 GiB or
                    # more leaves the fast path too (the general loop says what is wrong)
                    length = data[i + 1] << 24 | data[i + 2] << 16 | data[i + 3] << 8 | data[i + 4]
                else:
                    (length,) = length_at(data, i + 1)
                end = i + 1 + length
                if end > n or length < 4 or length > max_wanted:
                    break
                if msg_type in wanted:
                    out.append((msg_type, data[i + 5 : end], end))
                i = end
        while i < n:
            if self._need:
                take = self._need if self._need <= n - i else n - i
                if self._body is not None:
                    self._body += data[i : i + take]
                i += take
                self._need -= take
                if self._need == 0 and self._body is not None:
                    out.append((self._type, bytes(self._body), i))
                    self._body = None
                continue
            if self._header:
                missing = 5 - len(self._header)
                self._header += data[i : i + missing]
                i += missing
                if len(self._header) < 5:
                    break
                msg_type = self._header[0]
                (length,) = unpack_from("!i", self._header, 1)
                self._header.clear()
            elif n - i >= 5:
                msg_type = data[i]
                (length,) = unpack_from("!i", data, i + 1)
                i += 5
            else:
                self._header += data[i:]
                break
            if length < 4 or length > MAX_MESSAGE:
                raise StreamError(f"invalid message length {length} for type {chr(msg_type)!r}")
            body_len = length - 4
            if msg_type in wanted and body_len <= max_wanted:
                if n - i >= body_len:
                    i += body_len
                    out.append((msg_type, data[i - body_len : i], i))
                else:
                    self._body = bytearray(data[i:])
                    self._type = msg_type
                    self._need = body_len - (n - i)
                    i = n
            else:
                if msg_type in wanted:
                    out.append((msg_type, None, i))
                take = body_len if body_len <= n - i else n - i
                i += take
                self._need = body_len - take
        return out
