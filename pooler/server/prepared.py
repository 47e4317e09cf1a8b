"""Named prepared statements in transaction and statement pools (sans-I/O).

`pool_reserve_prepared_statement` (odyssey's name, on by default): a client's Parse is
recorded in the client's own table and sent to the server under a name derived from the
query text and parameter types, so every client preparing the same query shares one
server-side statement. The unnamed statement is treated the same way (as odyssey does): a
client re-parsing the same unnamed query on every execution (`pgbench -M extended`, most
drivers' parameterised queries) then costs the server a Bind of a prepared statement instead
of a parse and a plan each time. Whatever server a client lands on, a Bind or Describe of a
statement that server has not seen is preceded by a Parse injected by the pooler, whose
ParseComplete is swallowed on the way back.

Everything stays in protocol order without tracking every message:
- a Parse the server already has is replaced by `Parse("", "")` (an empty unnamed
  statement), whose real ParseComplete the client then receives in the right place;
- a Close of a statement is replaced by a Close of a name that never exists (PostgreSQL
  answers CloseComplete for those), the server keeps the shared statement;
- ParseComplete is the only answer we remove, so a FIFO of the Parses sent says which ones
  to drop. Parses skipped by the server after an error (up to the next Sync) are forgotten
  at the next ReadyForQuery, and so is their optimistic entry in the server's table: a
  failed Parse never poisons the mapping.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Protocol

from pooler.protocol import build, messages
from pooler.protocol.errors import ProtocolError

CLOSE_NOTHING = "pooler_never_prepared"
IDLE = ord("I")  # ReadyForQuery's transaction status outside a transaction
EMPTY_PARSE = build.parse("", "")  # stands in for a Parse the server already has
_DEALLOCATE = re.compile(r"\s*deallocate\s+(?:prepare\s+)?(\"(?:[^\"]|\"\")+\"|\w+)\s*;?\s*$", re.I)
_MAYBE_DROP = re.compile(rb"\s*[dD]")  # could be DEALLOCATE or DISCARD
_DROP_ALL = re.compile(r"\s*(?:deallocate\s+(?:prepare\s+)?all|discard\s+all)\s*;?\s*$", re.I)


CACHED_PLAN_ERROR = "cached plan must not change result type"


def is_stale_statement_error(fields: dict[str, str]) -> bool:
    """Does PostgreSQL reject a prepared statement that a schema change made stale: its
    result type changed, or a type it was prepared with is gone?"""
    code, message = fields.get("C"), fields.get("M", "")
    if code == "0A000":
        return CACHED_PLAN_ERROR in message
    return code == "XX000" and message.startswith("cache lookup failed for type")


def server_name(query: str, param_types: tuple[int, ...]) -> str:
    """The statement's name on every server: a digest of its text and parameter types."""
    digest = hashlib.blake2b(digest_size=10)
    digest.update(query.encode("utf-8", "surrogateescape"))
    digest.update(b"\0" + ",".join(map(str, param_types)).encode())
    return "pooler_" + digest.hexdigest()


@dataclass(frozen=True, slots=True)
class Statement:
    server_name: str
    query: str
    param_types: tuple[int, ...]
    server_name_z: bytes  # the name as it goes on the wire (NUL-terminated)


CACHED_TEXT_LIMIT = 8192  # longer query texts are not memoised (bounds the caches' memory)


def statement_for(query: str, param_types: tuple[int, ...]) -> Statement:
    """The Statement of a query text (memoised: clients re-parse the same few queries)."""
    if len(query) > CACHED_TEXT_LIMIT:
        return _statement(query, param_types)
    return _cached_statement(query, param_types)


def _statement(query: str, param_types: tuple[int, ...]) -> Statement:
    name = server_name(query, param_types)
    return Statement(name, query, param_types, name.encode() + b"\0")


_cached_statement = functools.lru_cache(maxsize=4096)(_statement)


def parse_of(body: bytes) -> tuple[str, Statement]:
    """A Parse message body: the client's statement name and the Statement (memoised by the
    raw body: a client re-sends the very same Parse, unnamed ones on every execution)."""
    if len(body) > CACHED_TEXT_LIMIT:
        return _parse(body)
    return _cached_parse(body)


def _parse(body: bytes) -> tuple[str, Statement]:
    parse = messages.decode_parse(body)
    return parse.name, statement_for(parse.query, tuple(parse.param_types))


_cached_parse = functools.lru_cache(maxsize=4096)(_parse)


def _bind_statement(body: bytes | bytearray) -> tuple[int, int]:
    """Where a Bind body's statement name lies: (start, end of its NUL)."""
    portal_end = body.find(b"\0")
    name_end = body.find(b"\0", portal_end + 1) if portal_end >= 0 else -1
    if name_end < 0:
        raise ProtocolError("invalid message format: missing string terminator")
    return portal_end + 1, name_end


