"""What the pooler must know of a query's text, read in place without decoding it."""

from __future__ import annotations

import re

# BEGIN / START TRANSACTION as the first statement, after blanks and comments.
_OPENS_TRANSACTION = re.compile(
    rb"(?:\s|--[^\n]*(?:\n|$)|/\*.*?\*/)*(?:begin|start\s+transaction)\b", re.I | re.S
)


def opens_transaction_block(buf: bytes | bytearray, start: int, end: int) -> bool:
    """Does the query text buf[start:end] start with BEGIN or START TRANSACTION?"""
    return _OPENS_TRANSACTION.match(buf, start, end) is not None
