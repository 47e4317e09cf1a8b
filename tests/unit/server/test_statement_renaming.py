"""Prepared-statement renaming for transaction pools, without sockets."""

from collections import OrderedDict

import pytest

from pooler.protocol import build, iter_messages, messages
from pooler.protocol.errors import ProtocolError
from pooler.server.prepared import (
    CACHED_TEXT_LIMIT,
    CLOSE_NOTHING,
    ClientStatements,
    KnownStatements,
    Retry,
    ServerStatements,
    _cached_parse,
    _cached_statement,
    server_name,
    shape_of,
)
from pooler.server.stats import RouteStats as Counters

KNOWN = KnownStatements()


def body(message: bytes) -> tuple[int, bytes]:
    [(msg_type, payload)] = iter_messages(message)
    return msg_type, payload


def rewrite(client: ClientStatements, message: bytes, server: ServerStatements):
    msg_type, payload = body(message)
    return client.rewrite(msg_type, payload, server)


def prepared(name: str, query: str, types=()) -> list[tuple[int, bytes]]:
    """A Parse of the server's copy and the Describe that records its shape."""
    return iter_messages(build.parse(name, query, types) + build.describe("S", name))


def test_same_query_gets_the_same_server_name():
    assert server_name("select $1", (23,)) == server_name("select $1", (23,))
    assert server_name("select $1", (23,)) != server_name("select $1", (25,))
    assert server_name("select 1", ()).startswith("pooler_")


def test_first_parse_is_renamed_and_later_clients_reuse_it():
    counters = Counters()
    server = ServerStatements()
    a, b = ClientStatements(counters, KNOWN), ClientStatements(counters, KNOWN)
    sent = rewrite(a, build.parse("s1", "select $1", [23]), server)
    name = server_name("select $1", (23,))
    assert iter_messages(sent) == prepared(name, "select $1", [23])
    # another client, same text, other name: the server already has it
    sent = rewrite(b, build.parse("other", "select $1", [23]), server)
    assert iter_messages(sent) == iter_messages(build.parse("", ""))
    assert (counters.client_parses, counters.server_parses) == (2, 1)


def test_bind_on_a_server_without_the_statement_injects_a_parse_and_swallows_its_answer():
    counters = Counters()
    first, second = ServerStatements(), ServerStatements()
    client = ClientStatements(counters, KNOWN)
    rewrite(client, build.parse("s1", "select 1"), first)
    sent = rewrite(client, build.bind("", "s1"), second)  # the client moved to `second`
    name = server_name("select 1", ())
    kinds = [m for m, _ in iter_messages(sent)]
    assert kinds == [messages.PARSE, messages.DESCRIBE, messages.BIND]
    assert messages.decode_bind(iter_messages(sent)[2][1]).statement == name
    assert second.on_parse_complete() is False  # the injected Parse's answer is dropped
    assert second.on_parameter_description() is False  # and its Describe's
    assert second.on_shape(b"shape") == (False, None)
    assert second.names[name] == b"shape"
    assert counters.binds == 1


def test_close_keeps_the_shared_statement_and_answers_in_order():
    client = ClientStatements(Counters(), KNOWN)
    server = ServerStatements()
    rewrite(client, build.parse("s1", "select 1"), server)
    sent = rewrite(client, build.close("S", "s1"), server)
    assert messages.decode_close(body(sent)[1]) == ("S", CLOSE_NOTHING)
    assert server.has(server_name("select 1", ()))
    assert rewrite(client, build.bind("", "s1"), server) is None  # unknown again: as is


def test_failed_parse_does_not_poison_the_server_table():
    client = ClientStatements(Counters(), KNOWN)
    server = ServerStatements()
    rewrite(client, build.parse("bad", "selec 1"), server)
    server.sent_sync()
    server.on_ready()  # ErrorResponse then ReadyForQuery: no ParseComplete came
    assert not server.has(server_name("selec 1", ()))
    sent = rewrite(client, build.parse("bad", "selec 1"), server)
    assert iter_messages(sent) == prepared(server_name("selec 1", ()), "selec 1")


