"""Flow control of one connection's reading, paused for any number of causes.

A connection stops reading while its linked peer cannot take more (the peer's transport
said `pause_writing`), while a client has queued too much waiting for a server, while a
client has not read what the pooler itself answered, for the rest of a turn of the event
loop after a large read (libuv reads a ready socket up to 32 times in a row: megabytes of
small messages, each looked at in Python, would hold every other connection of the worker
and a cancel request behind one client's traffic), or while a cancel request for its
client's query is on its way to PostgreSQL (no more relay work for it before the cancel). Each cause (the bits below) is paused
and resumed on its own and idempotently (uvicorn's `FlowControl`, one flag per cause);
reading resumes when no cause is left. A link that ends takes its cause with it
(`ServerConnection.unlink`/`detach`), so a server never goes back to the pool, or into a
reset, with its reading paused for a client it no longer serves.
"""

from __future__ import annotations

import asyncio

PEER_FULL = 1  # the linked peer's write buffer is over its high-water mark
QUEUE_FULL = 2  # a client queued too much while waiting for a server
UNREAD_ANSWERS = 4  # a client has not read what the pooler itself answered (console)
BURST = 8  # a large read took this connection's share of the loop's turn
CANCELLING = 16  # a cancel request for the linked client's query is on its way

BURST_READ = 1 << 16  # a read this large: the connection reads again on the next turn


def yield_turn(gate: ReadGate) -> None:
    """After a large read: no more reads from this connection in this turn of the loop."""
    gate.pause(BURST)
    asyncio.get_running_loop().call_soon(gate.resume, BURST)


class ReadGate:
    __slots__ = ("causes", "transport")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.causes = 0  # the PEER_FULL / QUEUE_FULL bits now holding reading paused

    def pause(self, cause: int) -> None:
        if self.causes & cause:
            return
        if not self.causes:
            transport = self.transport
            if transport is not None and not transport.is_closing():
                transport.pause_reading()
        self.causes |= cause

    def resume(self, cause: int) -> None:
        if not self.causes & cause:
            return
        self.causes &= ~cause
        if not self.causes:
            transport = self.transport
            if transport is not None and not transport.is_closing():
                transport.resume_reading()

    @property
    def paused(self) -> bool:
        return bool(self.causes)
