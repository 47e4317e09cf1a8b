"""The relay's decisions without sockets (pooler/server/relay.py), as event → action tables.

Each row is one event and what the core decided for it (mitmproxy's layer tests):

    (CLIENT, bytes)  the client's bytes: `ClientRelay.requests`; decided: the bytes written
                     to the server now (None: none), the `todo` flags, bytes for the client;
    (SERVER, bytes)  the server's bytes: `ServerRelay.answers`; decided: the bytes written to
                     the client (AS_IS: the chunk as it came, before the bookkeeping), the
                     `todo` flags, bytes of the pooler's own for the server;

then, optionally, the connection state the row leaves (`pending`, `unsynced`, `copy_in`,
`status`, … of the server's core; `client.…` of the client's).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, NamedTuple

import pytest

from pooler.protocol import ProtocolError, build
from pooler.server.prepared import (
    EMPTY_PARSE,
    STALE_PLAN_ERROR,
    ClientStatements,
    KnownStatements,
    server_name,
)
from pooler.server.relay import (
    ANSWERED,
    ERRORS,
    HEAD_SIZE,
    OWED_NOTHING,
    READY,
    REFUSED_LATE,
    STATEMENT_POOL_REFUSAL,
    TERMINATE_SEEN,
    TO_SERVER,
    ClientRelay,
    ServerRelay,
)
from pooler.server.stats import RouteStats

CLIENT, SERVER = "client", "server"
AS_IS = "as is"  # the server's chunk went to the client untouched, before the bookkeeping
FLAGS = {
    READY: "READY",
    TO_SERVER: "TO_SERVER",
    ERRORS: "ERRORS",
    REFUSED_LATE: "REFUSED_LATE",
    OWED_NOTHING: "OWED_NOTHING",
    TERMINATE_SEEN: "TERMINATE_SEEN",
    ANSWERED: "ANSWERED",
}

# client messages
Q = build.query
SELECT = Q("select 1")
PARSE = build.parse("", "select $1", [23])
BIND = build.bind("", "", [0], [b"1"], [])
DESCRIBE_P = build.describe("P")
EXECUTE = build.execute()
SYNC = build.sync()
FLUSH = build.flush()
BATCH = PARSE + BIND + DESCRIBE_P + EXECUTE + SYNC
# server answers
Z_IDLE = build.ready_for_query("I")
Z_IN_XACT = build.ready_for_query("T")
ROWS = (
    build.row_description(["x"])
    + build.data_row(["1"])
    + build.command_complete("SELECT 1")
)  # fmt: skip
ANSWER = ROWS + Z_IDLE
PARSED, BOUND = build.PARSE_COMPLETE, build.BIND_COMPLETE
BATCH_ANSWER = PARSED + BOUND + ROWS + Z_IDLE
ERROR = build.error_response("ERROR", "42P01", 'relation "t" does not exist')
STALE = build.error_response("ERROR", "0A000", "cached plan must not change result type")


def flags(todo: int) -> set[str]:
    return {name for bit, name in FLAGS.items() if todo & bit}


class Did(NamedTuple):
    out: Any  # bytes written to the peer, None, or AS_IS
    todo: set[str]
    aside: bytes  # to_client (client event) / to_server (server event)


class Link:
    """A client's and a server's core, linked as `ServerConnection.link` leaves them."""

    def __init__(
        self, mode: str = "transaction", *, shares: bool = True, max_buffered: int = 1 << 16
    ) -> None:
        self.stats = RouteStats()
        self.known = KnownStatements()
        self.server = ServerRelay(self.stats, self.known, shares)
        self.client = ClientRelay("c1", max_buffered, False)
        self.client.mode = mode
        if shares:
            self.client.statements = ClientStatements(self.stats, self.known)
        self.errors: list[bytes] = []  # ErrorResponses counted (ClientConnection.server_error)

    def step(self, event: str, data: bytes) -> Did:
        if event == CLIENT:
            client = self.client
            out = client.requests(self.server, data)
            aside, client.to_client = client.to_client, b""
            return Did(None if out is None else bytes(out), flags(client.todo), aside)
        server = self.server
        events = server.scanner.feed(data)
        if server.uncut(
            self.client.mode, events, len(data)
        ):  # (data_received: written, then the bookkeeping)
            assert server.answers(data, events, self.client, True) == b""
            out: Any = AS_IS
        else:
            out = server.answers(data, events, self.client, False)
        aside = b"".join(server.to_server)
        server.to_server.clear()
        self.errors += server.errors
        server.errors.clear()
        return Did(out, flags(server.todo), aside)


def play(link: Link, rows: list[tuple[Any, ...]]) -> None:
    for number, row in enumerate(rows, 1):
        event, data, out, todo, *rest = row
        aside = rest[0] if rest else b""
        state: dict[str, Any] = rest[1] if len(rest) > 1 else {}
        did = link.step(event, data)
        assert did == Did(out, flags(todo), aside), f"row {number}: {event} {data[:80]!r}"
        for name, value in state.items():
            owner, _, attr = name.rpartition(".")
            got = getattr(link.client if owner == "client" else link.server, attr)
            assert got == value, f"row {number}: {name} is {got!r}, not {value!r}"


IDLE, IN_XACT = ord("I"), ord("T")


def test_simple_query_and_the_release_point() -> None:
    play(
        Link(shares=False),
        [
            (CLIENT, SELECT, SELECT, 0, b"", {"pending": 1, "unsynced": False}),
            (SERVER, ROWS, AS_IS, 0, b"", {"pending": 1}),  # no ReadyForQuery yet
            (SERVER, Z_IDLE, AS_IS, READY, b"", {"pending": 0, "status": IDLE}),
            (CLIENT, Q("begin"), Q("begin"), 0),
            # nothing owed, but in a transaction: READY, the pool mode decides
            (
                SERVER,
                build.command_complete("BEGIN") + Z_IN_XACT,
                AS_IS,
                READY,
                b"",
                {"status": IN_XACT},
            ),
        ],
    )


def test_pipelined_queries_owe_one_ready_each() -> None:
    play(
        Link(shares=False),
        [
            (CLIENT, SELECT + SELECT, SELECT + SELECT, 0, b"", {"pending": 2}),
            (SERVER, ANSWER, AS_IS, 0, b"", {"pending": 1}),
            (SERVER, ANSWER, AS_IS, READY, b"", {"pending": 0}),
        ],
    )


def test_extended_batch_with_and_without_sync_and_flush() -> None:
    play(
        Link(shares=False),
        [
            (CLIENT, PARSE + BIND, PARSE + BIND, 0, b"", {"pending": 0, "unsynced": True}),
            (CLIENT, DESCRIBE_P + EXECUTE + FLUSH, DESCRIBE_P + EXECUTE + FLUSH, 0),
            (SERVER, PARSED + BOUND + ROWS, AS_IS, 0, b"", {"unsynced": True}),
            (CLIENT, SYNC, SYNC, 0, b"", {"pending": 1, "unsynced": False}),
            (SERVER, Z_IDLE, AS_IS, READY, b"", {"pending": 0}),
            # a lone Flush (or CopyDone outside COPY) is never answered: the server may go
            (CLIENT, FLUSH, FLUSH, OWED_NOTHING, b"", {"pending": 0}),
        ],
    )


def test_pipelined_batches() -> None:
    play(
        Link(shares=False),
        [
            (CLIENT, BATCH + BATCH, BATCH + BATCH, 0, b"", {"pending": 2}),
            (SERVER, BATCH_ANSWER, AS_IS, 0, b"", {"pending": 1}),
            (SERVER, BATCH_ANSWER, AS_IS, READY, b"", {"pending": 0}),
        ],
    )


def test_an_error_in_a_batch_is_counted_and_ends_it_at_its_sync() -> None:
    link = Link(shares=False)
    play(
        link,
        [
            (CLIENT, BATCH, BATCH, 0, b"", {"pending": 1}),
            (SERVER, PARSED + ERROR + Z_IDLE, AS_IS, READY | ERRORS, b"", {"pending": 0}),
        ],
    )
    assert link.errors == [ERROR[5:]]


def test_copy_in_and_copy_out() -> None:
    copy_in = Q("copy t from stdin")
    copy_in_response = build.message(ord("G"), b"\0\0\0")
    copy_out_response = build.message(ord("H"), b"\0\0\0")
    data = build.copy_data(b"1\n")
    play(
        Link(shares=False),
        [
            (CLIENT, copy_in, copy_in, 0, b"", {"pending": 1}),
            (SERVER, copy_in_response, AS_IS, 0, b"", {"copy_in": True}),
            (CLIENT, data + data, data + data, 0, b"", {"copy_in": True}),
            # a Sync in COPY IN is ignored by PostgreSQL: its answer could not be counted
            (CLIENT, SYNC, SYNC, 0, b"", {"desynced": True, "pending": 1}),
            (CLIENT, build.copy_done(), build.copy_done(), 0, b"", {"copy_in": False}),
            (SERVER, build.command_complete("COPY 2") + Z_IDLE, AS_IS, READY, b"", {"pending": 0}),
            (CLIENT, Q("copy t to stdout"), Q("copy t to stdout"), 0),
            (SERVER, copy_out_response + build.copy_data(b"1\n") + build.copy_done(), AS_IS, 0),
            (SERVER, build.command_complete("COPY 1") + Z_IDLE, AS_IS, READY),
        ],
    )


def test_function_call_is_owed_a_ready() -> None:
    call = build.message(ord("F"), b"\0\0\0\x01\0\0\0\0\0\0")
    play(
        Link(shares=False),
        [
            (CLIENT, call, call, 0, b"", {"pending": 1}),
            (SERVER, build.message(ord("V"), b"\xff\xff\xff\xff") + Z_IDLE, AS_IS, READY),
        ],
    )


def test_terminate_mid_chunk_ends_what_is_looked_at() -> None:
    after = Q("select 2")
    play(
        Link(shares=False),
        [(CLIENT, SELECT + build.terminate() + after, SELECT, TERMINATE_SEEN, b"", {"pending": 1})],
    )


def test_a_message_split_over_chunks() -> None:
    play(
        Link(shares=False),
        [
            (CLIENT, SELECT[:3], None, OWED_NOTHING, b"", {"pending": 0}),
            (CLIENT, SELECT[3:], SELECT, 0, b"", {"pending": 1}),
        ],
    )


def test_a_message_larger_than_client_max_buffer_is_streamed_from_its_head() -> None:
    big = Q("select '" + "x" * (3 * HEAD_SIZE) + "'")
    head, middle, rest = big[: HEAD_SIZE + 10], big[HEAD_SIZE + 10 : -20], big[-20:]
    link = Link(shares=False, max_buffered=1024)
    play(
        link,
        [
            (CLIENT, big[:100], None, OWED_NOTHING, b"", {"pending": 0}),  # too little: waits
            (CLIENT, head[100:], head, 0, b"", {"pending": 1, "client.pinned": False}),
            (CLIENT, middle, middle, 0, b"", {"pending": 1}),
        ],
    )
    # a client lost now cuts a message in half: its server cannot be reset, only closed
    assert link.client.leaves_server_unusable()
    play(link, [(CLIENT, rest, rest, 0, b"", {"pending": 1})])
    assert not link.client.leaves_server_unusable()  # (whole: the reset drains the answer)


def test_a_malformed_message_raises() -> None:
    link = Link(shares=False)
    with pytest.raises(ProtocolError):
        link.step(CLIENT, build.message(ord("Z"), b""))  # a type no client sends


def test_parameter_status_reaches_both_sides() -> None:
    link = Link(shares=False)
    status = build.parameter_status("application_name", "app")
    play(
        link,
        [
            (CLIENT, Q("set application_name = app"), Q("set application_name = app"), 0),
            (SERVER, status + build.command_complete("SET") + Z_IDLE, AS_IS, READY),
        ],
    )
    assert link.server.params == {"application_name": "app"}
    assert link.client.params == {"application_name": "app"}


def test_statement_pool_refuses_begin() -> None:
    link = Link("statement", shares=False)
    refusal = link.client.refusal(STATEMENT_POOL_REFUSAL)
    play(
        link,
        [
            # a simple BEGIN: answered here, the server owes nothing
            (CLIENT, Q("begin"), None, ANSWERED | OWED_NOTHING, refusal, {"pending": 0}),
            # a batch that opens a transaction: its ReadyForQuery 'T' is replaced
            (CLIENT, BATCH, BATCH, 0),
            (SERVER, BATCH_ANSWER[:-6] + Z_IN_XACT, BATCH_ANSWER[:-6] + refusal, READY),
            # ... unless its start went with the previous chunk: too late to amend
            (CLIENT, BATCH, BATCH, 0),
            (SERVER, BATCH_ANSWER[:-5], BATCH_ANSWER[:-5], 0),
            (SERVER, Z_IN_XACT[-5:], b"", REFUSED_LATE),
        ],
    )


def test_prepared_statement_renamed_and_its_answers_dropped() -> None:
    link = Link()
    name = server_name("select $1", (23,))
    parse = build.parse("s1", "select $1", [23])
    described = build.message(ord("t"), b"\0\x01\0\0\0\x17") + build.row_description(["x"])
    play(
        link,
        [
            # the client's name becomes the shared one; a Describe records the copy's shape
            (
                CLIENT,
                parse + SYNC,
                build.parse(name, "select $1", [23]) + build.describe("S", name) + SYNC,
                0,
                b"",
                {"pending": 1},
            ),
            # the Describe's answer is ours: dropped; the ParseComplete is the client's
            (SERVER, PARSED + described + Z_IDLE, PARSED + Z_IDLE, READY),
            (
                CLIENT,
                build.bind("", "s1", [0], [b"1"], []) + EXECUTE + SYNC,
                build.bind("", name, [0], [b"1"], []) + EXECUTE + SYNC,
                0,
            ),
            (SERVER, BOUND + ROWS + Z_IDLE, AS_IS, READY),
        ],
    )


def test_cached_unnamed_statement_and_the_stale_copy_retry() -> None:
    link = Link()
    name = server_name("select $1", (23,))
    described = build.message(ord("t"), b"\0\x01\0\0\0\x17") + build.row_description(["x"])
    bind = build.bind("", name, [0], [b"1"], [])
    replay = (
        build.close("S", name)
        + build.parse(name, "select $1", [23])
        + build.describe("S", name)
        + bind
        + DESCRIBE_P
        + EXECUTE
        + SYNC
    )
    play(
        link,
        [
            # first time: the server gets a copy of the unnamed statement under its name
            (
                CLIENT,
                BATCH,
                build.parse(name, "select $1", [23]) + build.describe("S", name) + bind
                + DESCRIBE_P + EXECUTE + SYNC,
                0,
            ),
            (SERVER, PARSED + described + BOUND + ROWS + Z_IDLE, BATCH_ANSWER, READY),
            # again: the copy is used (an empty Parse stands in for the client's); the batch
            # is armed to go again should the copy be stale
            (CLIENT, BATCH, EMPTY_PARSE + bind + DESCRIBE_P + EXECUTE + SYNC, 0),
        ],
    )  # fmt: skip
    assert link.server.statements.armed_at >= 0
    play(
        link,
        [
            # the copy is stale: the error and its ReadyForQuery are dropped, the batch goes
            # again with a fresh copy; nothing is ready yet
            (SERVER, PARSED + STALE + Z_IDLE, PARSED, TO_SERVER, replay, {"pending": 1}),
            (
                SERVER,
                build.CLOSE_COMPLETE + PARSED + described + BOUND + ROWS,
                BOUND + ROWS,
                0,
            ),
            (SERVER, Z_IDLE, AS_IS, READY, b"", {"pending": 0}),
        ],
    )
    assert link.errors == []  # the client never saw the error
    play(
        link,
        [
            # armed again: an answer with no error in it goes as it is, before the
            # bookkeeping; one that ends inside a message waits for its end
            (CLIENT, BATCH, EMPTY_PARSE + bind + DESCRIBE_P + EXECUTE + SYNC, 0),
            (SERVER, BATCH_ANSWER, AS_IS, READY),
            (CLIENT, BATCH, EMPTY_PARSE + bind + DESCRIBE_P + EXECUTE + SYNC, 0),
            (SERVER, BATCH_ANSWER[:-3], BATCH_ANSWER[:-6], 0, b"", {"tail": Z_IDLE[:3]}),
            (SERVER, BATCH_ANSWER[-3:], Z_IDLE, READY, b"", {"tail": b""}),
        ],
    )


def test_a_stale_error_inside_a_transaction_block_is_not_hidden() -> None:
    link = Link()
    name = server_name("select $1", (23,))
    described = build.message(ord("t"), b"\0\x01\0\0\0\x17") + build.row_description(["x"])
    bind = build.bind("", name, [0], [b"1"], [])
    play(
        link,
        [
            (CLIENT, Q("begin"), Q("begin"), 0),
            (SERVER, build.command_complete("BEGIN") + Z_IN_XACT, AS_IS, READY),
            (
                CLIENT,
                BATCH,
                build.parse(name, "select $1", [23]) + build.describe("S", name) + bind
                + DESCRIBE_P + EXECUTE + SYNC,
                0,
            ),
            (SERVER, PARSED + described + BOUND + ROWS + Z_IN_XACT, BATCH_ANSWER[:-6] + Z_IN_XACT, READY),
            (CLIENT, BATCH, EMPTY_PARSE + bind + DESCRIBE_P + EXECUTE + SYNC, 0),
            # a replay would run outside the transaction the client sees: the error stands
            (SERVER, PARSED + STALE + Z_IDLE, PARSED + STALE + Z_IDLE, READY | ERRORS),
        ],
    )  # fmt: skip
    assert link.errors == [STALE[5:]]


def test_a_flush_batch_on_a_stale_copy_goes_again_behind_a_sync_of_ours() -> None:
    link = Link()
    name = server_name("select $1", (23,))
    shape = build.message(ord("t"), b"\0\x01\0\0\0\x17") + build.row_description(["x"])
    parse = build.parse("p1", "select $1", [23])
    prepare = parse + build.describe("S", "p1") + FLUSH  # asyncpg's prepare
    play(
        link,
        [
            # another statement's text is the same: the server has a copy already
            (
                CLIENT,
                build.parse("", "select $1", [23]) + SYNC,
                build.parse(name, "select $1", [23]) + build.describe("S", name) + SYNC,
                0,
            ),
            (SERVER, PARSED + shape + Z_IDLE, PARSED + Z_IDLE, READY),
            (
                CLIENT,
                prepare,
                EMPTY_PARSE + build.describe("S", name) + FLUSH,
                0,
                b"",
                {"unsynced": True},
            ),
            # the copy is stale: our Sync ends the error (its ReadyForQuery dropped with it)
            # and the batch goes again behind it
            (
                SERVER,
                PARSED + STALE,
                PARSED,
                TO_SERVER,
                SYNC
                + build.close("S", name)
                + build.parse(name, "select $1", [23])
                + build.describe("S", name)
                + build.describe("S", name)
                + FLUSH,
            ),
            (SERVER, Z_IDLE, b"", 0),  # our Sync's
            # the fresh copy's answers are ours; the Describe's are the client's
            (
                SERVER,
                build.CLOSE_COMPLETE + PARSED + shape + shape,
                shape,
                0,
                b"",
                {"unsynced": True, "pending": 0},
            ),
        ],
    )
    assert link.errors == []


def test_a_statement_check_holds_the_client_until_its_answer() -> None:
    link = Link()
    name = server_name("select $1", (23,))
    shape = build.message(ord("t"), b"\0\x01\0\0\0\x17") + build.row_description(["x"])
    other_shape = build.message(ord("t"), b"\0\x01\0\0\0\x17") + build.row_description(["y"])
    prepared = build.parse(name, "select $1", [23]) + build.describe("S", name)
    play(
        link,
        [
            # the client prepares and describes s1: it knows its shape from now on
            (
                CLIENT,
                build.parse("s1", "select $1", [23]) + build.describe("S", "s1") + SYNC,
                prepared + build.describe("S", name) + SYNC,
                0,
            ),
            (SERVER, PARSED + shape + shape + Z_IDLE, PARSED + shape + Z_IDLE, READY),
        ],
    )
    use = build.bind("", "s1", [0], [b"1"], []) + EXECUTE + SYNC
    renamed = build.bind("", name, [0], [b"1"], []) + EXECUTE + SYNC
    for answer, held in [
        (shape, renamed),  # the copy has the shape the client knows: the Bind goes
        (other_shape, None),  # another shape: the Bind fails in place, as PostgreSQL's would
    ]:
        link.server = ServerRelay(link.stats, link.known, True)  # linked to another server
        link.server.scanner.wanted = link.server.relay_wanted
        play(
            link,
            [
                # a fresh copy is checked first; the client's messages wait for the answer
                (CLIENT, use, prepared + FLUSH, 0, b"", {"pending": 1}),
            ],
        )
        assert link.server.held is not None and b"".join(link.server.held[0]) == renamed
        if held is not None:
            play(link, [(SERVER, PARSED + answer, b"", TO_SERVER, held, {"held": None})])
            play(link, [(SERVER, BOUND + ROWS + Z_IDLE, AS_IS, READY)])
        else:
            fail_in_place = build.describe("S", "pooler_never_prepared") + EXECUTE + SYNC
            play(link, [(SERVER, PARSED + answer, b"", TO_SERVER, fail_in_place)])
            error = build.error_response("ERROR", "26000", "prepared statement does not exist")
            # PostgreSQL's answer to it is told as the stale statement's own error
            play(link, [(SERVER, error + Z_IDLE, STALE_PLAN_ERROR + Z_IDLE, READY)])


def test_a_server_lost_mid_answer_still_owes_it() -> None:
    link = Link("statement")  # (answers are cut here: a partial one waits for its end)
    play(
        link,
        [
            (CLIENT, SELECT, SELECT, 0),
            (SERVER, ROWS + Z_IDLE[:3], ROWS, 0, b"", {"pending": 1, "tail": Z_IDLE[:3]}),
        ],
    )
    # connection lost now: the client is told (server_lost), the server owes its answer
    assert link.server.pending == 1 and link.server.scanner.partial_len == 3
    play(link, [(SERVER, Z_IDLE[3:], Z_IDLE, READY, b"", {"pending": 0, "tail": b""})])


def test_listen_outside_a_session_pool_warns_or_pins_the_server() -> None:
    link = Link(shares=False)
    link.client.rule = SimpleNamespace(  # type: ignore[assignment]
        pool_pin_on_listen=False, client_show_id=True
    )
    warning = build.notice_response(
        "WARNING",
        "01000",
        "pooler: c1: LISTEN in a transaction pool: notifications will not be delivered "
        "(set pool_pin_on_listen to keep the server)",
    )
    play(link, [(CLIENT, Q("listen jobs"), Q("listen jobs"), ANSWERED, warning)])
    link.client.rule.pool_pin_on_listen = True  # type: ignore[union-attr]
    play(
        link,
        [
            (SERVER, build.command_complete("LISTEN") + Z_IDLE, AS_IS, READY),
            (CLIENT, Q("LISTEN jobs"), Q("LISTEN jobs"), 0, b"", {"client.pinned": True}),
            (SERVER, build.command_complete("LISTEN") + Z_IDLE, AS_IS, READY),
            (CLIENT, Q("unlisten *"), Q("unlisten *"), 0, b"", {"client.pinned": False}),
        ],
    )
    play(link, [(CLIENT, Q("listen jobs"), Q("listen jobs"), 0, b"", {"client.pinned": True})])
    assert link.client.leaves_server_unusable()  # a client lost now: its server is closed


def test_a_statement_pool_refuses_begin_only_in_order() -> None:
    link = Link("statement", shares=False)
    # an answer is still owed: the refusal would overtake it, so the server refuses it
    play(
        link,
        [
            (CLIENT, SELECT, SELECT, 0),
            (CLIENT, Q("begin"), Q("begin"), 0, b"", {"pending": 2}),
        ],
    )


def test_copy_fail_ends_copy_in() -> None:
    fail = build.copy_fail("no more")
    play(
        Link(shares=False),
        [
            (CLIENT, Q("copy t from stdin"), Q("copy t from stdin"), 0),
            (SERVER, build.message(ord("G"), b"\0\0\0"), AS_IS, 0, b"", {"copy_in": True}),
            (CLIENT, fail, fail, 0, b"", {"copy_in": False, "pending": 1}),
            (SERVER, ERROR + Z_IDLE, AS_IS, READY | ERRORS, b"", {"pending": 0}),
        ],
    )


def test_close_and_deallocate_of_a_shared_statement() -> None:
    link = Link()
    name = server_name("select 1", ())
    shape = build.message(ord("t"), b"\0\0") + build.row_description(["x"])
    play(
        link,
        [
            (
                CLIENT,
                build.parse("s1", "select 1") + SYNC,
                build.parse(name, "select 1") + build.describe("S", name) + SYNC,
                0,
            ),
            (SERVER, PARSED + shape + Z_IDLE, PARSED + Z_IDLE, READY),
            # the client's Close must not drop the shared copy: a name never prepared
            # is closed instead, and its CloseComplete is the client's
            (
                CLIENT,
                build.close("S", "s1") + SYNC,
                build.close("S", "pooler_never_prepared") + SYNC,
                0,
            ),
            (SERVER, build.CLOSE_COMPLETE + Z_IDLE, build.CLOSE_COMPLETE + Z_IDLE, READY),
            (CLIENT, build.parse("s2", "select 1") + SYNC, EMPTY_PARSE + SYNC, 0),
            (SERVER, PARSED + Z_IDLE, AS_IS, READY),
            # DEALLOCATE of the client's name drops the server's copy under its own name
            (CLIENT, Q("deallocate s2"), Q(f"DEALLOCATE {name}"), 0, b"", {"pending": 1}),
        ],
    )
    assert "s2" not in link.client.statements.statements  # type: ignore[union-attr]


def test_a_bind_larger_than_client_max_buffer_is_renamed_from_its_head() -> None:
    link = Link(max_buffered=1024)
    name = server_name("select $1", (25,))
    shape = build.message(ord("t"), b"\0\x01\0\0\0\x19") + build.row_description(["x"])
    play(
        link,
        [
            (
                CLIENT,
                build.parse("s1", "select $1", [25]) + SYNC,
                build.parse(name, "select $1", [25]) + build.describe("S", name) + SYNC,
                0,
            ),
            (SERVER, PARSED + shape + Z_IDLE, PARSED + Z_IDLE, READY),
        ],
    )
    value = b"v" * (3 * HEAD_SIZE)
    bind = build.bind("", "s1", [0], [value], [])
    head, rest = bind[: HEAD_SIZE + 100], bind[HEAD_SIZE + 100 :]
    renamed = build.bind("", name, [0], [value], [])
    play(
        link,
        [
            (
                CLIENT,
                head,
                renamed[: len(head) + len(name) - len("s1")],
                0,
                b"",
                {"unsynced": True},
            ),
            (CLIENT, rest + EXECUTE + SYNC, rest + EXECUTE + SYNC, 0, b"", {"pending": 1}),
            (SERVER, BOUND + ROWS + Z_IDLE, AS_IS, READY),
        ],
    )


def test_a_parse_larger_than_client_max_buffer_is_refused() -> None:
    link = Link(max_buffered=1024)
    parse = build.parse("s1", "select '" + "x" * (2 * HEAD_SIZE) + "'")
    with pytest.raises(ProtocolError) as refused:
        link.step(CLIENT, parse[: HEAD_SIZE + 10])
    assert refused.value.sqlstate == "54000"  # statements shared by the pool are read whole


def test_two_statement_checks_in_one_chunk_and_a_chunk_while_held() -> None:
    link = Link()
    names = [server_name(f"select {n}", ()) for n in (1, 2)]
    shapes = [build.message(ord("t"), b"\0\0") + build.row_description([c]) for c in "ab"]
    for n, (name, shape) in enumerate(zip(names, shapes, strict=True), 1):
        prepared = build.parse(name, f"select {n}") + build.describe("S", name)
        play(
            link,
            [
                (
                    CLIENT,
                    build.parse(f"s{n}", f"select {n}") + build.describe("S", f"s{n}") + SYNC,
                    prepared + build.describe("S", name) + SYNC,
                    0,
                ),
                (SERVER, PARSED + shape + shape + Z_IDLE, PARSED + shape + Z_IDLE, READY),
            ],
        )
    link.server = ServerRelay(link.stats, link.known, True)  # linked to another server
    link.server.scanner.wanted = link.server.relay_wanted
    check = [
        build.parse(name, f"select {n}") + build.describe("S", name) + FLUSH
        for n, name in enumerate(names, 1)
    ]
    binds = [build.bind("", name, [], [], []) for name in names]
    play(
        link,
        [
            # the first check goes now; the first Bind and the second check wait for its
            # answer, the second Bind and the rest for the second check's
            (
                CLIENT,
                build.bind("", "s1", [], [], []) + build.bind("", "s2", [], [], []) + EXECUTE,
                check[0],
                0,
            ),
            (CLIENT, SYNC, None, 0, b"", {"pending": 1}),  # (all of it waits too)
            (SERVER, PARSED + shapes[0], b"", TO_SERVER, binds[0] + check[1]),
            (SERVER, PARSED + shapes[1], b"", TO_SERVER, binds[1] + EXECUTE + SYNC),
            (SERVER, BOUND + BOUND + ROWS + Z_IDLE, AS_IS, READY, b"", {"held": None}),
        ],
    )


def test_a_parse_re_sent_is_known_and_another_of_the_same_length_is_not_taken_for_it() -> None:
    link = Link()
    first, other = ("select $1", [23]), ("select $2", [23])  # (bodies of one length)
    names = [server_name(query, tuple(types)) for query, types in (first, other)]
    shape = build.message(ord("t"), b"\0\x01\0\0\0\x17") + build.row_description(["x"])
    for (query, types), name in zip((first, other), names, strict=True):
        parse = build.parse("", query, types)
        prepared = build.parse(name, query, types) + build.describe("S", name)
        play(
            link,
            [
                (CLIENT, parse + SYNC, prepared + SYNC, 0),
                (SERVER, PARSED + shape + Z_IDLE, PARSED + Z_IDLE, READY),
                (CLIENT, parse + SYNC, EMPTY_PARSE + SYNC, 0),  # the same again: the copy
                (SERVER, PARSED + Z_IDLE, AS_IS, READY),
            ],
        )
        assert link.client.statements.statements[""].server_name == name  # type: ignore[union-attr]
