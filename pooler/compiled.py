"""Which build of the hot path runs: the compiled modules or their Python sources.

The install compiles `MODULES` with Cython where it can (hatch_build.py); a compiled module
sits next to its `.py` and Python's import prefers it. The `.py` runs instead

- everywhere, when POOLER_PURE=1 is in the environment (the tests of both builds, a
  comparison);
- for a module whose source (`.py` or `.pxd`) changed after it was compiled: its digest no
  longer matches the one the build recorded in `_compiled.json` (an edited checkout runs
  what it says; `pip install -e .` compiles it again).

`use_python_where_due` runs first thing in `pooler/__init__.py`, before any of them is
imported; the workers start as new processes and choose alike.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import ModuleType

MODULES = ("pooler.protocol.scanner", "pooler.protocol.framing")
PURE_ENV = "POOLER_PURE"

_ROOT = Path(__file__).resolve().parent.parent  # where `pooler/` lies
_DIGESTS = Path(__file__).resolve().parent / "_compiled.json"


def _source(name: str) -> Path:
    return _ROOT.joinpath(*name.split(".")).with_suffix(".py")


def _digest(source: Path) -> str:
    digest = hashlib.sha256(source.read_bytes())
    digest.update(source.with_suffix(".pxd").read_bytes())
    return digest.hexdigest()


def _stale() -> set[str]:
    """The modules whose compiled build is not of their present source."""
    try:
        built = json.loads(_DIGESTS.read_text())
    except (OSError, ValueError):
        return set(MODULES)  # not compiled (or a build of before the record): none is used
    stale = set()
    for name in MODULES:
        source = _source(name)
        try:
            if built.get(str(source.relative_to(_ROOT))) != _digest(source):
                stale.add(name)
        except OSError:
            stale.add(name)
    return stale


class _PythonSource(importlib.abc.MetaPathFinder):
    """Finds the `.py` of the named modules, not a compiled module beside it."""

    def __init__(self, names: set[str]) -> None:
        self.names = names

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if fullname not in self.names or not path:
            return None
        finder = importlib.machinery.FileFinder(
            path[0],
            (importlib.machinery.SourceFileLoader, importlib.machinery.SOURCE_SUFFIXES),
        )
        return finder.find_spec(fullname, target)


def use_python_where_due() -> None:
    """Make the modules that must not run compiled import from their `.py`."""
    due = set(MODULES) if os.environ.get(PURE_ENV) else _stale()
    if due:
        sys.meta_path.insert(0, _PythonSource(due))


def build() -> str:
    """Which build runs, in words (`pooler --version`, the start-up log line)."""
    compiled = []
    for name in MODULES:
        module = importlib.import_module(name)
        if not (module.__file__ or "").endswith(".py"):
            compiled.append(name.rpartition(".")[2])
    if not compiled:
        why = f", {PURE_ENV} is set" if os.environ.get(PURE_ENV) else ""
        return f"pure Python{why}"
    if len(compiled) < len(MODULES):
        return f"compiled: {', '.join(compiled)}; the rest pure Python (sources changed)"
    return f"compiled: {', '.join(compiled)}"
