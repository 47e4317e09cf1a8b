"""A TextArea that highlights odyssey's config syntax with regular expressions (no
tree-sitter grammar exists for it) and marks the lines that have errors."""

from __future__ import annotations

import re

from rich.style import Style
from textual._text_area_theme import TextAreaTheme
from textual.widgets import TextArea

BLOCK_WORDS = frozenset(
    {
        "listen",
        "storage",
        "database",
        "user",
        "include",
        "ldap_endpoint",
        "shared_pool",
        "conn_drop_options",
        "soft_oom",
        "query_parsing",
        "watchdog",
        "module",
        "default",
    }
)

TOKEN = re.compile(
    r"""
    (?P<comment>\#.*$)
  | (?P<string>"(?:[^"\\]|\\.)*"?)
  | (?P<bracket>[{}])
  | (?P<number>-?\d+(?:\.\d+)?[a-zA-Z]*\b)
  | (?P<word>[A-Za-z_][\w\-]*)
    """,
    re.X,
)
BOOLEANS = frozenset({"yes", "no", "on", "off", "true", "false"})
ERROR = "pooler.error"


def line_highlights(line: str) -> list[tuple[int, int, str]]:
    """(start byte, end byte, highlight name) for one line of config text."""
    out: list[tuple[int, int, str]] = []
    first_word = True
    encoded_upto = 0
    byte_at = 0
    for match in TOKEN.finditer(line):
        start, end = match.span()
        byte_at += len(line[encoded_upto:start].encode())
        width = len(match.group().encode())
        kind = match.lastgroup
        name: str | None
        if kind == "word":
            word = match.group()
            if word.lower() in BLOCK_WORDS and first_word:
                name = "keyword"
            elif word.lower() in BOOLEANS and not first_word:
                name = "boolean"
            elif first_word:
                name = "yaml.field"
            else:
                name = "constant.builtin"
            first_word = False
        elif kind == "bracket":
            name = "punctuation.bracket"
        else:
            name = kind
            first_word = first_word and kind == "comment"
        if name:
            out.append((byte_at, byte_at + width, name))
        byte_at += width
        encoded_upto = end
    return out


def themes() -> list[TextAreaTheme]:
    """`odyssey-dark` and `odyssey-light`: the built-in themes plus the error-line style."""
    out = []
    for name, base, error in (
        ("odyssey-dark", "css", Style(bgcolor="rgb(95,20,20)")),
        ("odyssey-light", "github_light", Style(bgcolor="rgb(255,215,215)")),
    ):
        theme = TextAreaTheme.get_builtin_theme(base)
        assert theme is not None
        styles = {**theme.syntax_styles, ERROR: error}
        if base == "css":
            out.append(TextAreaTheme(name=name, syntax_styles=styles))
        else:
            out.append(
                TextAreaTheme(
                    name=name,
                    base_style=theme.base_style,
                    gutter_style=theme.gutter_style,
                    cursor_style=theme.cursor_style,
                    cursor_line_style=theme.cursor_line_style,
                    cursor_line_gutter_style=theme.cursor_line_gutter_style,
                    bracket_matching_style=theme.bracket_matching_style,
                    selection_style=theme.selection_style,
                    syntax_styles=styles,
                )
            )
    return out


class OdysseyTextArea(TextArea):
    """TextArea with odyssey highlighting; `error_lines` (0-based) are painted red."""

    def __init__(self, text: str = "", **kwargs: object) -> None:
        self._error_lines: frozenset[int] = frozenset()
        super().__init__(text, **kwargs)  # type: ignore[arg-type]
        for theme in themes():
            self.register_theme(theme)
        self.theme = "odyssey-dark"

    @property
    def error_lines(self) -> frozenset[int]:
        return self._error_lines

    def set_error_lines(self, lines: set[int] | frozenset[int]) -> None:
        lines = frozenset(lines)
        if lines != self._error_lines:
            self._error_lines = lines
            self._build_highlight_map()
            self.refresh()

    def _build_highlight_map(self) -> None:
        self._line_cache.clear()
        highlights = self._highlights
        highlights.clear()
        for index, line in enumerate(self.document.lines):
            spans = line_highlights(line)
            if spans:
                highlights[index].extend(spans)
        for index in getattr(self, "_error_lines", ()):
            highlights[index].append((0, None, ERROR))