def test_unnamed_statements_are_cached_on_the_server():
    client = ClientStatements(Counters(), KNOWN)
    server = ServerStatements()
    name = server_name("select $1", (23,))
    # first time: prepared on the server under the shared name; its ParseComplete is the
    # client's; the Bind of the unnamed statement goes to the shared one
    sent = rewrite(client, build.parse("", "select $1", [23]), server)
    assert iter_messages(sent) == prepared(name, "select $1", [23])
    assert server.on_parse_complete() is True
    sent = rewrite(client, build.bind("", "", params=[b"1"]), server)
    assert messages.decode_bind(body(sent)[1]).statement == name
    sent = rewrite(client, build.describe("S", ""), server)
    assert iter_messages(sent) == iter_messages(build.describe("S", name))
    # the same unnamed query again: no parse and plan on the server, an empty Parse keeps
    # the ParseComplete in its place
    sent = rewrite(client, build.parse("", "select $1", [23]), server)
    assert iter_messages(sent) == iter_messages(build.parse("", ""))
    # a simple query replaces the unnamed statement: a Bind of it is the server's to refuse
    assert rewrite(client, build.query("select 2"), server) is None
    assert rewrite(client, build.bind("", ""), server) is None
    # Close of the unnamed statement keeps the shared one on the server
    rewrite(client, build.parse("", "select $1", [23]), server)
    sent = rewrite(client, build.close("S", ""), server)
    assert iter_messages(sent) == iter_messages(build.close("S", CLOSE_NOTHING))
    assert server.has(name)


def test_deallocate_and_discard():
    client = ClientStatements(Counters(), KNOWN)
    server = ServerStatements()
    rewrite(client, build.parse("_pg3_0", "select 1"), server)
    sent = rewrite(client, build.query("DEALLOCATE _pg3_0"), server)
    assert messages.decode_query(body(sent)[1]) == f"DEALLOCATE {server_name('select 1', ())}"
    rewrite(client, build.parse("x", "select 2"), server)
    assert rewrite(client, build.query("discard all"), server) is None
    assert not server.names
    assert rewrite(client, build.query("deallocate unknown_one"), server) is None


def test_known_statements_are_answered_without_a_server():
    known = KnownStatements()
    server = ServerStatements(known)
    first = ClientStatements(Counters(), known)
    rewrite(first, build.parse("p0", "begin"), server)
    server.sent_sync()
    assert server.on_parse_complete() is True  # the server prepared it: now known
    later = ClientStatements(Counters(), known)
    found = iter_messages(build.parse("P_0", "begin") + build.sync())
    assert later.answer_locally(found) == build.PARSE_COMPLETE + build.READY_FOR_QUERY_IDLE
    assert later.answer_locally(iter_messages(build.parse("x", "select 42") + build.sync())) is None
    assert later.answer_locally(iter_messages(build.parse("P_0", "begin"))) is None  # no Sync


def test_bind_keeps_portal_parameters_and_formats_when_renamed():
    client = ClientStatements(Counters(), KNOWN)
    server = ServerStatements()
    rewrite(client, build.parse("s1", "select $1::text, $2::int", [25, 23]), server)
    original = build.bind("portal é", "s1", [0, 1], [b"x\0y", None], [1, 0])
    sent = rewrite(client, original, server)
    renamed = messages.decode_bind(body(sent)[1])
    before = messages.decode_bind(body(original)[1])
    assert renamed.statement == server_name("select $1::text, $2::int", (25, 23))
    assert (renamed.portal, renamed.rest) == (before.portal, before.rest)


def test_bind_without_a_statement_terminator_is_a_protocol_error():
    client = ClientStatements(Counters(), KNOWN)
    with pytest.raises(ProtocolError):
        client.rewrite(messages.BIND, b"portal\0name-without-end", ServerStatements())


def test_long_query_texts_are_renamed_without_being_memoised():
    text = "select '" + "x" * CACHED_TEXT_LIMIT + "'"
    before = (_cached_parse.cache_info().currsize, _cached_statement.cache_info().currsize)
    client = ClientStatements(Counters(), KNOWN)
    sent = rewrite(client, build.parse("long", text), ServerStatements())
    assert iter_messages(sent) == prepared(server_name(text, ()), text)
    assert (_cached_parse.cache_info().currsize, _cached_statement.cache_info().currsize) == before


