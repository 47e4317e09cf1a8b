from __future__ import annotations

import pytest

from pooler.protocol.options import parse_bool, parse_options, replication_refusal, split_options


def test_split_as_postgresql_does():
    assert split_options(r"  -c a=1   -c b=x\ y\\z ") == ["-c", "a=1", "-c", r"b=x y\z"]
    assert split_options("") == []


@pytest.mark.parametrize(
    ("options", "settings"),
    [
        ("-c search_path=s1", {"search_path": "s1"}),
        ("-csearch_path=s1,public", {"search_path": "s1,public"}),
        ("--statement-timeout=5s", {"statement_timeout": "5s"}),
        (r"-c app.tenant=a\ b -c x.y=", {"app.tenant": "a b", "x.y": ""}),
        ("-c a=1 -c a=2", {"a": "2"}),
        ("", {}),
    ],
)
def test_settings(options, settings):
    assert parse_options(options) == settings


@pytest.mark.parametrize("options", ["-B 100", "-c", "-c search_path", "--=1", "x", "-d 5"])
def test_anything_else_is_refused(options):
    with pytest.raises(ValueError, match="unsupported startup option"):
        parse_options(options)


@pytest.mark.parametrize(
    ("value", "meaning"),
    [("t", True), ("TRUE", True), ("ye", True), ("on", True), ("1", True), ("f", False),
     ("No", False), ("of", False), ("off", False), ("0", False), ("o", None), ("truex", None),
     ("10", None), ("", None), (" true", None), ("database", None)],
)  # fmt: skip
def test_parse_bool_as_postgresql(value, meaning):
    assert parse_bool(value) is meaning


def test_replication_refusal():
    assert replication_refusal(None) is None
    assert replication_refusal("off") is None
    assert replication_refusal("database") == (
        "0A000",
        "replication connections are not supported by the pooler",
    )
    assert replication_refusal("true")[0] == "0A000"
    assert replication_refusal("x") == ("22023", 'invalid value for parameter "replication": "x"')
