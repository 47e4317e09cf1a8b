"""Issue 18: for the corpus's configs, the start-up line `accepted, not implemented: …` names
only keys docs/configuration.md lists as meaningless for pooler."""

from __future__ import annotations

import csv
import re
from pathlib import Path

from pooler.config import load
from pooler.supervisor.unimplemented import GLOBAL, LISTEN, ROUTE, STORAGE, unimplemented

ROOT = Path(__file__).resolve().parents[3]
CORPUS = ROOT / "tests" / "data" / "odyssey-configs"
DOCS = ROOT / "docs" / "configuration.md"


def documented_meaningless() -> set[str]:
    """The keys of the list after `Meaningless for pooler:` in docs/configuration.md."""
    text = DOCS.read_text(encoding="utf-8")
    start = text.index("Meaningless for pooler:")
    block = text[start : text.index("\n\n", text.index("\n* ", start))]
    keys: set[str] = set()
    for item in block.split("\n* ")[1:]:  # each item: `key`, `key`: why
        keys.update(re.findall(r"`([a-z_.]+)`", item.split(":", 1)[0]))
    assert keys
    return keys


def named_for_corpus() -> dict[str, list[str]]:
    """Each key the start-up line names, with the corpus files it is named for."""
    rows = csv.DictReader((CORPUS / "VERDICTS.tsv").open(encoding="utf-8"), delimiter="\t")
    named: dict[str, list[str]] = {}
    for row in rows:
        if row["pooler_expected"] != "accept":
            continue
        for key in unimplemented(load(CORPUS / row["file"])):
            named.setdefault(key, []).append(row["file"])
    return named


def test_the_startup_line_names_only_keys_documented_as_meaningless() -> None:
    named = named_for_corpus()
    undocumented = set(named) - documented_meaningless()
    assert not undocumented, {key: named[key][:3] for key in sorted(undocumented)}


def test_every_key_documented_as_meaningless_is_one_the_line_can_name() -> None:
    can_name = (set(GLOBAL) | {f"route.{k}" for k in ROUTE} | {f"listen.{k}" for k in LISTEN}) | {
        f"storage.{k}" for k in STORAGE
    }
    assert documented_meaningless() <= can_name, documented_meaningless() - can_name
