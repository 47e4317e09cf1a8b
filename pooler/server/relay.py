"""The relay's decisions, sans-I/O: what a client's messages make its server owe, how they
are renamed on the way, and what a server's answers do on their way back.

Two cores, one per direction; each is the base class of its connection's asyncio Protocol,
which is only the adapter that performs what the core decided (writes, closes, hands the
server back). The cores' state is the connections' own (`ServerConnection.pending`, …: the
pool, the reset and the console read it), so the Protocol *is* its core plus I/O, and the
hot path pays no attribute hop for the split.

- `ServerRelay.answers(data, events, peer, forwarded)`: a chunk of server bytes (and the
  scanner's events for it). Returns the bytes for the client (b"" when the chunk already
  went to it as it is, `uncut`), and leaves in `todo` what else to do (`READY`: the server
  owes nothing more; `TO_SERVER`: bytes of the pooler's own for the server in `to_server`,
  a replayed batch or output held for a statement check; `ERRORS`: ErrorResponses to count,
  in `errors`; `REFUSED_LATE`: a statement pool's transaction could not be refused in place).
- `ClientRelay.requests(server, data)`: a chunk of client bytes for its linked server. Returns
  the bytes to write to the server now (None: nothing, or all held for a statement check),
  and leaves in `todo` `OWED_NOTHING` (nothing sent will be answered: the server may go
  back), `TERMINATE` (the client said goodbye) and `ANSWERED` (bytes for the client in
  `to_client`: a refusal, a warning). A malformed message raises ProtocolError.

Nothing is allocated per message on the common path: the outcome is a bytes object and a
small int of flags kept on the core. Tested without sockets as event → action tables
(tests/unit/server/test_relay_core.py).
"""

from __future__ import annotations

import time
from collections import deque
from typing import Protocol

from pooler.config import Rule
from pooler.histogram import bucket_of
from pooler.logs import LogContext, log
from pooler.protocol import ProtocolError, build, messages
from pooler.protocol.framing import HEAD, MESSAGE, MessageSplitter
from pooler.protocol.messages import (
    BIND,
    CLOSE,
    CLOSE_COMPLETE,
    COMMAND_COMPLETE,
    COPY_DONE,
    COPY_FAIL,
    COPY_IN_RESPONSE,
    DESCRIBE,
    ERROR_RESPONSE,
    EXECUTE,
    FLUSH,
    FUNCTION_CALL,
    NO_DATA as NO_DATA_MESSAGE,
    PARAMETER_DESCRIPTION,
    PARAMETER_STATUS,
    PARSE,
    PARSE_COMPLETE,
    QUERY,
    READY_FOR_QUERY,
    ROW_DESCRIPTION,
    SYNC,
    TERMINATE,
)
from pooler.protocol.query_text import opens_transaction_block
from pooler.protocol.scanner import MessageScanner
from pooler.server.prepared import (
    FAIL_IN_PLACE,
    MAYBE_DROP_FIRST,
    NO_DATA,
    STALE_PLAN_ERROR,
    ClientStatements,
    KnownStatements,
    ServerStatements,
    shape_of,
)
from pooler.server.stats import BUCKETS, TABULATED, RouteStats

# What the adapter has to do after a call (bits of `todo`).
READY = 1  # server → client: the server owes nothing more (ClientConnection.server_ready)
TO_SERVER = 2  # server → client: `to_server` holds bytes of the pooler's own for the server
ERRORS = 4  # server → client: `errors` holds ErrorResponse bodies to count (server_error)
REFUSED_LATE = 8  # server → client: a statement pool's transaction, its start gone: FATAL
OWED_NOTHING = 16  # client → server: nothing sent is owed an answer: the server may go back
TERMINATE_SEEN = 32  # client → server: Terminate (what follows it was not looked at)
ANSWERED = 64  # client → server: `to_client` holds bytes for the client (refusal, warning)