T, B = ord("T"), ord("B")


def _prepared_in(server: ServerStatements, client: ClientStatements, status: bytes) -> str:
    """A client Parse+Sync answered ParseComplete+ReadyForQuery(status): the server name."""
    out = rewrite(client, build.parse("", "insert into t values ($1::ty[])"), server)
    name = messages.decode_parse(iter_messages(out)[0][1]).name
    server.sent_sync()
    assert server.on_parse_complete() is True
    server.on_ready(status[0])
    return name


def test_statements_prepared_in_a_rolled_back_transaction_are_doomed():
    server = ServerStatements()
    client = ClientStatements(Counters(), KNOWN)
    server.on_ready(T)  # BEGIN
    name = _prepared_in(server, client, b"T")
    assert server.in_xact == [name] and not server.doomed
    server.sent_sync()
    server.on_command_complete(b"ROLLBACK\0")
    server.on_ready(ord("I"))
    assert server.doomed == {name} and not server.in_xact


def test_statements_prepared_in_a_committed_transaction_stay():
    server = ServerStatements()
    client = ClientStatements(Counters(), KNOWN)
    name = _prepared_in(server, client, b"T")
    server.sent_sync()
    server.on_command_complete(b"COMMIT\0")
    server.on_ready(ord("I"))
    assert not server.doomed and not server.in_xact and server.has(name)


def test_a_failed_batch_dooms_what_it_prepared():
    server = ServerStatements()
    client = ClientStatements(Counters(), KNOWN)
    rewrite(client, build.parse("", "select $1::ty"), server)
    server.sent_sync()
    server.on_parse_complete()
    server.on_error()  # its Execute failed: the implicit transaction rolled back
    server.on_ready(ord("I"))
    assert len(server.doomed) == 1


def test_a_transaction_the_pooler_rolled_back_dooms_its_statements():
    server = ServerStatements()
    client = ClientStatements(Counters(), KNOWN)
    name = _prepared_in(server, client, b"T")
    server.reset()  # the client left mid-transaction; the reset ran ROLLBACK
    assert server.doomed == {name}
    server.forget_all()
    assert not server.doomed


def test_the_head_of_a_streamed_bind_is_renamed_like_a_whole_one():
    client, server = ClientStatements(Counters(), KnownStatements()), ServerStatements()
    rewrite(client, build.parse("s1", "select $1::bytea"), server)
    bind = build.bind("portal", "s1", (1,), (b"z" * 50_000,))
    whole = rewrite(client, bind, server)
    head_len = 5 + 2000
    head = client.rewrite_bind_head(bind[5:head_len], len(bind) - 1, server)
    assert head is not None
    assert head + bind[head_len:] == whole  # same name, same length field, rest unchanged
    other = build.bind("", "unknown", (), (b"z" * 50_000,))
    assert client.rewrite_bind_head(other[5:1000], len(other) - 1, server) is None


def test_the_head_of_a_streamed_bind_needs_its_names():
    client, server = ClientStatements(Counters(), KnownStatements()), ServerStatements()
    with pytest.raises(ProtocolError):
        client.rewrite_bind_head(b"portal\0" + b"s" * 100, 50_000, server)


def _described(client: ClientStatements, server: ServerStatements, name: str, shape: bytes):
    """The client prepares `name` (select * from t) on `server` and is described `shape`."""
    rewrite(client, build.parse(name, "select * from t"), server)
    rewrite(client, build.describe("S", name), server)
    server.sent_sync()
    assert server.on_parse_complete() is True
    assert server.on_parameter_description() is False  # the pooler's own Describe
    assert server.on_shape(shape) == (False, None)
    assert server.on_parameter_description() is True  # the client's
    assert server.on_shape(shape) == (True, None)
    server.on_ready()
    assert client.shapes[name] == shape


