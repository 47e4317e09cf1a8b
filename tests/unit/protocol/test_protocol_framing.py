"""Startup packet parsing and incremental message framing."""

from __future__ import annotations

import itertools
import struct

import pytest
from hypothesis import given, settings, strategies as st

from pooler.protocol import build
from pooler.protocol.errors import ProtocolError
from pooler.protocol.framing import (
    CHUNK,
    HEAD,
    MAX_STARTUP_PACKET_LENGTH,
    MESSAGE,
    CancelRequest,
    GSSENCRequest,
    MessageSplitter,
    SSLRequest,
    StartupPacket,
    iter_messages,
    read_startup,
)

# --------------------------------------------------------------------------- startup


def test_startup_roundtrip_and_database_default():
    pkt = build.startup_message({"user": "alice", "application_name": "psql"})
    msg, used = read_startup(pkt + b"extra")
    assert used == len(pkt)
    assert isinstance(msg, StartupPacket)
    assert msg.protocol == 196608
    assert msg.user == "alice"
    assert msg.database == "alice"
    assert msg.application_name == "psql"
    assert msg.options is None and msg.replication is None


def test_startup_explicit_database_options_replication():
    params = {"user": "u", "database": "db", "options": "-c x=1", "replication": "database"}
    msg, _ = read_startup(build.startup_message(params))
    assert msg.params == params
    assert msg.options == "-c x=1" and msg.replication == "database"


def test_startup_empty_database_defaults_to_user():
    msg, _ = read_startup(build.startup_message({"user": "u", "database": ""}))
    assert msg.database == "u"


def test_startup_truncated_returns_none():
    pkt = build.startup_message({"user": "alice"})
    for i in range(len(pkt)):
        assert read_startup(pkt[:i]) is None


def test_ssl_gss_cancel_requests():
    assert read_startup(build.ssl_request()) == (SSLRequest(), 8)
    assert read_startup(build.gssenc_request() + b"\x16\x03") == (GSSENCRequest(), 8)
    msg, used = read_startup(build.cancel_request(1234, -5))
    assert used == 16 and msg == CancelRequest(1234, -5)
    assert "-5" not in repr(msg)  # the secret stays out of logs


@pytest.mark.parametrize("length", [0, 4, 7, MAX_STARTUP_PACKET_LENGTH + 1, -1])
def test_startup_bad_length(length):
    with pytest.raises(ProtocolError) as ei:
        read_startup(struct.pack("!ii", length, 196608) + b"\0" * 8)
    assert ei.value.message == "invalid length of startup packet"
    assert ei.value.sqlstate == "08P01"


def test_startup_oversized_rejected_before_complete():
    with pytest.raises(ProtocolError):
        read_startup(struct.pack("!i", 20000))


def test_protocol_2_rejected():
    with pytest.raises(ProtocolError) as ei:
        read_startup(struct.pack("!ii", 9, 2 << 16) + b"\0")
    assert ei.value.message == "unsupported frontend protocol 2.0: server supports 3.0 to 3.0"
    assert ei.value.sqlstate == "0A000"


def test_protocol_3_2_is_accepted_for_negotiation():
    msg, _ = read_startup(build.startup_message({"user": "u", "_pq_.x": "1"}, (3 << 16) | 2))
    assert msg.minor_version == 2
    assert msg.protocol_options == {"_pq_.x": "1"}


def test_cancel_bad_length():
    with pytest.raises(ProtocolError):
        read_startup(struct.pack("!iiii", 20, 80877102, 1, 2) + b"\0" * 4)


def test_ssl_request_bad_length():
    with pytest.raises(ProtocolError):
        read_startup(struct.pack("!ii", 12, 80877103) + b"\0" * 4)


def _raw_startup(payload: bytes) -> bytes:
    return struct.pack("!ii", len(payload) + 8, 196608) + payload


@pytest.mark.parametrize(
    "payload",
    [
        b"user\0alice\0",  # missing final terminator
        b"user\0alice\0database\0",  # odd key/value list
        b"user\0alice",  # unterminated value
        b"",  # nothing at all
    ],
)
def test_startup_bad_layout(payload):
    with pytest.raises(ProtocolError) as ei:
        read_startup(_raw_startup(payload))
    assert ei.value.sqlstate == "08P01"


def test_startup_missing_user():
    with pytest.raises(ProtocolError) as ei:
        read_startup(_raw_startup(b"database\0x\0\0"))
    assert ei.value.sqlstate == "28000"


def test_startup_non_utf8():
    with pytest.raises(ProtocolError) as ei:
        read_startup(_raw_startup(b"user\0\xff\xfe\0\0"))
    assert ei.value.sqlstate == "22021"


# --------------------------------------------------------------------------- splitter

