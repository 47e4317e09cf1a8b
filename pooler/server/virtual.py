"""Simple queries the pooler answers or rewrites itself, as odyssey does (sans-I/O).

* `virtual_processing yes`: `SHOW odyssey.target_session_attrs` and
  `SET odyssey.target_session_attrs = 'read-only'|'read-write'|'any'|'prefer-standby'` are
  answered by the pooler with a NOTICE `processed virtually by pooler` (odyssey: "… by
  odyssey"); a bad value is an ERROR 22023 as PostgreSQL words it.
* `virtual_transaction yes` (odyssey master; transaction pools): a lone `BEGIN` from a client
  holding no server is answered here (BEGIN, ReadyForQuery in transaction) and run on the
  server the client's next statement gets, before that statement, so a client that opens a
  transaction and thinks holds no server meanwhile.
* `application_name_add_host yes`: `SET application_name = 'x'` goes to the server as
  `set application_name to 'x - ADDRESS';` (odyssey adds the address only here, without the
  port it adds at login).

Only a single simple Query whose whole text is the statement is recognised (odyssey's
minimal query parser does the same); anything else goes to the server untouched.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pooler.config import Config
from pooler.protocol import build

TARGET_SESSION_ATTRS = "odyssey.target_session_attrs"
TSA_VALUES = ("read-write", "read-only", "any", "prefer-standby")
PROCESSED = "processed virtually by pooler"

_NAME = r'([A-Za-z_][\w.]*|"[^"]+")'
_VALUE = r"('(?:[^']|'')*'|[\w.\-]+)"
_SET = re.compile(
    rf"\s*set\s+(?:session\s+)?{_NAME}\s*(?:=|\s+to\s)\s*{_VALUE}\s*;?\s*\Z", re.I | re.S
)
_SHOW = re.compile(rf"\s*show\s+{_NAME}\s*;?\s*\Z", re.I | re.S)
_BEGIN = re.compile(r"\s*begin(?:\s+(?:work|transaction))?\s*;?\s*\Z", re.I)


@dataclass(frozen=True, slots=True)
class Statement:
    verb: str  # "set" | "show"
    name: str  # lower-cased unless it was quoted
    value: str | None = None  # SET's value, unquoted


def _name(token: str) -> str:
    return token[1:-1] if token.startswith('"') else token.lower()


def _value(token: str) -> str:
    return token[1:-1].replace("''", "'") if token.startswith("'") else token


def parse(sql: str) -> Statement | None:
    """A lone `SET name = value` / `SET name TO value` / `SHOW name`, else None."""
    if len(sql) > 512:
        return None
    found = _SET.match(sql)
    if found is not None:
        return Statement("set", _name(found[1]), _value(found[2]))
    found = _SHOW.match(sql)
    if found is not None:
        return Statement("show", _name(found[1]))
    return None


def is_bare_begin(sql: str) -> bool:
    """`BEGIN` (or `BEGIN WORK`/`BEGIN TRANSACTION`) with no transaction modes."""
    return len(sql) < 64 and _BEGIN.match(sql) is not None


BEGIN_ANSWER = build.command_complete("BEGIN") + build.ready_for_query("T")
IN_TRANSACTION = ord("T")


def transaction_on(config: Config) -> bool:
    """virtual_transaction: on where the config says `virtual_transaction yes`. (odyssey
    1.5.3 has no such key and sends BEGIN on; master's default is yes: unset, pooler does as
    1.5.3.)"""
    return config.virtual_transaction and "virtual_transaction" in config.key_pos


def show_answer(name: str, value: str, status: int) -> bytes:
    return build.result_set([name], [(value,)], "SHOW", [PROCESSED]) + build.ready_for_query(status)


def set_answer(status: int) -> bytes:
    return build.result_set([], [], "SET", [PROCESSED]) + build.ready_for_query(status)


def set_refused(name: str, value: str, status: int) -> bytes:
    return b"".join(
        (
            build.notice_response("NOTICE", "00000", PROCESSED),
            build.error_response(
                "ERROR", "22023", f'invalid value for parameter "{name}": "{value}"'
            ),
            build.ready_for_query(status),
        )
    )


def application_name_query(value: str, address: str) -> str:
    """odyssey's rewrite of `SET application_name` under application_name_add_host."""
    text = f"{value} - {address}".replace("'", "''")
    return f"set application_name to '{text}';"