def test_a_client_that_knows_its_shape_gets_a_checked_copy_elsewhere():
    client = ClientStatements(Counters(), KNOWN)
    first, second = ServerStatements(), ServerStatements()
    _described(client, first, "s1", b"two columns")
    name = server_name("select * from t", ())
    sent = rewrite(client, build.bind("", "s1"), second)
    kinds = [m for m, _ in iter_messages(sent)]
    assert kinds == [messages.PARSE, messages.DESCRIBE, messages.FLUSH, messages.BIND]
    # everything from the Bind on waits for the check
    assert messages.decode_bind(body(sent[second.hold_at :])[1]).statement == name
    assert second.on_parse_complete() is False
    assert second.on_parameter_description() is False
    assert second.on_shape(b"two columns") == (False, True)  # the same shape: go on
    assert second.names[name] == b"two columns"
    second.hold_at = 0
    assert rewrite(client, build.bind("", "s1"), second) is not None
    assert second.hold_at == 0  # the copy is known to fit now: no check


def test_a_copy_of_another_shape_is_prepared_again_and_the_check_fails():
    client = ClientStatements(Counters(), KNOWN)
    first, second = ServerStatements(), ServerStatements()
    _described(client, first, "s1", b"two columns")
    other = ClientStatements(Counters(), KNOWN)
    _described(other, second, "x", b"three columns")  # a schema change in between
    sent = rewrite(client, build.bind("", "s1"), second)
    kinds = [m for m, _ in iter_messages(sent)]
    assert kinds == [messages.CLOSE, messages.PARSE, messages.DESCRIBE, messages.FLUSH, B]
    assert second.on_close_complete() is False
    assert second.on_parse_complete() is False
    assert second.on_parameter_description() is False
    assert second.on_shape(b"three columns") == (False, False)  # fails in place


def test_an_error_voids_the_checks_of_its_batch():
    client = ClientStatements(Counters(), KNOWN)
    first, second = ServerStatements(), ServerStatements()
    _described(client, first, "s1", b"two columns")
    rewrite(client, build.bind("", "s1"), second)
    second.sent_sync()
    assert second.void_checks() == 1  # the server skips the check up to the Sync
    assert second.void_checks() == 0
    second.on_ready()
    assert not second.watching


def test_shape_ignores_the_columns_table_and_attribute_number():
    def row_description(table_oid: int) -> bytes:
        column = b"a\0" + table_oid.to_bytes(4) + (2).to_bytes(2) + (23).to_bytes(4)
        return (1).to_bytes(2) + column + (4).to_bytes(2) + (-1).to_bytes(4, signed=True) + b"\0\0"

    assert shape_of(row_description(16384)) == shape_of(row_description(99999))
    assert shape_of(row_description(1)) != shape_of(row_description(1).replace(b"a\0", b"b\0"))


def test_a_batch_using_a_stale_copy_for_a_fresh_parse_goes_again():
    client = ClientStatements(Counters(), KNOWN)
    server = ServerStatements()
    name = server_name("select $1::ty", ())
    server.names[name] = b"old shape"  # cached by an earlier batch
    assert rewrite(client, build.parse("", "select $1::ty"), server) == build.parse("", "")
    assert client.young == ""
    bind = build.bind("", "", params=[b"x"])
    assert rewrite(client, bind, server) is not None
    assert server.young_use == ""  # the copy served a statement parsed in this batch
    server.young_use = None
    server.sent_sync()
    assert server.on_parse_complete() is True  # the empty Parse's: the client's
    batch = bind + build.execute() + build.sync()
    server.retry = Retry(client.statements[""], client, "", batch)
    assert server.retry.describes == 0
    stale = {"C": "XX000", "M": "cache lookup failed for type 16412"}
    assert server.may_retry(stale)
    assert not server.may_retry({"C": "23505", "M": "duplicate key"})
    server.on_error()
    server.on_ready(ord("I"))
    replay = iter_messages(server.retry.replay(server))
    kinds = [m for m, _ in replay]
    assert kinds == [messages.CLOSE, messages.PARSE, messages.DESCRIBE, B, ord("E"), ord("S")]
    assert messages.decode_bind(replay[3][1]).statement == name  # renamed again
    # the fresh copy's answers are dropped; the client gets the Bind's and Execute's
    assert server.on_close_complete() is False
    assert server.on_parse_complete() is False
    assert server.on_parameter_description() is False
    assert server.on_shape(b"new shape") == (False, None)
    assert server.names[name] == b"new shape"


