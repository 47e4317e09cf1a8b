"""The compiled hot path and its Python sources: which one runs, and that they agree.

Where the install compiled them (.ci/run makes sure it did), `pooler.protocol.scanner` and
`framing` are the C extensions; the same tests run against the sources with POOLER_PURE=1
(.ci/run's last stage). Here both builds run side by side on random streams.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import struct
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import given, settings, strategies as st

from pooler import compiled
from pooler.protocol import framing, scanner
from pooler.protocol.errors import ProtocolError


def _python_source(module: ModuleType) -> ModuleType:
    """A fresh copy of `module` run from its .py (whichever build the import chose)."""
    source = compiled._source(module.__name__)
    spec = importlib.util.spec_from_file_location(f"_python_{source.stem}", source)
    assert spec is not None and spec.loader is not None
    copy = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = copy  # (dataclasses look their module up)
    spec.loader.exec_module(copy)
    assert copy.__file__ is not None and copy.__file__.endswith(".py")
    return copy


PY_SCANNER = _python_source(scanner)
PY_FRAMING = _python_source(framing)


def test_pooler_pure_runs_the_python_sources():
    code = (
        "import pooler.compiled as c, pooler.protocol.scanner as s, pooler.protocol.framing as f;"
        "print(s.__file__, f.__file__, c.build(), sep='|')"
    )
    env = {**os.environ, "POOLER_PURE": "1"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    scanner_file, framing_file, build = out.stdout.strip().split("|")
    assert scanner_file.endswith("scanner.py") and framing_file.endswith("framing.py")
    assert build == "pure Python, POOLER_PURE is set"


def test_a_source_changed_after_compiling_runs_as_python(tmp_path, monkeypatch):
    for name in compiled.MODULES:
        source = tmp_path.joinpath(*name.split(".")).with_suffix(".py")
        source.parent.mkdir(parents=True, exist_ok=True)
        source.write_text(f"# {name}\n")
        source.with_suffix(".pxd").write_text("# its types\n")
    record = tmp_path / "pooler" / "_compiled.json"
    monkeypatch.setattr(compiled, "_ROOT", tmp_path)
    monkeypatch.setattr(compiled, "_DIGESTS", record)
    assert compiled._stale() == set(compiled.MODULES)  # never compiled
    digests = {
        str(compiled._source(name).relative_to(tmp_path)): compiled._digest(compiled._source(name))
        for name in compiled.MODULES
    }
    record.write_text(json.dumps(digests))
    assert compiled._stale() == set()
    compiled._source("pooler.protocol.framing").with_suffix(".pxd").write_text("# changed\n")
    assert compiled._stale() == {"pooler.protocol.framing"}
    compiled._source("pooler.protocol.scanner").write_text("# edited\n")
    assert compiled._stale() == set(compiled.MODULES)


def _message(msg_type: int, body: bytes, length: int | None = None) -> bytes:
    return (
        bytes((msg_type,)) + struct.pack("!i", len(body) + 4 if length is None else length) + body
    )


messages_st = st.lists(
    st.tuples(
        st.sampled_from(b"TDCZSEK1tnQPBX"),
        st.binary(max_size=300),
        # now and then a length of its own: too small, negative, beyond the limits
        st.one_of(st.none(), st.none(), st.sampled_from([0, 3, -1, -(2**31), 1 << 30, 2**31 - 1])),
    ),
    max_size=12,
).map(lambda msgs: b"".join(_message(*m) for m in msgs))
cuts_st = st.lists(st.integers(0, 5000), max_size=20)


def _chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


def _scan(module: ModuleType, chunks: list[bytes]) -> list[object]:
    found: list[object] = []
    sc = module.MessageScanner(frozenset(b"ZSE1"))
    try:
        for chunk in chunks:
            found.append(sc.feed(chunk))
            found.append((sc.at_boundary, sc.partial_len))
    except module.StreamError as exc:
        found.append(str(exc))
    return found


def _split(module: ModuleType, chunks: list[bytes], max_buffered: int) -> list[object]:
    found: list[object] = []
    sp = module.MessageSplitter(
        max_buffered=max_buffered, head_size=8, always_buffer=b"P", max_lengths={ord("S"): 40}
    )
    try:
        for chunk in chunks:
            sp.feed(chunk)
            buf = sp.buffer
            found.extend((kind, mtype, bytes(buf[start:end])) for kind, mtype, start, end in sp)
            found.append((sp.at_boundary(), sp.pending, sp.remaining, sp.streaming))
            sp.forget_reported()
    except ProtocolError as exc:
        found.append(str(exc))
    return found


@settings(max_examples=300, deadline=None)
@given(data=messages_st, cuts=cuts_st, max_buffered=st.integers(5, 400))
def test_the_builds_find_the_same_messages(data, cuts, max_buffered):
    chunks = _chunks(data, cuts)
    assert _scan(scanner, chunks) == _scan(PY_SCANNER, chunks)
    assert _split(framing, chunks, max_buffered) == _split(PY_FRAMING, chunks, max_buffered)


@pytest.mark.parametrize("module", [scanner, framing], ids=lambda m: m.__name__)
def test_the_build_in_use_is_the_one_reported(module):
    kind = "python" if (module.__file__ or "").endswith(".py") else "compiled"
    name = module.__name__.rpartition(".")[2]
    build = compiled.build()
    assert (kind == "compiled") == (build.startswith("compiled") and name in build)
    assert Path(module.__file__ or "").parent == compiled._source(module.__name__).parent
