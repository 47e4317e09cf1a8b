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
- the answers we remove (ParseComplete, CloseComplete, a Describe's ParameterDescription
  and RowDescription/NoData) are found by FIFOs of the messages sent. Messages skipped by
  the server after an error (up to the next Sync) are forgotten at the next ReadyForQuery,
  and so is a failed Parse's optimistic entry in the server's table: a failed Parse never
  poisons the mapping.

Statement copies differ in their result shape. PostgreSQL fixes a prepared statement's
result type at its Parse and refuses ("cached plan must not change result type") to run it
once a schema change alters it. A server's copy is the client's statement only if both have
the same shape, so the shape of every copy (a Describe injected after each Parse) and the
shape each client was described are recorded. A client that knows its statement's shape and
lands on a server whose copy has another one, or none, gets a fresh copy checked first: the
rest of its messages wait (`hold_at`) until the copy's description comes back; if it is not
the shape the client knows, the client's message fails in place (`FAIL_IN_PLACE`, whose error
is answered as PostgreSQL's own "cached plan must not change result type"), as its own
statement would on a direct connection. Rows are never decoded with another shape's
description. The other way round, a client that parsed its statement in the very batch
that uses a server's stale copy would get an error it never gets directly: such a batch is
kept (`Retry`) and, if PostgreSQL rejects the copy before anything but ParseCompletes
reached the client and outside a transaction block, sent again with a fresh copy.

Copies differ in their parameter types too, where PostgreSQL infers them (a `$n` the Parse
gives no type): a copy has the types inferred at its own Parse, however old. A client that
parses such a statement and describes it in the same batch is described a fresh copy, as a
Parse directly would be; and each copy records when it was parsed (`parsed_at`, the route's
count of Parses), each client statement the copy it was described from (`described_at`), so
a client that knows its statement's types binds it on no older copy.