def test_a_fresh_parse_described_on_a_copy_whose_types_were_inferred_gets_a_fresh_copy():
    """A copy keeps the parameter types PostgreSQL inferred at its Parse (a DROP/CREATE
    TABLE since may make a fresh Parse infer others): a client that parses the text in this
    batch and describes it is described a fresh copy (Close, Parse, Describe, then its own
    Describe); one whose Parse gave every type, or that describes a statement parsed in an
    earlier batch, is described the copy it has."""
    query = "insert into t values ($1)"
    name = server_name(query, ())
    server = ServerStatements(names=OrderedDict({name: b""}))
    client = ClientStatements(Counters(), KNOWN)
    assert rewrite(client, build.parse("s1", query), server) == build.parse("", "")
    sent = rewrite(client, build.describe("S", "s1"), server)
    assert iter_messages(sent) == [
        *iter_messages(build.close("S", name)),
        *prepared(name, query),
        *iter_messages(build.describe("S", name)),
    ]
    assert server.on_close_complete() is False  # the Close's answer is dropped
    # described again in a later batch: the copy it was told of
    client.young = None
    assert iter_messages(rewrite(client, build.describe("S", "s1"), server)) == iter_messages(
        build.describe("S", name)
    )
    # every type given: nothing is inferred, the copy is what a fresh Parse would be
    typed = server_name(query, (1083,))
    server = ServerStatements(names=OrderedDict({typed: b""}))
    rewrite(client, build.parse("s2", query, [1083]), server)
    assert iter_messages(rewrite(client, build.describe("S", "s2"), server)) == iter_messages(
        build.describe("S", typed)
    )


def test_which_statements_may_have_their_types_inferred():
    from pooler.server.prepared import infers_types

    assert not infers_types("select 1", ())
    assert infers_types("select $1", ())
    assert infers_types("select $1, $2", (23,))
    assert infers_types("select $1", (0,))  # 0: unspecified
    assert not infers_types("select $1, $2", (23, 25))
    assert infers_types("select '$1'", ())  # (an overestimate: only costs a fresh copy)


def test_a_client_described_a_newer_copy_binds_on_no_older_one():
    """Copies record when they were parsed; a client described its statement (whose
    parameter types PostgreSQL infers) from a copy parsed later than this server's binds it
    only after the copy is parsed again (and its shape checked); a statement whose types were
    all given, or a copy as new as the one described, is used as it is."""
    query = "insert into t values ($1)"
    name = server_name(query, ())
    known = KnownStatements()
    old = ServerStatements(known, names=OrderedDict({name: b""}))  # parsed before any stamp
    fresh = ServerStatements(known)
    client = ClientStatements(Counters(), known)
    rewrite(client, build.parse("s1", query), fresh)  # a Parse the server did not have
    assert fresh.parsed_at[name] == known.parses
    sent = rewrite(client, build.describe("S", "s1"), fresh)
    assert iter_messages(sent) == iter_messages(build.describe("S", name))
    assert fresh.on_parse_complete() and fresh.on_parameter_description() is False
    fresh.on_shape(b"")  # the injected Describe's
    assert fresh.on_parameter_description() is True
    assert fresh.on_shape(b"") == (True, None)  # the client's: it knows the copy of `fresh`
    assert client.described_at["s1"] == fresh.parsed_at[name]
    kinds = [m for m, _ in iter_messages(rewrite(client, build.bind("", "s1"), old))]
    assert kinds == [
        messages.CLOSE,
        messages.PARSE,
        messages.DESCRIBE,
        messages.FLUSH,
        messages.BIND,
    ]
    assert old.parsed_at[name] > fresh.parsed_at[name]
    # now as new: used as it is
    assert [m for m, _ in iter_messages(rewrite(client, build.bind("", "s1"), fresh))] == [
        messages.BIND
    ]
