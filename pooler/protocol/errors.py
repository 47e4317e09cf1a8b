"""Exceptions of the protocol layer.

Every exception carries a PostgreSQL SQLSTATE so the server layer can turn it into an
ErrorResponse with one line::

    except PgError as e:
        transport.write(build.error_response("FATAL", e.sqlstate, e.message))

Messages never contain passwords, secrets or other credentials.
"""

from __future__ import annotations

PROTOCOL_VIOLATION = "08P01"
FEATURE_NOT_SUPPORTED = "0A000"
INVALID_AUTHORIZATION_SPECIFICATION = "28000"
INVALID_PASSWORD = "28P01"
CHARACTER_NOT_IN_REPERTOIRE = "22021"


class PgError(Exception):
    """Base class: an error to report to a peer as an ErrorResponse."""

    default_sqlstate = PROTOCOL_VIOLATION

    def __init__(self, message: str, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.sqlstate = sqlstate or self.default_sqlstate

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, {self.sqlstate!r})"


class ProtocolError(PgError):
    """The peer broke the wire protocol (bad length, bad layout, unsupported version...)."""


class AuthFailed(PgError):
    """Authentication failed: wrong password, or an exchange that cannot succeed."""

    default_sqlstate = INVALID_PASSWORD

    def __init__(
        self, message: str = "password authentication failed", sqlstate: str | None = None
    ):
        super().__init__(message, sqlstate)
