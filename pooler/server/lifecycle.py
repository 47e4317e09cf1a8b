"""The connection lifecycle: the named states of a client and of a server connection, and
the moves between them (docs/architecture.md, "A client's life" and "A server's life").

Each connection is in exactly one state, and one method moves it (`ClientConnection.become`,
`ServerConnection.become`), along the arrows of `CLIENT_NEXT` / `SERVER_NEXT` only; every move
is a debug log line. Under POOLER_STRICT_STATES=1 (set for every test and the poolers they
start) a move the table lacks raises `IllegalTransition`; in production it is logged as an
error and made anyway (the connection is closed or reused as the caller decided).

The moves made once per transaction (a client linked to an idle server and back, the server
back to the idle list) are checked inline by their callers when debug logging is off: the
same test against the same table, without the method call.

Pure: no I/O, no asyncio; the tables are tested on their own (tests/unit/server).
"""

from __future__ import annotations

import enum
import os

from pooler.logs import LogContext, log

# Tests set POOLER_STRICT_STATES=1: an illegal transition raises there.
STRICT_STATES = os.environ.get("POOLER_STRICT_STATES") == "1"


class IllegalTransition(RuntimeError):
    """A connection was moved along an arrow its state diagram does not have."""


class ServerState(enum.Enum):
    """A server connection's life (docs/architecture.md, "A server's life")."""

    LOGIN = "login"  # connecting and logging in: the pooler talks to it
    IDLE = "idle"  # in its route's idle list
    TAKEN = "taken"  # out of the pool, no client: handed on, being prepared, or the pooler's
    ACTIVE = "active"  # linked to a client: what it says is relayed
    RESET = "reset"  # detached from its client: the pooler brings it back in step
    CLOSED = "closed"  # closing or closed: never used again

    __hash__ = object.__hash__  # (members are singletons: identity, hashed in C)


SERVER_NEXT: dict[ServerState, frozenset[ServerState]] = {
    ServerState.LOGIN: frozenset((ServerState.TAKEN, ServerState.CLOSED)),
    ServerState.IDLE: frozenset((ServerState.TAKEN, ServerState.ACTIVE, ServerState.CLOSED)),
    ServerState.TAKEN: frozenset(
        (ServerState.ACTIVE, ServerState.IDLE, ServerState.RESET, ServerState.CLOSED)
    ),
    ServerState.ACTIVE: frozenset((ServerState.TAKEN, ServerState.RESET, ServerState.CLOSED)),
    ServerState.RESET: frozenset((ServerState.TAKEN, ServerState.CLOSED)),
    ServerState.CLOSED: frozenset(),
}


class ClientState(enum.Enum):
    """A client connection's life (docs/architecture.md, "A client's life")."""

    STARTUP = "startup"  # startup packet, TLS, routing, authentication (the login task)
    LOGIN_WAITING = "login waiting"  # the login waits for a server (session pool, first login)
    CANCEL = "cancel"  # a CancelRequest connection: forwarded, then closed
    CONSOLE = "console"  # the admin console: the pooler answers every request itself
    IDLE = "idle"  # logged in, no server, nothing asked (between transactions)
    WAITING = "waiting"  # asked for a server and has none yet: its bytes are queued
    LINKED = "linked"  # a server is linked: bytes are relayed both ways
    CLOSED = "closed"  # closing or closed: nothing more is read, written or asked

    __hash__ = object.__hash__  # (members are singletons: identity, hashed in C)


CLIENT_NEXT: dict[ClientState, frozenset[ClientState]] = {
    ClientState.STARTUP: frozenset(
        (
            ClientState.LOGIN_WAITING,
            ClientState.CANCEL,
            ClientState.CONSOLE,
            ClientState.IDLE,
            ClientState.LINKED,
            ClientState.CLOSED,
        )
    ),
    ClientState.LOGIN_WAITING: frozenset((ClientState.STARTUP, ClientState.CLOSED)),
    ClientState.CANCEL: frozenset((ClientState.CLOSED,)),
    ClientState.CONSOLE: frozenset((ClientState.CLOSED,)),
    ClientState.IDLE: frozenset((ClientState.LINKED, ClientState.WAITING, ClientState.CLOSED)),
    ClientState.WAITING: frozenset((ClientState.LINKED, ClientState.IDLE, ClientState.CLOSED)),
    ClientState.LINKED: frozenset((ClientState.IDLE, ClientState.CLOSED)),
    ClientState.CLOSED: frozenset(),
}

# The client states of a logged-in client whose bytes are relayed (or queued for a server).
RELAYING = frozenset((ClientState.IDLE, ClientState.WAITING, ClientState.LINKED))
# ... where nothing waits for a server (closing one now cuts no query sent; the linked
# server, if any, says whether a transaction is open).
BETWEEN_TRANSACTIONS = frozenset((ClientState.IDLE, ClientState.LINKED, ClientState.CONSOLE))
# ... and those of a login still under way (SHOW POOLS' login clients).
LOGGING_IN = frozenset((ClientState.STARTUP, ClientState.LOGIN_WAITING, ClientState.CANCEL))


def moved(
    kind: str,
    old: ServerState | ClientState,
    new: ServerState | ClientState,
    legal: frozenset[ServerState] | frozenset[ClientState],
    context: LogContext,
) -> None:
    """Check and log one move of a connection of `kind` ("server" or "client") from `old`
    to `new` (`legal`: the states `old` may move to)."""
    if new not in legal:
        message = f"illegal {kind} transition {old.value} -> {new.value}"
        if STRICT_STATES:
            raise IllegalTransition(message)
        log.error(kind, message, context)
    if log.debug_enabled:
        log.debug(kind, f"{old.value} -> {new.value}", context)