messages_st = st.lists(st.tuples(st.integers(0x21, 0x7E), st.binary(max_size=300)), max_size=25)


def _encode(msgs):
    return b"".join(bytes([t]) + struct.pack("!I", len(b) + 4) + b for t, b in msgs)


def _chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


def _run(splitter: MessageSplitter, chunks):
    """Feed chunks; return (events with copied bytes, reassembled messages)."""
    events, out, cur = [], [], None
    for chunk in chunks:
        splitter.feed(chunk)
        buf = splitter.buffer
        for kind, mtype, start, end in splitter:
            piece = bytes(buf[start:end])
            events.append((kind, mtype, piece))
            if kind == MESSAGE:
                assert cur is None
                out.append((mtype, piece[5:]))
            elif kind == HEAD:
                assert cur is None
                cur = [mtype, bytearray(piece[5:])]
            else:
                assert kind == CHUNK and cur is not None and cur[0] == mtype
                cur[1] += piece
            if cur is not None and splitter.remaining == 0:
                out.append((cur[0], bytes(cur[1])))
                cur = None
    assert cur is None
    assert splitter.at_boundary()
    return events, out


@settings(max_examples=200, deadline=None)
@given(msgs=messages_st, cuts=st.lists(st.integers(0, 10**6), max_size=40))
def test_splitter_random_chunks_without_streaming(msgs, cuts):
    data = _encode(msgs)
    whole_events, whole = _run(MessageSplitter(), [data])
    _, bytewise = _run(MessageSplitter(), [data[i : i + 1] for i in range(len(data))])
    chunk_events, chunked = _run(MessageSplitter(), _chunks(data, cuts))
    assert whole == bytewise == chunked == msgs
    assert whole == iter_messages(data)
    assert all(k == MESSAGE for k, _, _ in whole_events + chunk_events)


@settings(max_examples=200, deadline=None)
@given(
    msgs=messages_st,
    cuts=st.lists(st.integers(0, 10**6), max_size=40),
    max_buffered=st.integers(5, 200),
)
def test_splitter_random_chunks_with_streaming(msgs, cuts, max_buffered):
    data = _encode(msgs)
    for chunks in (_chunks(data, cuts), [data[i : i + 1] for i in range(len(data))]):
        events, out = _run(MessageSplitter(max_buffered=max_buffered), chunks)
        assert out == msgs
        # forwarding every range in order reproduces the stream
        assert b"".join(p for _, _, p in events) == data
        # nothing bigger than max_buffered is ever held as an incomplete message
        for kind, _, piece in events:
            if kind != MESSAGE:
                assert len(piece) <= max_buffered + max(map(len, chunks))


@settings(max_examples=200, deadline=None)
@given(msgs=messages_st, cuts=st.lists(st.integers(0, 10**6), max_size=40))
def test_lone_is_the_length_of_a_chunk_that_is_one_whole_message(msgs, cuts):
    """`lone(chunk)` (the relay's way past `feed` for a lone Query): the chunk's length when
    feeding it would report exactly one message, all of it, more than a header; else 0.
    Chunks: the stream cut anywhere, then each message alone (lengths of 128 and more
    have a byte with its high bit set)."""
    data = _encode(msgs)
    alone = [data[i : i + 1] + struct.pack("!I", len(b) + 4) + b for i, (_, b) in _starts(msgs)]
    sp = MessageSplitter(max_buffered=64)
    for chunk in _chunks(data, cuts) + alone:
        said = sp.lone(chunk)
        was_at_boundary = sp.at_boundary()
        sp.feed(chunk)
        events = list(sp)
        whole = was_at_boundary and events == [(MESSAGE, chunk[0], 0, len(chunk))]
        assert said == (len(chunk) if whole and len(chunk) > 5 else 0)
    assert sp.lone(build.sync()) == 0  # (a header alone: never taken past `feed`)
    query = build.query("x" * 200)  # (its length field ends in 0xcd)
    assert sp.lone(query) == len(query)
    assert sp.lone(query + build.sync()) == 0 and sp.lone(query[:-1]) == 0
    sp.feed(query[:3])  # half a header held: no chunk is one whole message now
    assert sp.lone(query) == 0


def _starts(msgs):
    """(where each message starts in the encoded stream, the message)."""
    at = 0
    for msg in msgs:
        yield at, msg
        at += 5 + len(msg[1])


