"""Rules the suite itself keeps: a test that runs past its timeout fails, always."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

HANGS_IN_A_WEAKREF_CALLBACK = """
import time
import weakref

import pytest


class Thing:
    pass


@pytest.mark.timeout(1)
def test_hangs_in_a_weakref_callback():
    # pytest-timeout's "signal" method raises inside whatever runs when SIGALRM comes; an
    # exception raised in a weakref callback is printed and dropped, and the test passed
    def callback(ref):
        time.sleep(3)

    thing = Thing()
    ref = weakref.ref(thing, callback)
    del thing
    assert ref() is None
"""


def test_a_timeout_inside_a_weakref_callback_fails_the_test(
    pytester: pytest.Pytester, pytestconfig: pytest.Config
) -> None:
    method = pytestconfig.getini("timeout_method")
    pytester.makepyfile(HANGS_IN_A_WEAKREF_CALLBACK)
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-o", f"timeout_method={method}", timeout=60
    )
    output = result.stdout.str() + result.stderr.str()
    assert result.ret != 0, output
    assert "Timeout" in output, output
    assert "1 passed" not in output, output


def test_no_two_test_files_share_a_name() -> None:
    """pytest imports test files by basename (no packages under tests/): two files of one
    name are a collection error that only a run collecting both shows."""
    from collections import Counter
    from pathlib import Path

    names = Counter(path.name for path in Path(__file__).parent.rglob("test_*.py"))
    assert [name for name, count in names.items() if count > 1] == []
