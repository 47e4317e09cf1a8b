"""Issue 18: for the corpus's configs, the start-up line `accepted, not implemented: …` names
only keys docs/configuration.md lists as meaningless for pooler."""

from __future__ import annotations

import csv
import re
from pathlib import Path

from pooler.config import load
from pooler.supervisor.unimplemented import unimplemented

ROOT = Path(__file__).resolve().parents[3]
CORPUS = ROOT / "tests" / "data" / "odyssey-configs"
DOCS = ROOT / "docs" / "configuration.md"

# Being implemented by others as this test is written; each entry goes once its key is acted
# on (the second test says when). Key as the start-up line names it: who implements it.
IN_PROGRESS: dict[str, str] = {}


def documented_meaningless() -> set[str]:
    """The keys of the list after `Meaningless for pooler:` in docs/configuration.md."""
    text = DOCS.read_text(encoding="utf-8")
    start = text.index("Meaningless for pooler:")
    block = text[start : text.index("\n\n", text.index("\n* ", start))]
    items = [line for line in block.splitlines() if line.startswith("* ")]
    keys: set[str] = set()
    for item in block.split("\n* ")[1:]:
        keys.update(re.findall(r"`([a-z_.]+)`", item.split(":", 1)[0]))
    assert items and keys
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
    undocumented = set(named) - documented_meaningless() - set(IN_PROGRESS)
    assert not undocumented, {key: named[key][:3] for key in sorted(undocumented)}


def test_keys_in_progress_are_still_named() -> None:
    """When one of IN_PROGRESS is implemented, take it out of IN_PROGRESS (or, if it turned
    out meaningless, document it so in docs/configuration.md)."""
    named = named_for_corpus()
    done = set(IN_PROGRESS) - set(named)
    assert not done, f"implemented now, remove from IN_PROGRESS: {sorted(done)}"
    documented = set(IN_PROGRESS) & documented_meaningless()
    assert not documented, f"documented as meaningless, remove from IN_PROGRESS: {documented}"