IDLE = ord("I")  # ReadyForQuery's transaction status outside a transaction
# What the relay looks at in a server's answers (MessageScanner.wanted)
RELAY_WANTED = frozenset((READY_FOR_QUERY, PARAMETER_STATUS, ERROR_RESPONSE, COPY_IN_RESPONSE))
RELAY_WANTED_PREPARED = RELAY_WANTED | {PARSE_COMPLETE}
# while statements' descriptions or CloseCompletes are in flight, or a transaction that
# prepared statements is open (was it a ROLLBACK?)
RELAY_WANTED_WATCH = RELAY_WANTED_PREPARED | {
    CLOSE_COMPLETE,
    PARAMETER_DESCRIPTION,
    ROW_DESCRIPTION,
    NO_DATA_MESSAGE,
    COMMAND_COMPLETE,
}
STATEMENT_POOL_REFUSAL = "transaction blocks not allowed in statement pooling mode"  # pgbouncer

# Message types from the client (module constants: the relay compares them per message)
EXTENDED = frozenset((PARSE, BIND, EXECUTE, DESCRIBE, CLOSE))
STATEMENT = ord("S")  # a Describe's or Close's kind: a statement, not a portal
# a Query that may be LISTEN/UNLISTEN (`_listen`): its first two bytes (an UPDATE is not)
LISTEN_FIRST = frozenset(b"LlUu")
LISTEN_SECOND = frozenset(b"IiNn")
RETRY_LIMIT = 1 << 16  # a batch kept to be sent again (prepared.Retry) is at most this long
# A message larger than client_max_buffer is streamed to the server; its first HEAD_SIZE
# bytes are read (a Bind's names, a Query's first keyword) before any of it goes.
HEAD_SIZE = 8192
# PostgreSQL's own limits (postgres.c SocketBackend): a message of these types longer than
# PQ_SMALL_MESSAGE_LIMIT is refused, and a type PostgreSQL does not know after the login
# closes the connection; we do the same without troubling a server.
SMALL_MESSAGE_LIMIT = 10000
FRONTEND_LIMITS = {mtype: -1 for mtype in range(256) if mtype not in b"QFXBPCDEHSdcf"} | {
    mtype: SMALL_MESSAGE_LIMIT for mtype in b"XCDEHScf"
}


def _length(buf: bytes | bytearray, start: int) -> int:
    """The length field of the message at buf[start]."""
    return int.from_bytes(buf[start + 1 : start + 5])


def query_text(buf: bytes | bytearray, start: int, end: int) -> str:
    """The text of the simple Query at buf[start:end]."""
    return bytes(buf[start + 5 : end - 1]).decode("utf-8", "replace")


def _edited(data: bytes, edits: list[tuple[int, int, bytes]]) -> bytes:
    """`data` with each (start, end, replacement) applied (in order, not overlapping)."""
    pieces = []
    at = 0
    for start, end, replacement in edits:
        pieces.append(data[at:start])
        if replacement:
            pieces.append(replacement)
        at = end
    pieces.append(data[at:])
    return b"".join(pieces)


class Peer(Protocol):
    """What a server's answers need of the client they go to (`ClientRelay`)."""

    mode: str | None
    params: dict[str, str]
    statements: ClientStatements | None

    def refusal(self, message: str) -> bytes: ...


