"""Sans-I/O PostgreSQL v3 wire protocol: framing, message codes and decoders, encoders,
and authentication (md5, SCRAM-SHA-256). No asyncio, no sockets.

- :mod:`.framing`   startup packet parsing, :class:`MessageSplitter` (hot path)
- :mod:`.messages`  type codes and body decoders
- :mod:`.build`     message encoders
- :mod:`.auth`      password verification and SCRAM client/server
- :mod:`.errors`    :class:`PgError`, :class:`ProtocolError`, :class:`AuthFailed`
"""

from pooler.protocol.errors import AuthFailed, PgError, ProtocolError
from pooler.protocol.framing import (
    CHUNK,
    HEAD,
    MESSAGE,
    CancelRequest,
    GSSENCRequest,
    MessageSplitter,
    SSLRequest,
    StartupPacket,
    iter_messages,
    read_startup,
)

__all__ = [
    "CHUNK",
    "HEAD",
    "MESSAGE",
    "AuthFailed",
    "CancelRequest",
    "GSSENCRequest",
    "MessageSplitter",
    "PgError",
    "ProtocolError",
    "SSLRequest",
    "StartupPacket",
    "iter_messages",
    "read_startup",
]
