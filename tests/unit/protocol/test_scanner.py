"""The relay's message scanner: same findings however the stream is chunked."""

import itertools
import struct

import pytest
from hypothesis import given, settings, strategies as st

from pooler.protocol.scanner import MAX_WANTED_BODY, MessageScanner, StreamError


def msg(kind: str, body: bytes) -> bytes:
    return kind.encode() + struct.pack("!i", len(body) + 4) + body


WANTED = frozenset(map(ord, "ZSE"))
STREAM = (
    msg("T", b"x" * 30)
    + msg("D", b"row" * 100)
    + msg("S", b"TimeZone\0UTC\0")
    + msg("C", b"SELECT 1\0")
    + msg("Z", b"I")
    + msg("E", b"SERROR\0C42601\0Mbad\0\0")
    + msg("Z", b"E")
)
EXPECTED = [
    (ord("S"), b"TimeZone\0UTC\0"),
    (ord("Z"), b"I"),
    (ord("E"), b"SERROR\0C42601\0Mbad\0\0"),
    (ord("Z"), b"E"),
]


def feed_in_chunks(data: bytes, cuts: list[int]) -> list[tuple[int, bytes | None]]:
    scanner = MessageScanner(WANTED)
    found = []
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    for a, b in itertools.pairwise(points):
        found += [(t, body) for t, body, _ in scanner.feed(data[a:b])]
    assert scanner.at_boundary
    return found


def test_whole_stream():
    assert feed_in_chunks(STREAM, []) == EXPECTED


def test_byte_by_byte():
    assert feed_in_chunks(STREAM, list(range(len(STREAM)))) == EXPECTED


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=10_000), max_size=40))
def test_any_chunking_finds_the_same_messages(cuts):
    assert feed_in_chunks(STREAM, cuts) == EXPECTED


def test_end_offsets_point_past_each_message():
    scanner = MessageScanner(frozenset({ord("X")}))
    data = msg("Q", b"select 1\0") + msg("X", b"")
    [(kind, body, end)] = scanner.feed(data)
    assert (kind, body, end) == (ord("X"), b"", len(data))


def test_large_unwanted_body_is_skipped_without_collecting():
    scanner = MessageScanner(WANTED)
    header = b"D" + struct.pack("!i", 4 + 10_000_000)
    assert scanner.feed(header) == []
    for _ in range(100):
        assert scanner.feed(b"\0" * 100_000) == []
    assert scanner.at_boundary
    assert [t for t, _, _ in scanner.feed(msg("Z", b"I"))] == [ord("Z")]


def test_oversized_wanted_body_is_reported_without_body():
    scanner = MessageScanner(frozenset({ord("Q")}))
    big = MAX_WANTED_BODY + 10
    [(kind, body, _)] = scanner.feed(b"Q" + struct.pack("!i", big + 4))
    assert (kind, body) == (ord("Q"), None)
    scanner.feed(b"a" * big)
    assert scanner.at_boundary


@pytest.mark.parametrize("length", [0, 3, -1, (1 << 30) + 5])
def test_bad_lengths_are_errors(length):
    with pytest.raises(StreamError):
        MessageScanner(WANTED).feed(b"Q" + struct.pack("!i", length))


def test_partial_len_covers_an_incomplete_message_that_may_be_wanted():
    wanted_message = msg("T", b"x" * 20)
    scanner = MessageScanner({ord("T")})
    scanner.feed(msg("Z", b"I") + wanted_message[:3])  # a header cut short
    assert scanner.partial_len == 3
    scanner.feed(wanted_message[3:12])  # header whole, body being collected
    assert scanner.partial_len == 12
    scanner.feed(wanted_message[12:])
    assert scanner.partial_len == 0
    unwanted = msg("D", b"y" * 20)
    scanner.feed(unwanted[:10])  # an unwanted body is skipped, never held back
    assert scanner.partial_len == 0