class ServerRelay:
    """What a server owes its client, and what its answers do on the way back.

    `pending` counts the ReadyForQuery messages owed, `unsynced` an extended batch without
    its Sync yet, `copy_in` a COPY IN running, `status` the last ReadyForQuery's transaction
    status; `statements` the server's prepared statements and the answers of ours in flight
    (prepared.py); `held` the client's output waiting for a statement check, one group per
    check; `tail` the start of an incomplete message that may have to be cut."""

    __slots__ = (
        "copy_in",
        "desynced",
        "errors",
        "held",
        "params",
        "pending",
        "query_started",
        "relay_wanted",
        "scanner",
        "statements",
        "stats",
        "status",
        "tail",
        "to_server",
        "todo",
        "unsynced",
        "xact_started",
    )

    def __init__(
        self,
        stats: RouteStats,
        known: KnownStatements,
        shares_statements: bool,
        wanted: frozenset[int] | None = None,
    ) -> None:
        self.stats = stats
        self.params: dict[str, str] = {}  # its session parameters, as it reported them
        self.relay_wanted = RELAY_WANTED_PREPARED if shares_statements else RELAY_WANTED
        self.scanner = MessageScanner(self.relay_wanted if wanted is None else wanted)
        self.status = IDLE  # transaction status of the last ReadyForQuery
        self.pending = 0  # ReadyForQuery messages still owed to the linked client
        self.unsynced = False  # extended-protocol messages sent since the last Sync
        self.copy_in = False
        self.desynced = False  # PostgreSQL may answer more than we counted: never reuse
        self.query_started = 0.0
        self.xact_started = 0.0  # when the open transaction began; 0.0: none since the last
        self.statements = ServerStatements(known)
        # client output waiting for statement checks, one group per check (prepared.py)
        self.held: deque[list[bytes | bytearray]] | None = None
        self.tail = b""  # the start of an incomplete message that may be dropped or edited
        self.todo = 0  # what the last `answers` left to do (READY, TO_SERVER, ...)
        self.to_server: list[bytes] = []  # bytes of ours for the server (TO_SERVER)
        self.errors: list[bytes] = []  # ErrorResponse bodies to count (ERRORS)

    def uncut(
        self, mode: str | None, events: list[tuple[int, bytes | None, int]], size: int
    ) -> bool:
        """May this chunk (`size` bytes; `events`: what the scanner found in it) go to the
        client as it is, before its bookkeeping (issue 19: latency per round trip)? Not
        while an answer of ours to drop is in flight or the start of a message is held
        back, nor in a statement pool (a ReadyForQuery saying a transaction is open is
        replaced there); while a batch is armed to go again (prepared.Retry), not with an
        ErrorResponse in it, whole or begun (the stale copy's error would be cut out)."""
        if self.tail or mode == "statement":
            return False
        statements = self.statements
        if (  # may some of the next answers be dropped or replaced (our Parses',
            # Describes' or Closes' answers, a stale copy's error, a replay)?
            statements._dropped_parses
            or statements._describes
            or statements._closes
            or statements.stale_errors_due
            or statements.retry is not None
        ):
            return False
        if statements.armed_at < 0:
            return True
        for event in events:
            if event[0] == ERROR_RESPONSE:
                return False
        if events and events[-1][2] == size:
            return True  # (it ends with a whole message)
        return not self.scanner.partial_len

    def answers(
        self,
        data: bytes,
        events: list[tuple[int, bytes | None, int]],
        peer: Peer,
        forwarded: bool,
    ) -> bytes:
        """A chunk of the server's answers to `peer` (`events`: what the scanner found in
        it), already written to the client as it is when `forwarded` (`uncut` said it may
        be, for these events). The bytes for the client (b"" when forwarded); `todo` says what else to do."""
        statements = self.statements
        if not forwarded and self.tail:  # the start of a message held back last time
            tail = self.tail
            data = tail + data
            events = [(t, b, end + len(tail)) for t, b, end in events]
        stats = self.stats
        todo = 0
        edits: list[tuple[int, int, bytes]] | None = None  # answers dropped or replaced
        retry = statements.retry  # (the armed batch goes again: see take_retry)
        skip_from = -1 if retry is None else 0  # dropping up to a ReadyForQuery
        for msg_type, body, end in events:
            if msg_type == PARSE_COMPLETE:
                if not statements.on_parse_complete():
                    if edits is None:
                        edits = []
                    edits.append((end - 5, end, b""))
                continue
            if msg_type == READY_FOR_QUERY:
                status = self.status = body[0] if body else IDLE
                if (
                    statements._parses
                    or statements._closes
                    or statements._describes
                    or statements._confirmed
                    or statements.in_xact
                ):
                    statements.on_ready(status)
                else:  # (`on_ready`'s common case, inline: nothing in flight, no statement
                    statements.batches_done += 1  # of a transaction; this runs per statement)
                    statements._shape_next = statements._rolled_back = statements._failed = False
                if statements.armed_at >= 0:  # its batch is answered: disarmed
                    statements.armed_at = -1
                    statements.armed_sent = b""
                if retry is not None:  # the stale copy's error and its ReadyForQuery: the
                    statements.retry = None  # batch goes again instead
                    if edits is None:
                        edits = []
                    edits.append((skip_from, end, b""))
                    skip_from = -1
                    if not retry.flush:  # (a Flush batch went again with our Sync)
                        self.to_server.append(retry.replay(statements))
                        todo |= TO_SERVER
                        if statements.watching:
                            self.watch(True)
                    retry = None
                    continue
                if status != IDLE and peer.mode == "statement":
                    if end < 6:  # its start went with the previous chunk: too late to amend
                        self.todo = todo | REFUSED_LATE
                        return b""
                    if edits is None:
                        edits = []
                    edits.append((end - 6, end, peer.refusal(STATEMENT_POOL_REFUSAL)))
                self.copy_in = False
                now = time.monotonic()
                started = self.query_started
                us = int((now - started) * 1e6)  # (`stats.record_query`, inline: this
                stats.query_time_us += us  # runs per ReadyForQuery)
                stats.query_hist[BUCKETS[us] if 0 <= us < TABULATED else bucket_of(us)] += 1
                if not self.xact_started:  # the last transaction ended (below): this query
                    self.xact_started = started  # began the next (a link sets it: `link`)
                self.query_started = now
                self.pending -= 1
                if self.pending <= 0:
                    self.pending = 0
                    if status == IDLE:
                        stats.record_xact(int((now - self.xact_started) * 1e6))
                        self.xact_started = 0.0  # (a server kept across transactions: a
                        # session pool's, a pinned client's)
                    todo |= READY
            elif msg_type == PARAMETER_STATUS and body is not None:
                name, value = messages.decode_parameter_status(body)
                self.params[name] = value
                peer.params[name] = value
            elif msg_type == COPY_IN_RESPONSE:
                self.copy_in = True
            elif msg_type == ERROR_RESPONSE and body is not None:
                statements.on_error()
                if (
                    statements.armed_at >= 0
                    and retry is None
                    and self.status == IDLE
                    and self.pending == (0 if statements.armed_flush else 1)
                    and self.unsynced == statements.armed_flush
                    and statements.take_retry(messages.decode_error_fields(body), peer.statements)
                ):
                    retry = statements.retry
                    assert retry is not None
                    skip_from = end - 5 - len(body)
                    if retry.flush:
                        # PostgreSQL skips everything up to a Sync: ours ends the error (its
                        # ReadyForQuery is dropped with it) and the batch goes again right
                        # behind it, before anything the client sends next
                        statements.sent_sync()
                        self.to_server.append(build.SYNC + retry.replay(statements))
                        todo |= TO_SERVER
                        if statements.watching:
                            self.watch(True)
                elif statements.stale_errors_due:  # the answer to a FAIL_IN_PLACE
                    statements.stale_errors_due -= 1
                    if edits is None:
                        edits = []
                    edits.append((end - 5 - len(body), end, STALE_PLAN_ERROR))
                else:
                    self.errors.append(body)
                    todo |= ERRORS
                if self.held:
                    for _check in range(statements.void_checks()):
                        todo |= self._release_held(passed=True)  # the server skips them
            elif self.relay_wanted is RELAY_WANTED_WATCH:
                if msg_type == COMMAND_COMPLETE and body is not None:
                    statements.on_command_complete(body)
                elif msg_type == CLOSE_COMPLETE:
                    if not statements.on_close_complete():
                        if edits is None:
                            edits = []
                        edits.append((end - 5, end, b""))
                elif msg_type == PARAMETER_DESCRIPTION and body is not None:
                    if not statements.on_parameter_description():
                        if edits is None:
                            edits = []
                        edits.append((end - 5 - len(body), end, b""))
                elif msg_type in (ROW_DESCRIPTION, NO_DATA_MESSAGE) and body is not None:
                    forward, check = statements.on_shape(
                        shape_of(body) if msg_type == ROW_DESCRIPTION else NO_DATA
                    )
                    if not forward:
                        if edits is None:
                            edits = []
                        edits.append((end - 5 - len(body), end, b""))
                    if check is not None and self.held:
                        todo |= self._release_held(passed=check)
        if skip_from >= 0:
            if edits is None:
                edits = []
            edits.append((skip_from, len(data), b""))
        wanted = self.relay_wanted
        if wanted is not RELAY_WANTED:
            if wanted is RELAY_WANTED_WATCH:
                if not statements.watching:
                    self.watch(False)
            elif statements.in_xact:  # (descriptions and closes in flight turn it on as
                self.watch(True)  # they are sent: ClientRelay.requests, a replay)
            if not forwarded:
                # an incomplete message that may have to be cut waits for its end
                partial = self.scanner.partial_len
                self.tail = data[len(data) - partial :] if partial else b""
                if partial:
                    data = data[: len(data) - partial]
        if not forwarded and edits is not None:
            data = _edited(data, edits)
        stats.bytes_sent += len(data)
        if todo & READY and self.unsynced:
            todo &= ~READY  # (an extended batch is still open: more answers come)
        self.todo = todo
        return b"" if forwarded else data

    def watch(self, on: bool) -> None:
        """Look at descriptions, CloseCompletes and CommandComplete tags too, or not."""
        self.relay_wanted = self.scanner.wanted = (
            RELAY_WANTED_WATCH if on else RELAY_WANTED_PREPARED
        )

    def hold(self) -> None:
        """From now on the client's output waits for the answer to the check just sent."""
        if self.held is None:
            self.held = deque()
        self.held.append([])

    def _release_held(self, *, passed: bool) -> int:
        """A check ended: what waited for it goes to the server (TO_SERVER); if the server's
        copy has another shape than the one the client knows, its first message fails in
        place instead."""
        held = self.held
        assert held
        group = held.popleft()
        if not held:
            self.held = None
        if not passed and group:
            first = group[0]
            group[0] = FAIL_IN_PLACE + first[1 + int.from_bytes(first[1:5]) :]
            self.statements.stale_errors_due += 1
        if not group:
            return 0
        self.to_server.append(b"".join(group))
        return TO_SERVER


