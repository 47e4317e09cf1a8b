"""The wheel carries both packages, the grammar and the demo config; the CLI answers."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(180)
def test_wheel_contents(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
    )
    [wheel] = tmp_path.glob("pooler-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "pooler/_grammar/odyssey.lark" in names
    assert "pooler/sample.conf" in names
    assert "pooler/cli.py" in names
    assert "tui/app.py" in names
    assert any(name.endswith(".tcss") for name in names)
    assert any(name.endswith("entry_points.txt") for name in names)
    # the compiled hot path (where a C compiler is at hand) comes with its sources' record
    compiled = {name for name in names if name.endswith((".so", ".pyd"))}
    assert ("pooler/_compiled.json" in names) == bool(compiled)
    assert {"pooler/protocol/scanner.py", "pooler/protocol/scanner.pxd"} <= names


def test_version_and_check_from_the_command_line():
    out = subprocess.run(
        [sys.executable, "-m", "pooler", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.startswith("pooler, version ")
    assert out.stdout.rstrip().endswith(")")  # which build of the hot path runs
    out = subprocess.run(
        [sys.executable, "-m", "pooler", "check", str(ROOT / "sample.conf")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert (out.returncode, out.stdout.strip()) == (0, "config is valid")
