"""Every builder round-trips through the decoders."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from pooler.protocol import build, messages as m
from pooler.protocol.errors import ProtocolError
from pooler.protocol.framing import iter_messages

text = st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)), max_size=50)


def one(data: bytes) -> tuple[int, bytes]:
    (msg,) = iter_messages(data)
    return msg


def test_fixed_messages():
    assert one(build.sync()) == (m.SYNC, b"")
    assert one(build.flush()) == (m.FLUSH, b"")
    assert one(build.terminate()) == (m.TERMINATE, b"")
    assert one(build.copy_done()) == (m.COPY_DONE, b"")
    assert one(build.empty_query_response()) == (m.EMPTY_QUERY_RESPONSE, b"")
    assert one(build.PARSE_COMPLETE) == (m.PARSE_COMPLETE, b"")
    assert one(build.BIND_COMPLETE) == (m.BIND_COMPLETE, b"")
    assert one(build.CLOSE_COMPLETE) == (m.CLOSE_COMPLETE, b"")
    assert one(build.NO_DATA) == (m.NO_DATA, b"")
    assert build.sync() == b"S\0\0\0\x04"


@pytest.mark.parametrize("status", ["I", "T", "E", m.TX_IDLE, m.TX_FAILED])
def test_ready_for_query(status):
    t, body = one(build.ready_for_query(status))
    assert t == m.READY_FOR_QUERY
    expected = ord(status) if isinstance(status, str) else status
    assert m.decode_ready_for_query(body) == expected
    assert m.decode_ready_for_query(memoryview(body)) == expected


def test_ready_for_query_invalid():
    with pytest.raises(ValueError):
        build.ready_for_query("X")
    with pytest.raises(ProtocolError):
        m.decode_ready_for_query(b"II")


@given(name=text, value=text)
def test_parameter_status(name, value):
    t, body = one(build.parameter_status(name, value))
    assert t == m.PARAMETER_STATUS
    assert m.decode_parameter_status(memoryview(body)) == (name, value)


def test_non_utf8_text_roundtrips_bytes_exactly():
    raw = build.parameter_status(
        "x", "caf\xe9".encode("latin-1").decode("utf-8", "surrogateescape")
    )
    _, body = one(raw)
    name, value = m.decode_parameter_status(body)
    assert build.parameter_status(name, value) == raw


@given(pid=st.integers(-(2**31), 2**31 - 1), secret=st.integers(-(2**31), 2**31 - 1))
def test_backend_key_data(pid, secret):
    t, body = one(build.backend_key_data(pid, secret))
    assert t == m.BACKEND_KEY_DATA
    assert m.decode_backend_key_data(body) == (pid, secret)


def test_backend_key_data_bad():
    with pytest.raises(ProtocolError):
        m.decode_backend_key_data(b"\0" * 12)


def test_error_response():
    t, body = one(build.error_response("FATAL", "28P01", "password failed", "d", "h"))
    assert t == m.ERROR_RESPONSE
    assert m.decode_error_fields(body) == {
        "S": "FATAL",
        "V": "FATAL",
        "C": "28P01",
        "M": "password failed",
        "D": "d",
        "H": "h",
    }
    t, body = one(build.notice_response("WARNING", "01000", "careful"))
    assert t == m.NOTICE_RESPONSE
    assert m.decode_error_fields(body) == {
        "S": "WARNING",
        "V": "WARNING",
        "C": "01000",
        "M": "careful",
    }


@given(fields=st.dictionaries(st.sampled_from("SVCMDHPpqWstcdnFLR"), text))
def test_error_fields_roundtrip(fields):
    _, body = one(build.error_fields(m.ERROR_RESPONSE, fields))
    assert m.decode_error_fields(body) == fields


@pytest.mark.parametrize("body", [b"", b"SERROR\0", b"SERROR", b"SERROR\0\0x"])
def test_error_fields_malformed(body):
    with pytest.raises(ProtocolError):
        m.decode_error_fields(body)


def test_authentication_requests():
    a = m.decode_authentication(one(build.auth_ok())[1])
    assert a == (m.AUTH_OK, b"")
    assert m.decode_authentication(one(build.auth_cleartext_password())[1]).code == 3
    a = m.decode_authentication(one(build.auth_md5_password(b"abcd"))[1])
    assert a.code == m.AUTH_MD5_PASSWORD and a.salt == b"abcd"
    t, body = one(build.auth_sasl(["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]))
    assert t == m.AUTHENTICATION
    a = m.decode_authentication(body)
    assert a.code == m.AUTH_SASL
    assert a.mechanisms == ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]
    assert m.decode_authentication(one(build.auth_sasl_continue(b"r=x"))[1]) == (11, b"r=x")
    assert m.decode_authentication(one(build.auth_sasl_final(b"v=y"))[1]) == (12, b"v=y")
    with pytest.raises(ValueError):
        build.auth_md5_password(b"abc")
    with pytest.raises(ProtocolError):
        m.decode_authentication(b"\0\0\0\x05ab")


def test_password_and_sasl_messages():
    t, body = one(build.password_message("md5abc"))
    assert t == m.PASSWORD_MESSAGE and m.decode_password(body) == "md5abc"
    _, body = one(build.sasl_initial_response("SCRAM-SHA-256", b"n,,n=,r=abc"))
    assert m.decode_sasl_initial_response(body) == ("SCRAM-SHA-256", b"n,,n=,r=abc")
    _, body = one(build.sasl_response(b"c=biws"))
    assert m.decode_sasl_response(body) == b"c=biws"
    with pytest.raises(ProtocolError):
        m.decode_sasl_initial_response(b"SCRAM-SHA-256\0\0\0\0\x09abc")


@given(sql=text)
def test_query(sql):
    t, body = one(build.query(sql))
    assert t == m.QUERY and m.decode_query(body) == sql


@given(name=text, q=text, oids=st.lists(st.integers(0, 2**32 - 1), max_size=10))
def test_parse(name, q, oids):
    t, body = one(build.parse(name, q, oids))
    assert t == m.PARSE
    assert m.decode_parse(body) == (name, q, tuple(oids))


@given(
    portal=text,
    stmt=text,
    params=st.lists(st.none() | st.binary(max_size=20), max_size=5),
    rfmt=st.lists(st.sampled_from([0, 1]), max_size=3),
)
def test_bind(portal, stmt, params, rfmt):
    raw = build.bind(portal, stmt, [1] * len(params), params, rfmt)
    t, body = one(raw)
    assert t == m.BIND
    b = m.decode_bind(body)
    assert (b.portal, b.statement) == (portal, stmt)
    assert build.bind_raw(b.portal, b.statement, b.rest) == raw
    renamed = m.decode_bind(one(build.bind_raw(portal, "renamed", b.rest))[1])
    assert renamed == (portal, "renamed", b.rest)


@pytest.mark.parametrize("kind", ["S", "P"])
def test_close_describe_execute(kind):
    t, body = one(build.close(kind, "s1"))
    assert t == m.CLOSE and m.decode_close(body) == (kind, "s1")
    t, body = one(build.describe(kind, ""))
    assert t == m.DESCRIBE and m.decode_describe(body) == (kind, "")
    t, body = one(build.execute("p", 10))
    assert t == m.EXECUTE and m.decode_execute(body) == ("p", 10)
    with pytest.raises(ValueError):
        build.close("X", "a")
    with pytest.raises(ProtocolError):
        m.decode_describe(b"X\0")


def test_copy_messages():
    assert one(build.copy_data(b"1\t2\n")) == (m.COPY_DATA, b"1\t2\n")
    assert one(build.copy_fail("boom")) == (m.COPY_FAIL, b"boom\0")
    body = b"\x00\x00\x02\x00\x00\x00\x01"  # text, 2 columns: text, binary
    assert m.decode_copy_response(body) == (0, (0, 1))
    assert m.COPY_IN_RESPONSE in m.COPY_RESPONSES and m.COPY_OUT_RESPONSE in m.COPY_RESPONSES
    with pytest.raises(ProtocolError):
        m.decode_copy_response(b"\x00\x00\x02\x00\x00")


def test_command_complete():
    t, body = one(build.command_complete("INSERT 0 1"))
    assert t == m.COMMAND_COMPLETE and m.decode_command_complete(body) == "INSERT 0 1"


def test_negotiate_protocol_version():
    t, body = one(build.negotiate_protocol_version(0, ["_pq_.a", "_pq_.b"]))
    assert t == m.NEGOTIATE_PROTOCOL_VERSION
    assert m.decode_negotiate_protocol_version(body) == (0, ["_pq_.a", "_pq_.b"])


@given(
    cols=st.lists(text, min_size=1, max_size=4),
    data=st.data(),
)
def test_result_set(cols, data):
    rows = data.draw(
        st.lists(st.lists(st.none() | text, min_size=len(cols), max_size=len(cols)), max_size=5)
    )
    msgs = iter_messages(build.result_set(cols, rows))
    assert msgs[0][0] == m.ROW_DESCRIPTION
    fields = m.decode_row_description(msgs[0][1])
    assert [f.name for f in fields] == cols
    assert all(f.type_oid == 25 and f.format == 0 for f in fields)
    decoded = [
        [None if v is None else v.decode("utf-8", "surrogateescape") for v in m.decode_data_row(b)]
        for t, b in msgs[1:-1]
        if t == m.DATA_ROW
    ]
    assert decoded == rows
    assert msgs[-1] == (m.COMMAND_COMPLETE, f"SELECT {len(rows)}\0".encode())


def test_result_set_tag_and_non_str_values():
    msgs = iter_messages(build.result_set(["a", "b"], [(1, None)], "SHOW"))
    assert m.decode_data_row(msgs[1][1]) == [b"1", None]
    assert m.decode_command_complete(msgs[2][1]) == "SHOW"
    with pytest.raises(ValueError):
        build.result_set(["a"], [("1", "2")])


def test_result_set_typed_columns_notices_and_bools():
    """The console's result sets: typed columns, NOTICEs first, bools as t/f."""
    msgs = iter_messages(
        build.result_set(
            [("n", "int8"), ("ok", "bool"), ("at", "timestamptz")],
            [(7, True, None), (0, False, "x")],
            "SHOW",
            ["hello"],
        )
    )
    assert [t for t, _ in msgs] == [
        m.NOTICE_RESPONSE,
        m.ROW_DESCRIPTION,
        m.DATA_ROW,
        m.DATA_ROW,
        m.COMMAND_COMPLETE,
    ]
    fields = m.decode_row_description(msgs[1][1])
    assert [(f.name, f.type_oid, f.type_size) for f in fields] == [
        ("n", 20, 8),
        ("ok", 16, 1),
        ("at", 1184, 8),
    ]
    assert m.decode_data_row(msgs[2][1]) == [b"7", b"t", None]
    assert m.decode_data_row(msgs[3][1]) == [b"0", b"f", b"x"]


def test_result_set_of_a_command_has_no_row_description():
    msgs = iter_messages(build.result_set([], [], "RELOAD"))
    assert msgs == [(m.COMMAND_COMPLETE, b"RELOAD\0")]


def test_nul_in_string_rejected():
    with pytest.raises(ValueError):
        build.query("select 1\0")
    with pytest.raises(ValueError):
        build.startup_message({"user": "a\0b"})


def test_message_names():
    assert m.message_name(m.READY_FOR_QUERY, frontend=False) == "ReadyForQuery"
    assert m.message_name(ord("D"), frontend=True) == "Describe"
    assert m.message_name(ord("D"), frontend=False) == "DataRow"
    assert m.message_name(ord("?"), frontend=True).startswith("unknown")