Over 500 lines for a reason: the client's and the server's statement tables
(`ClientStatements`, `ServerStatements`) rewrite one message stream between them. A Describe
in flight (`Describing`) and a batch kept for a retry (`Retry`) refer to both, and each side's
methods call the other's, so apart they would import each other; what they share beyond that
(names, shapes, Parse and Bind bodies) is a few small functions.
"""

from __future__ import annotations

import functools
import hashlib
import re
import struct
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Protocol

from pooler.protocol import build, messages
from pooler.protocol.errors import ProtocolError
from pooler.protocol.framing import iter_messages

CLOSE_NOTHING = "pooler_never_prepared"
FLUSH = build.flush()
IDLE = ord("I")  # ReadyForQuery's transaction status outside a transaction
EMPTY_PARSE = build.parse("", "")  # stands in for a Parse the server already has
_DEALLOCATE = re.compile(r"\s*deallocate\s+(?:prepare\s+)?(\"(?:[^\"]|\"\")+\"|\w+)\s*;?\s*$", re.I)
_MAYBE_DROP = re.compile(rb"\s*[dD]")  # could be DEALLOCATE or DISCARD
MAYBE_DROP_FIRST = frozenset(b"dD \t\n\r\f\v")  # ... its first byte (no regex per query)
_DROP_ALL = re.compile(r"\s*(?:deallocate\s+(?:prepare\s+)?all|discard\s+all)\s*;?\s*$", re.I)


CACHED_PLAN_ERROR = "cached plan must not change result type"


# The error a stale statement gets from PostgreSQL (asyncpg knows it by its routine field).
STALE_PLAN_ERROR = build.message(
    ord("E"),
    b"SERROR\0VERROR\0C0A000\0M"
    + CACHED_PLAN_ERROR.encode()
    + b"\0Fplancache.c\0RRevalidateCachedQuery\0\0",
)
FAIL_IN_PLACE = build.describe("S", CLOSE_NOTHING)  # fails where a stale statement would
NO_DATA = b""  # the shape of a statement that returns no rows


def shape_of(row_description: bytes) -> bytes:
    """A RowDescription body without what PostgreSQL ignores when it compares result types
    (each column's table OID and attribute number): names, types, typmods."""
    count = int.from_bytes(row_description[:2])
    out = bytearray(row_description[:2])
    i = 2
    for _ in range(count):
        end = row_description.index(0, i) + 1
        out += row_description[i:end]
        out += row_description[end + 6 : end + 18]
        i = end + 18
    return bytes(out)


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
    # PostgreSQL may infer a parameter's type at the Parse (a `$n` the Parse gives no type):
    # a copy keeps what was inferred then, whatever DDL came since (an overestimate, as a `$`
    # in a string literal counts, only costs a fresh copy where one was not needed)
    infers_types: bool = False


_PLACEHOLDER = re.compile(r"\$([0-9]+)")


def infers_types(query: str, param_types: tuple[int, ...]) -> bool:
    """May PostgreSQL infer the type of one of the statement's parameters at its Parse?"""
    if "$" not in query:
        return False
    if 0 in param_types:
        return True
    return any(int(n) > len(param_types) for n in _PLACEHOLDER.findall(query))


CACHED_TEXT_LIMIT = 8192  # longer query texts are not memoised (bounds the caches' memory)


def statement_for(query: str, param_types: tuple[int, ...]) -> Statement:
    """The Statement of a query text (memoised: clients re-parse the same few queries)."""
    if len(query) > CACHED_TEXT_LIMIT:
        return _statement(query, param_types)
    return _cached_statement(query, param_types)


def _statement(query: str, param_types: tuple[int, ...]) -> Statement:
    name = server_name(query, param_types)
    return Statement(
        name, query, param_types, name.encode() + b"\0", infers_types(query, param_types)
    )


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


_BIND_HEADER = struct.Struct("!BI").pack
BIND_TYPE = messages.BIND


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

    parses = 0  # the Parses the pooler sent to the route's servers: a copy's `parsed_at`

    def add(self, name: str) -> None:
        self[name] = None
        self.move_to_end(name)
        if len(self) > KNOWN_LIMIT:
            self.popitem(last=False)


@dataclass(slots=True)
class Describing:
    """A Describe of a statement in flight: the client's or one the pooler added."""

    server_name: str | None  # None: not one of ours, sent as the client wrote it
    forward: bool  # its answer goes to the client
    batch: int
    client: ClientStatements | None = None  # told the shape as the client's statement's
    client_name: str = ""
    statement: Statement | None = None
    expected: bytes | None = None  # a check: the shape the client knows
    parsed_at: int = 0  # when the copy described was parsed (ServerStatements.parsed_at)


@dataclass(slots=True)
class Retry:
    """A batch that uses a server's copy for a statement the client parsed in this very
    batch (the Parse became `EMPTY_PARSE`): if PostgreSQL rejects the copy as stale before
    anything but ParseCompletes reached the client, and outside a transaction block, the
    batch is sent again with a fresh copy instead of the error (prepared statements do not
    outlive a schema change in the client's eyes, as on a direct connection)."""

    statement: Statement
    client: ClientStatements
    client_name: str
    # the client's messages from the use to the Sync, as it sent them: sent[at:] (the chunk
    # they came in, kept by reference, sliced only if the batch goes again)
    sent: bytes | bytearray
    at: int = 0
    hiding: bool = False  # the error is being dropped, up to its ReadyForQuery
    # the batch ends with a Flush, not a Sync (asyncpg's prepare: Parse, Describe, Flush):
    # the relay sends a Sync of its own to end the error, and the batch again behind it
    flush: bool = False

    @property
    def messages(self) -> bytes:
        return bytes(self.sent[self.at :])

    @property
    def describes(self) -> int:
        """Describes of statements among the messages (their answers are in flight)."""
        return sum(
            1
            for msg_type, body in iter_messages(self.messages)
            if msg_type == messages.DESCRIBE and body[:1] == b"S"
        )

    def replay(self, server: ServerStatements) -> bytes:
        """The batch again, after a fresh copy replacing the stale one (answers dropped)."""
        statement = self.statement
        name = statement.server_name
        server.names.pop(name, None)
        server.doomed.discard(name)
        server.sent_close(False)
        client = self.client
        out = [build.close("S", name), client._prepare(statement, server, False)]
        for msg_type, body in iter_messages(self.messages):
            replacement = None
            if msg_type == messages.SYNC:
                server.sent_sync()
            elif msg_type == messages.BIND or (
                msg_type == messages.DESCRIBE and body[:1] == b"S"
            ):  # renamed again, as the relay did the first time
                replacement = client.rewrite(msg_type, body, server)
            out.append(build.message(msg_type, body) if replacement is None else replacement)
        server.young_use = None
        server.hold_at = 0  # (no check: the batch was sent without one the first time)
        return b"".join(out)


@dataclass(slots=True)
class ServerStatements:
    """What one server connection has prepared (LRU order, with each copy's result shape,
    None until described) and the messages in flight whose answers matter."""

    known: KnownStatements = field(default_factory=KnownStatements)  # the route's
    names: OrderedDict[str, bytes | None] = field(default_factory=OrderedDict)
    # when each copy was parsed (the route's count of Parses then): a copy of a statement
    # whose parameter types PostgreSQL infers has the types of that moment
    parsed_at: dict[str, int] = field(default_factory=dict)
    _parses: deque[tuple[bool, str | None, int]] = field(default_factory=deque)
    _dropped_parses: int = 0  # ... of them, those whose ParseComplete is dropped
    _closes: deque[tuple[bool, int]] = field(default_factory=deque)
    _describes: deque[Describing] = field(default_factory=deque)
    _shape_next: bool = False  # a ParameterDescription came: the shape comes next
    hold_at: int = 0  # set by a rewrite: hold what follows this offset until a check ends
    stale_errors_due: int = 0  # FAIL_IN_PLACE errors to answer as STALE_PLAN_ERROR
    young_use: str | None = None  # set by a rewrite: a copy used for a statement parsed
    # in this batch (the client's name): the relay may arm a retry
    # A batch armed to be sent again (`Retry`) as the relay sends it: the chunk it came in
    # (kept by reference), where its use of the copy starts (-1: none armed), the client's
    # name for the statement, whether it ends with a Flush. Armed for every such batch and
    # almost never used: the Retry itself is made only when an error asks (`take_retry`).
    armed_at: int = -1
    armed_sent: bytes | bytearray = b""
    armed_name: str = ""
    armed_flush: bool = False
    retry: Retry | None = None  # the armed batch goes again: its error is being dropped
    # a Describe or Close of a statement was sent: the relay must look at their answers
    # (ServerConnection.watch) before they can come
    watch_due: bool = False
    batches_sent: int = 0  # Sync/Query messages sent: each ends a batch with a ReadyForQuery
    batches_done: int = 0
    plan_epoch: int = 0
    # Statements prepared inside a transaction may name objects created in it (a type, a
    # table): if it rolls back they are `doomed`, dropped before the server is lent again.
    _confirmed: list[str] = field(default_factory=list)  # prepared since the last ReadyForQuery
    in_xact: list[str] = field(default_factory=list)  # prepared inside the open transaction
    doomed: set[str] = field(default_factory=set)
    _rolled_back: bool = False  # a ROLLBACK (or ROLLBACK TO) completed since the last one
    _failed: bool = False  # an ErrorResponse since the last ReadyForQuery

    @property
    def watching(self) -> bool:
        """Does the relay need more than ParseComplete: descriptions and CloseCompletes in
        flight, CommandComplete tags while a transaction prepared statements?"""
        return bool(self._describes or self._closes or self.in_xact)

    @property
    def batch(self) -> int:
        return self.batches_sent

    def has(self, name: str) -> bool:
        if name in self.names:
            self.names.move_to_end(name)
            return True
        return False

    def sent_parse(self, forward: bool, name: str | None) -> None:
        if name is not None:
            self.names[name] = None
        self._parses.append((forward, name, self.batches_sent))
        if not forward:
            self._dropped_parses += 1

    def stamp(self, name: str) -> None:
        """A Parse of the copy `name` is sent: it is the route's newest (`parsed_at`)."""
        known = self.known
        known.parses += 1
        parsed_at = self.parsed_at
        parsed_at[name] = known.parses
        if len(parsed_at) > 2 * len(self.names) + 64:  # (copies dropped since: forgotten)
            self.parsed_at = {k: v for k, v in parsed_at.items() if k in self.names}

    def sent_sync(self) -> None:
        self.batches_sent += 1

    def sent_close(self, forward: bool) -> None:
        self._closes.append((forward, self.batches_sent))
        self.watch_due = True

    def sent_describe(self, describing: Describing) -> None:
        self._describes.append(describing)
        self.watch_due = True

    def on_close_complete(self) -> bool:
        """A CloseComplete arrived: True to forward it to the client, False to drop it."""
        return self._closes.popleft()[0] if self._closes else True

    def on_parameter_description(self) -> bool:
        """A ParameterDescription (the first answer to a Describe of a statement)."""
        if not self._describes:
            return True
        self._shape_next = True
        return self._describes[0].forward

    def on_shape(self, shape: bytes) -> tuple[bool, bool | None]:
        """A RowDescription (as `shape_of` it) or NoData (NO_DATA): (forward it?, the
        outcome of the check it ends: None if none, else whether the shape is the one the
        client knows)."""
        if not self._shape_next:
            return True, None  # a portal's or a query's description
        self._shape_next = False
        describing = self._describes.popleft()
        name = describing.server_name
        if name is not None and name in self.names:
            self.names[name] = shape
        client = describing.client
        if client is not None and describing.statement is not None:
            client.described(
                describing.client_name, describing.statement, shape, describing.parsed_at
            )
        if describing.expected is None:
            return describing.forward, None
        return describing.forward, shape == describing.expected

    def void_checks(self) -> int:
        """An ErrorResponse: the server skips what follows up to the next Sync, the checks
        sent in this batch included; how many checks will never be answered."""
        batch = self.batches_done
        void = 0
        for describing in self._describes:
            if describing.batch > batch:
                break
            if describing.expected is not None:
                describing.expected = None
                void += 1
        return void

    def on_parse_complete(self) -> bool:
        """A ParseComplete arrived: True to forward it to the client, False to drop it."""
        if not self._parses:
            return True
        forward, name, _batch = self._parses.popleft()
        if name is not None:
            self.known.add(name)
            self._confirmed.append(name)
        if not forward:
            self._dropped_parses -= 1
        return forward

    def on_error(self) -> None:
        self._failed = True

    def may_retry(self, fields: dict[str, str]) -> bool:
        """An ErrorResponse while a retry is armed: is it the stale copy's, answering the
        use itself (every Parse before it answered, only its own Describes in flight)?"""
        retry = self.retry
        return (
            retry is not None
            and not self._parses
            and len(self._describes) <= retry.describes
            and is_stale_statement_error(fields)
        )

    def take_retry(self, fields: dict[str, str], client: ClientStatements | None) -> bool:
        """An ErrorResponse while a batch is armed: when it is the stale copy's (`may_retry`),
        the batch goes again (`retry`, hiding the error up to its ReadyForQuery)."""
        name = self.armed_name
        statement = None if client is None else client.statements.get(name)
        if statement is None or client is None:
            return False
        self.retry = Retry(
            statement, client, name, self.armed_sent, self.armed_at, flush=self.armed_flush
        )
        if not self.may_retry(fields):
            self.retry = None
            return False
        self.retry.hiding = True
        return True

    def on_command_complete(self, tag: bytes) -> None:
        """A CommandComplete (looked at while `in_xact` holds statements)."""
        if tag.startswith(b"ROLLBACK"):  # ROLLBACK, ROLLBACK TO, COMMIT of a failed one
            self._rolled_back = True

    def on_ready(self, status: int = IDLE) -> None:
        """A ReadyForQuery: Parses of finished batches that got no answer failed; statements
        prepared in a transaction that rolled back (an explicit one, or the implicit one of
        a failed batch) are doomed."""
        self.batches_done += 1
        if not (self._parses or self._closes or self._describes or self._confirmed or self.in_xact):
            self._shape_next = self._rolled_back = self._failed = False
            return  # (nothing in flight, no statement of a transaction: this runs per query)
        done = self.batches_done
        while self._parses and self._parses[0][2] < done:
            forward, name, _batch = self._parses.popleft()
            if name is not None:
                self.names.pop(name, None)
            if not forward:
                self._dropped_parses -= 1
        while self._closes and self._closes[0][1] < done:
            self._closes.popleft()
        while self._describes and self._describes[0].batch < done:
            self._describes.popleft()
        self._shape_next = False
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
        if self._parses or self._closes or self._describes:  # (rare: this runs per link)
            self._parses.clear()
            self._dropped_parses = 0
            self._closes.clear()
            self._describes.clear()
        self._shape_next = False
        self.hold_at = self.stale_errors_due = 0
        self.young_use = self.retry = None
        self.armed_at = -1
        self.armed_sent = b""
        self.watch_due = False
        self.batches_sent = self.batches_done = 0
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

    __slots__ = (
        "counters",
        "described_at",
        "known",
        "last_parse",
        "shapes",
        "statements",
        "young",
    )

    def __init__(self, counters: Counters, known: KnownStatements) -> None:
        self.statements: dict[str, Statement] = {}
        self.shapes: dict[str, bytes] = {}  # the shape each statement was described with
        # and when the copy that described it was parsed: a statement whose parameter types
        # PostgreSQL infers runs on no copy older than the one whose types the client knows
        self.described_at: dict[str, int] = {}
        self.young: str | None = None  # parsed in this batch onto a copy the server had
        # its last Parse body, name and statement (a client re-sends the very same Parse)
        self.last_parse: tuple[bytes, str, Statement] | None = None
        self.counters = counters
        self.known = known

    def described(self, name: str, statement: Statement, shape: bytes, parsed_at: int) -> None:
        """The client was told its statement's result shape (the answer to its Describe)
        and parameter types (those of the copy parsed at `parsed_at`)."""
        if self.statements.get(name) is statement:
            self.shapes[name] = shape
            self.described_at[name] = parsed_at

    def _forget(self, name: str) -> None:
        self.statements.pop(name, None)
        self.shapes.pop(name, None)
        self.described_at.pop(name, None)

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
            self.shapes.pop(name, None)
            self.counters.client_parses += 1
        return b"".join(out)

    def _prepare(self, statement: Statement, server: ServerStatements, forward: bool) -> bytes:
        """A Parse of the statement's copy on the server and a Describe that records the
        copy's shape (its answer dropped)."""
        name = statement.server_name
        server.sent_parse(forward, name)
        server.stamp(name)
        server.sent_describe(Describing(name, False, server.batch))
        self.counters.server_parses += 1
        return build.parse(name, statement.query, statement.param_types) + build.describe("S", name)

    def _ensure(
        self, name: str, statement: Statement, server: ServerStatements, *, check: bool = True
    ) -> bytes:
        """What to send before the client's statement `name` is bound or described on this
        server (answers dropped): nothing if the server's copy will do; else a fresh copy,
        and, when the client knows its statement's shape, a check that the copy has it
        (what follows waits for the answer: `hold_at`)."""
        server_name = statement.server_name
        expected = self.shapes.get(name) if check else None
        prefix = b""
        if server.has(server_name):
            if expected is None or (
                server.names[server_name] == expected
                and not (  # older than the copy the client was described (other types?)
                    statement.infers_types
                    and server.parsed_at.get(server_name, 0) < self.described_at.get(name, 0)
                )
            ):
                if name == self.young and check:
                    server.young_use = name
                return b""
            server.sent_close(False)  # another shape (or not known yet): prepare it again
            prefix = build.close("S", server_name)
        if expected is None:
            return self._prepare(statement, server, False)
        server.sent_parse(False, server_name)
        server.stamp(server_name)
        server.sent_describe(Describing(server_name, False, server.batch, expected=expected))
        self.counters.server_parses += 1
        prefix += build.parse(server_name, statement.query, statement.param_types)
        prefix += build.describe("S", server_name) + FLUSH
        server.hold_at = len(prefix)
        return prefix

    def rewrite(
        self, msg_type: int, body: bytes | bytearray, server: ServerStatements
    ) -> bytes | None:
        """The bytes to send instead of this client message, or None to send it as is."""
        statement: Statement | None
        if msg_type == messages.PARSE:
            return self.rewrite_parse(body, 0, len(body), server)
        if msg_type == messages.BIND:
            return self.rewrite_bind(body, 0, len(body), server)
        if msg_type == messages.DESCRIBE:
            kind, name = messages.decode_describe(body)
            if kind != "S":
                return None
            statement = self.statements.get(name)
            if statement is None:  # not one of ours: its answer goes through as it is
                server.sent_describe(Describing(None, True, server.batch))
                return None
            server_name = statement.server_name
            if name == self.young and statement.infers_types and server.has(server_name):
                # parsed in this batch onto the server's copy: a fresh Parse would infer
                # its parameter types now, the copy has those inferred at its own Parse
                # (before a DDL since, maybe): the client is described a fresh copy
                server.names.pop(server_name)
                server.sent_close(False)
                prefix = build.close("S", server_name) + self._prepare(statement, server, False)
            else:
                prefix = self._ensure(name, statement, server)
            parsed_at = server.parsed_at.get(server_name, 0)
            server.sent_describe(
                Describing(server_name, True, server.batch, self, name, statement, None, parsed_at)
            )
            return prefix + build.describe("S", server_name)
        if msg_type == messages.CLOSE:
            kind, name = messages.decode_close(body)
            server.sent_close(True)
            if kind != "S":
                return None
            self._forget(name)
            return build.close("S", CLOSE_NOTHING)
        if msg_type == messages.QUERY:
            return self.on_query(body, 0, len(body), server)
        return None

    def rewrite_parse(
        self, buf: bytes | bytearray, at: int, end: int, server: ServerStatements
    ) -> bytes | None:
        """The Parse whose body is buf[at:end], as `rewrite` does it: the bytes to send
        instead, or None. The body is compared in place with the client's last Parse (no
        copy, no lookup: a client re-sends the very same Parse, the unnamed one on every
        execution)."""
        last = self.last_parse
        if last is not None and end - at == len(last[0]) and buf.startswith(last[0], at):
            _body, name, statement = last
        else:
            body = bytes(buf[at:end])
            name, statement = parse_of(body)
            if len(body) <= CACHED_TEXT_LIMIT:  # (a client holds no long text for this)
                self.last_parse = (body, name, statement)
        self.statements[name] = statement  # "" too: the unnamed one is cached
        self.shapes.pop(name, None)
        self.counters.client_parses += 1
        if server.has(statement.server_name):
            server.sent_parse(True, None)
            self.young = name
            return EMPTY_PARSE
        return self._prepare(statement, server, True)

    def rewrite_bind(
        self, buf: bytes | bytearray, at: int, end: int, server: ServerStatements
    ) -> bytes | None:
        """The Bind whose body is buf[at:end] (read in place: this runs for every Bind), as
        `rewrite` does it: the bytes to send instead, or None."""
        if end - at > 1 and buf[at] == 0 and buf[at + 1] == 0:  # (the usual: both unnamed)
            name_at = name_end = at + 1
            name = ""
        else:
            portal_end = buf.find(0, at, end)
            name_end = buf.find(0, portal_end + 1, end) if portal_end >= 0 else -1
            if name_end < 0:
                raise ProtocolError("invalid message format: missing string terminator")
            name_at = portal_end + 1
            name = buf[name_at:name_end].decode("utf-8", "surrogateescape")
        statement = self.statements.get(name)
        if statement is None:
            return None
        self.counters.binds += 1
        name_z = statement.server_name_z
        length = end - at + 4 + len(name_z) - (name_end + 1 - name_at)
        return b"".join(
            (
                self._ensure(name, statement, server),
                _BIND_HEADER(BIND_TYPE, length),
                buf[at:name_at],
                name_z,
                buf[name_end + 1 : end],
            )
        )

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
        # (no check of the copy's shape: holding the rest of a Bind this large until the
        # check's answer would buffer what client_max_buffer bounds)
        return self._ensure(name, statement, server, check=False) + header + renamed

    def on_query(
        self, buf: bytes | bytearray, start: int, end: int, server: ServerStatements
    ) -> bytes | None:
        """A simple Query whose text is buf[start:end] (read in place: this runs for every
        query): the bytes to send instead, or None."""
        self.statements.pop("", None)  # a simple query replaces the unnamed statement
        if self.shapes:
            self.shapes.pop("", None)
        self.young = None
        if end > start and (
            buf[start] not in MAYBE_DROP_FIRST or not _MAYBE_DROP.match(buf, start)
        ):
            return None  # only DEALLOCATE / DISCARD concern us
        return self._rewrite_query(messages.decode_query(buf[start:end]), server)

    def _rewrite_query(self, sql: str, server: ServerStatements) -> bytes | None:
        if _DROP_ALL.match(sql):
            self.statements.clear()
            self.shapes.clear()
            self.described_at.clear()
            server.forget_all()
            return None
        match = _DEALLOCATE.match(sql)
        if match is None:
            return None
        name = match[1]
        name = name[1:-1].replace('""', '"') if name.startswith('"') else name.lower()
        statement = self.statements.pop(name, None)
        self.shapes.pop(name, None)
        if statement is None:
            return None  # not one of ours (SQL-level PREPARE): the server decides
        if server.has(statement.server_name):
            server.names.pop(statement.server_name, None)
            return build.query(f"DEALLOCATE {statement.server_name}")
        server.forget_all()
        return build.query("DEALLOCATE ALL")