class ClientRelay:
    """How a client's messages go to its linked server: complete messages (one larger than
    client_max_buffer streamed, only its head read), what each makes the server owe, the
    prepared statements renamed where the pool shares servers, a statement pool's BEGIN
    refused, a batch that used a server's cached copy armed to go again should the copy be
    stale."""

    __slots__ = (
        "arrived",
        "id",
        "log_ctx",
        "log_queries",
        "mode",
        "params",
        "pinned",
        "rule",
        "splitter",
        "statements",
        "to_client",
        "todo",
    )

    def __init__(self, client_id: str, max_buffered: int, log_queries: bool) -> None:
        self.id = client_id
        self.splitter = MessageSplitter(
            max_buffered=max_buffered, head_size=HEAD_SIZE, max_lengths=FRONTEND_LIMITS
        )
        self.statements: ClientStatements | None = None  # named prepared statements
        self.log_queries = log_queries
        self.log_ctx = LogContext(client_id=client_id)
        self.rule: Rule | None = None
        self.mode: str | None = "session"  # the rule's pool (never None once validated)
        self.params: dict[str, str] = {}  # its session parameters (ParameterStatus too)
        self.pinned = False  # ran LISTEN under pool_pin_on_listen: keeps its server
        self.todo = 0  # what the last `requests` left to do (OWED_NOTHING, ...)
        self.to_client = b""  # bytes for the client (ANSWERED)
        # when the bytes `requests` is given came in, or left the queue for a server
        # (monotonic, set by the adapter from its own clock read): their queries' start
        self.arrived = 0.0

    def leaves_server_unusable(self) -> bool:
        """The client's connection is lost: is its server beyond a reset (closed, not
        reused)? So when a message of its was cut in half on the way (the server waits for
        the rest, and no reset can tell it apart), or it LISTENs (pool_pin_on_listen)."""
        return self.splitter.streaming or self.pinned

    def _prefix(self) -> str:
        if self.rule is not None and not self.rule.client_show_id:
            return "pooler: "
        return f"pooler: {self.id}: "

    def refusal(self, message: str) -> bytes:
        """An ERROR and a ReadyForQuery outside a transaction: what a statement-pool client
        gets instead of the ReadyForQuery that says its statement opened a transaction
        block (BEGIN, START TRANSACTION, or a batch that does). The server is rolled back
        by the reset as it goes back to the pool."""
        error = build.error_response("ERROR", "0A000", self._prefix() + message)
        return error + build.ready_for_query("I")

    def _answer(self, data: bytes) -> None:
        self.to_client += data
        self.todo |= ANSWERED

    def requests(self, server: ServerRelay, data: bytes) -> bytes | bytearray | None:
        """A chunk of client bytes for its linked `server`: counted as owed, renamed, kept
        for a retry. The bytes to write to the server now; None when there are none (all
        held for a statement check, or nothing to send). Raises ProtocolError."""
        n = self.splitter.lone(data)  # (its length, if it is one whole message)
        if n and data[0] == QUERY:  # the most common chunk: exactly one simple Query
            self.todo = 0
            instead = self._query_goes(server, data, 0, n)
            if instead is None:
                out: bytes | bytearray = data
            elif instead:
                out = instead
            else:  # answered here: the server owes nothing
                self.todo |= OWED_NOTHING
                return None
            held = server.held
            if held is None:
                return out
            held[-1].append(out)  # waiting for a statement check (prepared.py)
            return None
        splitter = self.splitter
        splitter.feed(data)
        buf = splitter.buffer
        statements = self.statements
        server_statements = server.statements
        self.todo = todo = 0
        write_now: bytes | None = None  # what goes before a statement check, when held
        pieces: list[bytes | bytearray] | None = None  # what goes, when not one run
        run_start = run_end = -1  # a run of bytes forwarded unchanged
        # a batch that may be sent again (prepared.Retry): where its use of a cached copy
        # starts, whether only Parses came before it in the batch, what came after it
        plain = not server.unsynced
        use_at = -1
        use_name = ""
        retryable = True
        for kind, msg_type, start, end in splitter:
            replacement: bytes | None = None
            if kind == MESSAGE:
                if msg_type in EXTENDED:  # (first: the most common in a chunk of several)
                    server.unsynced = True
                    if statements is not None and (
                        msg_type != EXECUTE
                        and (
                            msg_type != DESCRIBE or end == start + 5 or buf[start + 5] == STATEMENT
                        )
                    ):  # an Execute, or a Describe of a portal, names no statement
                        if msg_type == BIND:
                            replacement = statements.rewrite_bind(
                                buf, start + 5, end, server_statements
                            )
                        elif msg_type == PARSE:
                            replacement = statements.rewrite_parse(
                                buf, start + 5, end, server_statements
                            )
                        else:
                            replacement = statements.rewrite(
                                msg_type, buf[start + 5 : end], server_statements
                            )
                        young = server_statements.young_use
                        if young is not None:
                            server_statements.young_use = None
                            if plain and use_at < 0:
                                use_at, use_name = start, young
                        elif msg_type in (PARSE, CLOSE) and use_at >= 0:
                            retryable = False  # answers the replay would not redo
                    if msg_type != PARSE:
                        plain = False
                elif msg_type == SYNC:
                    if not server.copy_in:
                        if server.pending == 0:
                            server.query_started = self.arrived
                        server.pending += 1
                        if statements is not None:  # (`sent_sync`, inline)
                            server_statements.batches_sent += 1
                            statements.young = None
                            plain = True
                            if use_at >= 0 and end != len(buf):
                                retryable = False  # more follows: not the last batch
                    else:  # ignored in COPY IN, answered if the COPY failed first
                        server.desynced = True
                    server.unsynced = False
                elif msg_type == QUERY:
                    replacement = self._query_goes(server, buf, start, end)
                elif msg_type == FUNCTION_CALL:
                    if server.pending == 0:
                        server.query_started = self.arrived
                    server.pending += 1
                elif msg_type in (COPY_DONE, COPY_FAIL):
                    server.copy_in = False
                elif msg_type == TERMINATE:
                    todo = TERMINATE_SEEN
                    break
            elif kind == HEAD:
                replacement = self._head_goes(server, msg_type, buf, start, end)
            if replacement is None:
                if run_start < 0:
                    run_start = start
                run_end = end
                continue
            if pieces is None:
                pieces = []
            if run_start >= 0:
                pieces.append(buf[run_start:run_end])
                run_start = -1
            pieces.append(replacement)
            if statements is not None and server_statements.hold_at:
                # a statement check was injected: it goes, the rest waits for its answer
                at = server_statements.hold_at
                server_statements.hold_at = 0
                pieces[-1] = replacement[:at]
                first = b"".join(pieces)
                if server.held is None:
                    write_now = first  # (only at the first check: then held is set)
                else:
                    server.held[-1].append(first)
                server.hold()
                pieces = [replacement[at:]]
        if pieces is None:  # (the usual chunk: one run, the whole of it)
            if run_start < 0:
                out = b""
            elif run_start == 0 and run_end == len(buf) and type(buf) is bytes:
                out = buf
            else:
                out = buf[run_start:run_end]
        else:
            if run_start >= 0:
                pieces.append(buf[run_start:run_end])
            out = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        if use_at >= 0 and retryable:
            # A statement parsed in this batch used the server's copy (buf[use_at:] the use
            # up to the batch's Sync, or Flush): if the batch is the last thing sent, it may
            # be sent again should the copy turn out stale (prepared.Retry, made only if an
            # error asks: this runs for every such batch, kept by reference, three stores)
            last = buf[-5]
            flush = last == FLUSH
            if (
                server.unsynced == flush  # the chunk ends with the batch's Sync, or Flush
                and (flush or last == SYNC)
                and server.held is None
                and len(buf) - use_at <= RETRY_LIMIT
            ):
                server_statements.armed_at = use_at
                server_statements.armed_sent = buf if type(buf) is bytes else bytes(buf)
                server_statements.armed_name = use_name
                server_statements.armed_flush = flush
        if len(buf) >= HEAD_SIZE:  # (a small chunk stays until the next replaces it)
            splitter.forget_reported()
        if statements is not None and server_statements.watch_due:
            server_statements.watch_due = False
            if server.relay_wanted is not RELAY_WANTED_WATCH:
                server.watch(True)  # before the answers can come
        if not todo and server.pending == 0 and not server.unsynced:
            todo = OWED_NOTHING
        self.todo |= todo
        if out:
            held = server.held
            if held is None:
                return out
            held[-1].append(out)  # waiting for a statement check (prepared.py)
        return write_now

    def _head_goes(
        self, server: ServerRelay, msg_type: int, buf: bytes | bytearray, start: int, end: int
    ) -> bytes | None:
        """The first bytes (buf[start:end], at least HEAD_SIZE) of a message larger than
        client_max_buffer; the rest follows as it arrives, never held. Counted like a whole
        message; only a Bind's statement name may be rewritten. The bytes to send instead,
        or None."""
        if msg_type in (QUERY, FUNCTION_CALL):
            if server.pending == 0:
                server.query_started = self.arrived
            server.pending += 1
            if msg_type == QUERY:
                if self.log_queries:
                    text = bytes(buf[start + 5 : end]).decode("utf-8", "replace")
                    log.info("query", f"{text}... ({_length(buf, start)} bytes)", self.log_ctx)
                if self.statements is not None:  # too long to be a DEALLOCATE or DISCARD
                    self.statements.statements.pop("", None)
                    server.statements.sent_sync()
            return None
        if msg_type not in EXTENDED:
            return None  # CopyData
        server.unsynced = True
        statements = self.statements
        if statements is None:
            return None
        if msg_type == PARSE:  # shared statements are named after their whole text
            raise ProtocolError(
                f"a Parse of {_length(buf, start)} bytes is larger than client_max_buffer "
                f"({self.splitter.max_buffered}): statements shared by the pool are read whole",
                "54000",
            )
        return statements.rewrite_bind_head(
            buf[start + 5 : end], _length(buf, start), server.statements
        )

    def _query_goes(
        self, server: ServerRelay, buf: bytes | bytearray, start: int, end: int
    ) -> bytes | None:
        """A simple Query (buf[start:end]) on its way: counted as owed, logged, checked for
        the statement commands of shared prepared statements. The bytes to send instead, or
        None; b"" when it was answered here."""
        if (
            self.mode == "statement"
            and server.pending == 0  # nothing answered after it: ours comes in order
            and not server.unsynced
            and opens_transaction_block(buf, start + 5, end - 1)
        ):
            self._answer(self.refusal(STATEMENT_POOL_REFUSAL))
            return b""
        if server.pending == 0:
            server.query_started = self.arrived
        server.pending += 1
        if self.log_queries:
            log.info("query", query_text(buf, start, end), self.log_ctx)
        if (
            end - start > 6
            and buf[start + 5] in LISTEN_FIRST
            and buf[start + 6] in LISTEN_SECOND
            and self.mode != "session"
        ):
            self._listen(buf, start, end)
        statements = self.statements
        if statements is None:
            return None
        server_statements = server.statements
        server_statements.batches_sent += 1  # (`sent_sync`, inline: this runs per query)
        if end - start > 5 and buf[start + 5] not in MAYBE_DROP_FIRST:
            # (`on_query`'s common case, inline: not a DEALLOCATE or DISCARD; per query)
            statements.statements.pop("", None)  # it replaces the unnamed statement
            if statements.shapes:
                statements.shapes.pop("", None)
            statements.young = None
            return None
        return statements.on_query(buf, start + 5, end, server_statements)

    def _listen(self, buf: bytes | bytearray, start: int, end: int) -> None:
        """LISTEN/UNLISTEN in a transaction or statement pool. With pool_pin_on_listen the
        client keeps its server (and gets its notifications) until `UNLISTEN *` or it leaves;
        without, it is warned that notifications will not reach it (they would go to
        whichever client has the server next, or nowhere)."""
        words = query_text(buf, start, end).replace(";", " ").split()
        verb = words[0].lower() if words else ""
        rule = self.rule
        if verb == "listen" and rule is not None:
            if rule.pool_pin_on_listen:
                self.pinned = True
            else:
                self._answer(
                    build.notice_response(
                        "WARNING",
                        "01000",
                        f"{self._prefix()}LISTEN in a {self.mode} pool: notifications will not "
                        "be delivered (set pool_pin_on_listen to keep the server)",
                    )
                )
        elif verb == "unlisten" and words[1:2] == ["*"]:
            self.pinned = False
