"""A console result set: typed columns, rows, command tag and the NOTICEs sent before it.

The supervisor renders one per console statement (`views`, `odyssey_views`); the worker
holding the console client encodes it (`pooler.protocol.build.result_set`). Column types are
named as PostgreSQL names them (`text`, `int4`...; pgbouncer's `src/admin.c` letters in
`table`: `s` text, `i` int4, `q` int8, `T` timestamptz, `b` bool, `n` numeric).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

TEXT, INT4, INT8, BOOL, TIMESTAMPTZ, NUMERIC, FLOAT4 = (
    "text",
    "int4",
    "int8",
    "bool",
    "timestamptz",
    "numeric",
    "float4",
)


@dataclass
class Result:
    """One console result set: typed columns, rows, command tag and NOTICEs sent before it."""

    columns: list[tuple[str, str]]
    rows: list[tuple[Any, ...]] = field(default_factory=list)
    tag: str = "SHOW"
    notices: list[str] = field(default_factory=list)


def table(names_types: str, names: list[str], rows: list[tuple[Any, ...]]) -> Result:
    kinds = {"s": TEXT, "i": INT4, "q": INT8, "T": TIMESTAMPTZ, "b": BOOL, "n": NUMERIC}
    assert len(names_types) == len(names)
    return Result([(n, kinds[t]) for n, t in zip(names, names_types, strict=True)], rows)
