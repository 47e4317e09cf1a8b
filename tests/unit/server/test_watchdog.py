"""The storage watchdog's reading of watchdog_lag_query answers, and which limit applies."""

from __future__ import annotations

import pytest

from pooler.config import Listen, Rule
from pooler.server.watchdog import catchup_timeout, parse_heartbeat


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1732934400", 1732934400),
        ("1732934400.987654", 1732934400),  # EXTRACT(EPOCH ...) is numeric: cut, as strtol
        (" 17", 17),
        ("-5", -5),
        (None, None),  # NULL (a replica that has replayed nothing yet)
        ("", None),
        ("not a number", None),
    ],
)
def test_parse_heartbeat(text: str | None, expected: int | None) -> None:
    assert parse_heartbeat(text) == expected


def test_listen_catchup_timeout_comes_first() -> None:
    rule = Rule("db", "user", catchup_timeout=5)
    assert catchup_timeout(Listen(), rule) == 5
    assert catchup_timeout(Listen(catchup_timeout=2), rule) == 2
    assert catchup_timeout(Listen(), Rule("db", "user")) == 0


def test_client_requested_catchup_timeout_comes_first() -> None:
    rule = Rule("db", "user", catchup_timeout=5)
    assert catchup_timeout(Listen(catchup_timeout=2), rule, "100") == 100
    assert catchup_timeout(Listen(), rule, "0") == 0  # the client opts out
    assert catchup_timeout(Listen(), rule, "10s") == 5  # junk: ignored (logged)