class Counters(Protocol):
    """Where the counters go (the route's RouteStats)."""

    client_parses: int
    server_parses: int
    binds: int


KNOWN_LIMIT = 10_000


class KnownStatements(OrderedDict[str, None]):
    """Statements that some server of the route prepared successfully (bounded, LRU)."""

    def add(self, name: str) -> None:
        self[name] = None
        self.move_to_end(name)
        if len(self) > KNOWN_LIMIT:
            self.popitem(last=False)


@dataclass(slots=True)
class ServerStatements:
    """What one server connection has prepared (LRU order) and the Parses in flight."""

    known: KnownStatements = field(default_factory=KnownStatements)  # the route's
    names: OrderedDict[str, None] = field(default_factory=OrderedDict)
    _parses: deque[tuple[bool, str | None, int]] = field(default_factory=deque)
    _batches_sent: int = 0  # Sync/Query messages sent: each ends a batch with a ReadyForQuery
    _batches_done: int = 0
    plan_epoch: int = 0
    # Statements prepared inside a transaction may name objects created in it (a type, a
    # table): if it rolls back they are `doomed`, dropped before the server is lent again.
    _confirmed: list[str] = field(default_factory=list)  # prepared since the last ReadyForQuery
    in_xact: list[str] = field(default_factory=list)  # prepared inside the open transaction
    doomed: set[str] = field(default_factory=set)
    _rolled_back: bool = False  # a ROLLBACK (or ROLLBACK TO) completed since the last one
    _failed: bool = False  # an ErrorResponse since the last ReadyForQuery

    @property
    def swallowing(self) -> bool:
        return bool(self._parses)

    def has(self, name: str) -> bool:
        if name in self.names:
            self.names.move_to_end(name)
            return True
        return False

    def sent_parse(self, forward: bool, name: str | None) -> None:
        if name is not None:
            self.names[name] = None
        self._parses.append((forward, name, self._batches_sent))

    def sent_sync(self) -> None:
        self._batches_sent += 1

    def on_parse_complete(self) -> bool:
        """A ParseComplete arrived: True to forward it to the client, False to drop it."""
        if not self._parses:
            return True
        forward, name, _batch = self._parses.popleft()
        if name is not None:
            self.known.add(name)
            self._confirmed.append(name)
        return forward

    def on_error(self) -> None:
        self._failed = True

    def on_command_complete(self, tag: bytes) -> None:
        """A CommandComplete (looked at while `in_xact` holds statements)."""
        if tag.startswith(b"ROLLBACK"):  # ROLLBACK, ROLLBACK TO, COMMIT of a failed one
            self._rolled_back = True

    def on_ready(self, status: int = IDLE) -> None:
        """A ReadyForQuery: Parses of finished batches that got no answer failed; statements
        prepared in a transaction that rolled back (an explicit one, or the implicit one of
        a failed batch) are doomed."""
        self._batches_done += 1
        while self._parses and self._parses[0][2] < self._batches_done:
            _forward, name, _batch = self._parses.popleft()
            if name is not None:
                self.names.pop(name, None)
        if self._confirmed:
            self.in_xact += self._confirmed
            self._confirmed.clear()
        if self.in_xact:
            if self._rolled_back or (self._failed and status == IDLE):
                self.doomed.update(name for name in self.in_xact if name in self.names)
                self.in_xact.clear()
            elif status == IDLE:  # committed: what it created stays
                self.in_xact.clear()
        self._rolled_back = self._failed = False

    def reset(self) -> None:
        """Between clients: nothing is in flight any more; a transaction still counted as
        open ended without our seeing how (the pooler's own ROLLBACK): its statements are
        doomed."""
        self._parses.clear()
        self._batches_sent = self._batches_done = 0
        if self._confirmed or self.in_xact:  # (rare: checked first, as this runs per link)
            self.in_xact += self._confirmed
            self.doomed.update(name for name in self.in_xact if name in self.names)
            self._confirmed.clear()
            self.in_xact.clear()
        self._rolled_back = self._failed = False

    def forget_all(self) -> None:
        self.names.clear()
        self.doomed.clear()
        self.in_xact.clear()


