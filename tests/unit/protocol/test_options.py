from __future__ import annotations

import pytest

from pooler.protocol.options import parse_options, split_options


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
