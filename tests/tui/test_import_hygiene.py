"""The dashboard reaches the pooler only through its control socket: `tui` never imports the
server or uvloop, and `pooler serve`'s modules never import textual (checked in a fresh
interpreter, as harlequin's tests/unit_tests/test_import_hygiene.py does)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def loaded_after(code: str) -> set[str]:
    program = f"import json, sys\n{code}\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=True
    )
    return set(json.loads(out.stdout.splitlines()[-1]))


def roots(modules: set[str]) -> set[str]:
    return {m.split(".")[0] for m in modules}


def test_tui_imports_neither_server_nor_uvloop():
    modules = loaded_after("import tui.app, tui.source, tui.widgets.config_editor")
    assert "textual" in roots(modules)
    assert not {m for m in modules if m == "pooler.server" or m.startswith("pooler.server.")}
    assert not {m for m in modules if m.startswith("pooler.supervisor")}
    assert "uvloop" not in roots(modules)


@pytest.mark.parametrize(
    "code",
    [
        "import pooler.cli",
        "import pooler.supervisor.main, pooler.server.worker_main, pooler.control.server",
    ],
)
def test_serve_does_not_import_textual(code):
    assert "textual" not in roots(loaded_after(code))


def test_cli_tui_command_is_lazy():
    modules = loaded_after("from pooler.cli import main; main.get_command(None, 'tui')")
    assert "textual" not in roots(modules) and "tui" not in roots(modules)