class ClientStatements:
    """A client's prepared statements (its names), rewritten for whichever server it has."""

    __slots__ = ("counters", "known", "statements")

    def __init__(self, counters: Counters, known: KnownStatements) -> None:
        self.statements: dict[str, Statement] = {}
        self.counters = counters
        self.known = known

    def answer_locally(self, found: list[tuple[int, bytes]]) -> bytes | None:
        """The answer to messages that are only Parses of known statements and Syncs (no
        server needed), or None."""
        known = self.known
        out: list[bytes] = []
        parsed: list[tuple[str, Statement]] = []
        for msg_type, body in found:
            if msg_type == messages.PARSE:
                name, statement = parse_of(bytes(body))
                if not name or statement.server_name not in known:
                    return None
                parsed.append((name, statement))
                out.append(build.PARSE_COMPLETE)
            elif msg_type == messages.SYNC:
                out.append(build.READY_FOR_QUERY_IDLE)
            else:
                return None
        if not out or out[-1] != build.READY_FOR_QUERY_IDLE:
            return None  # without a Sync the client expects nothing yet
        for name, statement in parsed:
            self.statements[name] = statement
            self.counters.client_parses += 1
        return b"".join(out)

    def _ensure(self, statement: Statement, server: ServerStatements) -> bytes:
        """A Parse to inject first if the server lacks the statement (answer swallowed)."""
        if server.has(statement.server_name):
            return b""
        server.sent_parse(False, statement.server_name)
        self.counters.server_parses += 1
        return build.parse(statement.server_name, statement.query, statement.param_types)

    def rewrite(
        self, msg_type: int, body: bytes | bytearray, server: ServerStatements
    ) -> bytes | None:
        """The bytes to send instead of this client message, or None to send it as is."""
        statement: Statement | None
        if msg_type == messages.PARSE:
            name, statement = parse_of(body if type(body) is bytes else bytes(body))
            self.statements[name] = statement  # "" too: the unnamed one is cached
            self.counters.client_parses += 1
            if server.has(statement.server_name):
                server.sent_parse(True, None)
                return EMPTY_PARSE
            server.sent_parse(True, statement.server_name)
            self.counters.server_parses += 1
            return build.parse(statement.server_name, statement.query, statement.param_types)
        if msg_type == messages.BIND:
            start, end = _bind_statement(body)
            name = body[start:end].decode("utf-8", "surrogateescape") if end > start else ""
            statement = self.statements.get(name)
            if statement is None:
                return None
            self.counters.binds += 1
            renamed = body[:start] + statement.server_name_z + body[end + 1 :]
            return self._ensure(statement, server) + build.message(messages.BIND, renamed)
        if msg_type == messages.DESCRIBE:
            kind, name = messages.decode_describe(body)
            statement = self.statements.get(name) if kind == "S" else None
            if statement is None:
                return None
            return self._ensure(statement, server) + build.describe("S", statement.server_name)
        if msg_type == messages.CLOSE:
            kind, name = messages.decode_close(body)
            if kind != "S":
                return None
            self.statements.pop(name, None)
            return build.close("S", CLOSE_NOTHING)
        if msg_type == messages.QUERY:
            return self.on_query(body, 0, len(body), server)
        return None

    def rewrite_bind_head(
        self, head: bytes | bytearray, length: int, server: ServerStatements
    ) -> bytes | None:
        """The first bytes of a Bind too large to hold (`head`: the start of its body,
        `length`: its length field), rewritten like `rewrite` does a whole one: the bytes
        to send instead of the head (the rest of the Bind follows as it is), or None."""
        start, end = _bind_statement(head)
        name = head[start:end].decode("utf-8", "surrogateescape") if end > start else ""
        statement = self.statements.get(name)
        if statement is None:
            return None
        self.counters.binds += 1
        renamed = head[:start] + statement.server_name_z + head[end + 1 :]
        header = bytes((messages.BIND,)) + (length + len(renamed) - len(head)).to_bytes(4)
        return self._ensure(statement, server) + header + renamed

    def on_query(
        self, buf: bytes | bytearray, start: int, end: int, server: ServerStatements
    ) -> bytes | None:
        """A simple Query whose text is buf[start:end] (read in place: this runs for every
        query): the bytes to send instead, or None."""
        self.statements.pop("", None)  # a simple query replaces the unnamed statement
        if end > start and not _MAYBE_DROP.match(buf, start):
            return None  # only DEALLOCATE / DISCARD concern us
        return self._rewrite_query(messages.decode_query(buf[start:end]), server)

    def _rewrite_query(self, sql: str, server: ServerStatements) -> bytes | None:
        if _DROP_ALL.match(sql):
            self.statements.clear()
            server.forget_all()
            return None
        match = _DEALLOCATE.match(sql)
        if match is None:
            return None
        name = match[1]
        name = name[1:-1].replace('""', '"') if name.startswith('"') else name.lower()
        statement = self.statements.pop(name, None)
        if statement is None:
            return None  # not one of ours (SQL-level PREPARE): the server decides
        if server.has(statement.server_name):
            server.names.pop(statement.server_name, None)
            return build.query(f"DEALLOCATE {statement.server_name}")
        server.forget_all()
        return build.query("DEALLOCATE ALL")