def test_large_message_is_streamed_not_accumulated():
    body = bytes(range(256)) * 1024  # 256 KiB
    data = b"D" + struct.pack("!I", len(body) + 4) + body + build.ready_for_query("I")
    sp = MessageSplitter(max_buffered=64 * 1024)
    kinds = []
    got = bytearray()
    for i in range(0, len(data), 4096):
        sp.feed(data[i : i + 4096])
        assert len(sp.buffer) <= 4096 + 5  # never accumulates the big body
        buf = sp.buffer
        for kind, mtype, start, end in sp:
            kinds.append((kind, mtype))
            got += buf[start:end]
    assert got == data
    assert kinds[0] == (HEAD, ord("D"))
    assert all(k == (CHUNK, ord("D")) for k in kinds[1:-1])
    assert kinds[-1] == (MESSAGE, ord("Z"))


def test_complete_large_message_is_a_message():
    msg = build.copy_data(b"x" * 100_000)
    sp = MessageSplitter(max_buffered=1024)
    sp.feed(msg)
    assert [(k, t, s, e) for k, t, s, e in sp] == [(MESSAGE, ord("d"), 0, len(msg))]


def test_always_buffer_types_are_not_streamed():
    msg = build.parse("s1", "select " + "1," * 50_000 + "1")
    sp = MessageSplitter(max_buffered=1024, always_buffer={ord("P")})
    events = []
    for i in range(0, len(msg), 1000):
        sp.feed(msg[i : i + 1000])
        events += list(sp)
    assert events == [(MESSAGE, ord("P"), 0, len(msg))]


def test_early_break_resumes():
    data = build.sync() + build.flush() + build.terminate()
    sp = MessageSplitter()
    sp.feed(data[:7])
    for ev in sp:
        assert ev[1] == ord("S")
        break
    sp.feed(data[7:])
    assert [t for _, t, _, _ in sp] == [ord("H"), ord("X")]
    assert sp.at_boundary() and sp.pending == 0


def test_feed_keeps_bytes_by_reference():
    data = build.sync()
    sp = MessageSplitter()
    sp.feed(data)
    assert sp.buffer is data


@pytest.mark.parametrize("length", [0, 3, 2**31, 2**32 - 1])
def test_splitter_bad_length(length):
    sp = MessageSplitter()
    sp.feed(b"Q" + struct.pack("!I", length))
    with pytest.raises(ProtocolError):
        list(sp)


def test_splitter_max_length():
    sp = MessageSplitter(max_length=1000)
    sp.feed(b"d" + struct.pack("!I", 1001))
    with pytest.raises(ProtocolError):
        list(sp)


def test_iter_messages_errors():
    with pytest.raises(ProtocolError):
        iter_messages(build.sync()[:-1])
    with pytest.raises(ProtocolError):
        iter_messages(b"Q\0\0\0\x10abc")
    with pytest.raises(ProtocolError):
        iter_messages(b"Q\0\0\0\x02")


def test_a_streamed_message_is_reported_once_its_head_is_in():
    msg = build.query("select " + "1" * 100_000)
    sp = MessageSplitter(max_buffered=1024, head_size=512)
    sp.feed(msg[:300])
    assert list(sp) == []  # too little of it to read its beginning
    sp.feed(msg[300:600])
    buf = sp.buffer
    [(kind, mtype, start, end)] = list(sp)
    assert (kind, mtype, start, end) == (HEAD, ord("Q"), 0, 600)
    assert buf[start:end] == msg[:600] and sp.remaining == len(msg) - 600
    sp.feed(msg[600:])
    assert [(k, s, e) for k, _t, s, e in sp] == [(CHUNK, 0, len(msg) - 600)]
    assert sp.at_boundary()


def test_per_type_limits_and_refused_types():
    sp = MessageSplitter(max_lengths={ord("S"): 10000, ord("p"): -1})
    sp.feed(b"S" + struct.pack("!i", 10001))
    with pytest.raises(ProtocolError, match="invalid message length 10001"):
        list(sp)
    sp = MessageSplitter(max_lengths={ord("S"): 10000, ord("p"): -1})
    sp.feed(build.sync() + b"p" + struct.pack("!i", 4))
    events = iter(sp)
    assert next(events)[0] == MESSAGE
    with pytest.raises(ProtocolError, match="invalid frontend message type 112"):
        next(events)
    sp = MessageSplitter(max_lengths={ord("S"): 10000})
    sp.feed(b"Q" + struct.pack("!i", 50_000_000) + b"select")  # others: max_length
    assert [e[0] for e in sp] == [HEAD]


def test_forget_reported_drops_the_buffer_only_when_all_is_reported():
    sp = MessageSplitter()
    sp.feed(build.sync() + build.query("x")[:3])
    list(sp)
    sp.forget_reported()
    assert sp.pending == 3  # half a message is kept
    sp.feed(build.query("x")[3:])
    assert [e[0] for e in sp] == [MESSAGE]
    sp.forget_reported()
    assert sp.buffer == b"" and sp.pending == 0
