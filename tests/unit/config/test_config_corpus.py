"""Every corpus file against VERDICTS.tsv (default dialect) and odyssey HEAD (strict)."""

from __future__ import annotations

import csv
import re
import timeit
from pathlib import Path

import pytest

from pooler.config import ConfigError, load

CORPUS = Path(__file__).resolve().parents[2] / "data" / "odyssey-configs"
ROWS = list(csv.DictReader((CORPUS / "VERDICTS.tsv").open(encoding="utf-8"), delimiter="\t"))
PROMETHEUS = {"config-examples__odyssey-aq.conf", "test__prometheus-legacy__config.conf"}

# Where odyssey's legacy text is an internal name, we print HEAD's clearer wording.
CAUSE_OVERRIDES = {
    "unknown tls_opts->tls mode": "unknown tls mode",
    "unknown storage tls_opts->tls mode": "unknown storage tls mode",
    "failed to open config file '/tests/hba/odyssey_hba.conf'": (
        "failed to open hba file '/tests/hba/odyssey_hba.conf'"
    ),
    # then the key and the token as written: `expected a number for resolvers, found "10"`
    "expected 'number'": "expected a number for",
    "expected 'string'": "expected a string for",
    "expected 'yes/no'": "expected yes or no for",
}


def cause(legacy_message: str) -> str:
    """The legacy message without its (0-based) line number prefix."""
    text = re.sub(r"^\d+ ", "", legacy_message)
    return CAUSE_OVERRIDES.get(text, text)


def test_corpus_is_complete() -> None:
    assert len(ROWS) == 169
    for row in ROWS:
        assert (CORPUS / row["file"]).is_file(), row["file"]


@pytest.mark.parametrize("row", ROWS, ids=[r["file"] for r in ROWS])
def test_corpus_default_dialect(row: dict[str, str]) -> None:
    path = CORPUS / row["file"]
    if row["pooler_expected"] == "accept":
        config = load(path)
        assert config.listens and config.rules
        return
    with pytest.raises(ConfigError) as excinfo:
        load(path)
    messages = [str(d) for d in excinfo.value.diagnostics]
    assert any(cause(row["legacy_message"]) in m for m in messages), messages
    # every diagnostic names file:line:col
    for d in excinfo.value.diagnostics:
        assert d.pos is not None and d.pos.line >= 1 and d.pos.column >= 1


@pytest.mark.parametrize("row", ROWS, ids=[r["file"] for r in ROWS])
def test_corpus_strict_matches_head(row: dict[str, str]) -> None:
    head_accepts = row["group"] in ("A", "B") or row["file"] in PROMETHEUS
    path = CORPUS / row["file"]
    if head_accepts:
        load(path, strict=True)
        return
    with pytest.raises(ConfigError) as excinfo:
        load(path, strict=True)
    head = row["head_message"]
    if "listen section is missing 'port'" in head:
        assert any(
            "listen section is missing 'port'" in d.message for d in excinfo.value.diagnostics
        )


def test_largest_corpus_file_parses_quickly_enough_to_measure() -> None:
    path = CORPUS / "odyssey.conf"
    config = load(path)
    assert config.rules and config.storages
    # a measurement, not a timed assertion (see the report / docs for the figure)
    seconds = timeit.timeit(lambda: load(path), number=3) / 3
    assert seconds > 0


def test_shell_test_duplicates_last_wins_with_warning() -> None:
    config = load(CORPUS / "test__functional__tests__shell-test__conf.conf")
    assert any("duplicate option 'pid_file'" in str(w) for w in config.warnings)
    with pytest.raises(ConfigError, match="duplicate option 'pid_file'"):
        load(CORPUS / "test__functional__tests__shell-test__conf.conf", strict=True)


def test_hba_file_format_example_parses() -> None:
    from pooler.config.hba import parse_hba

    path = CORPUS / "non-odyssey" / "test__functional__tests__hba__odyssey_hba.conf"
    rules, errors = parse_hba(path.read_text(), str(path))
    assert not errors
    assert [(r.conn_type, r.users[0], r.method) for r in rules] == [
        ("local", "user_allow", "allow"),
        ("local", "user_reject", "deny"),
        ("host", "user_allow", "allow"),
        ("host", "user_reject", "deny"),
    ]
    assert rules[2].address == "127.0.0.0/24"
