"""Diagnostics: positions, messages, and the exception that carries them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Pos:
    """A place in a config file; line and column are 1-based."""

    file: str
    line: int
    column: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


@dataclass(frozen=True)
class Diagnostic:
    """One error or warning. `str(d)` is `file:line:col: [warning: ]message`."""

    pos: Pos | None
    message: str
    severity: str = "error"  # "error" | "warning"
    #: the file when there is no position (e.g. the file cannot be opened)
    file: str | None = None

    def __str__(self) -> str:
        text = f"warning: {self.message}" if self.severity == "warning" else self.message
        if self.pos is not None:
            return f"{self.pos}: {text}"
        if self.file is not None:
            return f"{self.file}: {text}"
        return text


class ConfigError(Exception):
    """The configuration is invalid; `diagnostics` holds every error found (errors first)."""

    def __init__(self, diagnostics: tuple[Diagnostic, ...] | list[Diagnostic]) -> None:
        self.diagnostics: tuple[Diagnostic, ...] = tuple(diagnostics)
        super().__init__("\n".join(str(d) for d in self.diagnostics))


def levenshtein(a: str, b: str, limit: int = 3) -> int:
    """Edit distance of `a` and `b` (stops early once every path exceeds `limit`)."""
    if abs(len(a) - len(b)) > limit:
        return limit + 1
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        if min(current) > limit:
            return limit + 1
        previous = current
    return previous[-1]


def did_you_mean(word: str, *candidate_lists: tuple[str, ...] | list[str]) -> str | None:
    """The closest candidate with distance <= 2, searching the lists in order."""
    lowered = word.lower()
    for candidates in candidate_lists:
        best: tuple[int, str] | None = None
        for candidate in candidates:
            distance = levenshtein(lowered, candidate, 2)
            if distance <= 2 and (best is None or distance < best[0]):
                best = (distance, candidate)
        if best is not None:
            return best[1]
    return None
