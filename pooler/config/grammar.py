"""Locate `odyssey.lark`, scan odyssey's tokens, and build the LALR parser once per process.

The scanner is hand-written (a Lark `lexer=` class) because the two odyssey dialects tokenize
differently (keyword case, string escapes, whitespace) while sharing one grammar.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from lark import Lark, Token, Transformer
from lark.lexer import Lexer

from pooler.config.keywords import KEYWORD_SET

GRAMMAR_NAME = "odyssey.lark"


# Tokens no grammar rule accepts, so that the parser reports them where they stand and
# goes on (pooler.config.syntax): a number run into letters (`3x`, `10ms`), a character
# odyssey rejects, a string without its closing quote (the rest of the file).
BAD_NUMBER, BAD_CHAR, BAD_STRING = "BAD_NUMBER", "BAD_CHAR", "BAD_STRING"


def grammar_path() -> Path:
    """The grammar file: packaged (`pooler/_grammar/`, wheels) or the checkout's `grammar/`."""
    try:
        packaged = resources.files("pooler").joinpath("_grammar", GRAMMAR_NAME)
        if packaged.is_file():
            return Path(str(packaged))
    except (ModuleNotFoundError, FileNotFoundError, NotADirectoryError):  # pragma: no cover
        pass
    return Path(__file__).resolve().parents[2] / "grammar" / GRAMMAR_NAME


def grammar_text() -> str:
    return grammar_path().read_text(encoding="utf-8")


_KEYWORD_TYPES = {word: word.upper() for word in KEYWORD_SET}

# One master regex; the group that matched decides the token kind.
_TOKEN_RE_DEFAULT = re.compile(
    r"""
    (?P<ws>[ \t\r\n\f\v]+)
  | (?P<comment>\#[^\n]*)
  | (?P<string>"(?:[^"\\]|\\[\s\S])*")
  | (?P<number>-?[0-9]+)(?P<suffix>[kKmMgG][bB]?|[bB])?(?P<tail>[A-Za-z0-9_]*)
  | (?P<word>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<lbrace>\{)
  | (?P<rbrace>\})
    """,
    re.VERBOSE,
)
_TOKEN_RE_STRICT = re.compile(
    r"""
    (?P<ws>[ \t\r\n]+)
  | (?P<comment>\#[^\n]*)
  | (?P<string>"(?:[^"]|(?<=\\)")*")
  | (?P<number>-?[0-9]+)(?P<suffix>[kKmMgG][bB]?|[bB])?(?P<tail>[A-Za-z0-9_]*)
  | (?P<word>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<lbrace>\{)
  | (?P<rbrace>\})
    """,
    re.VERBOSE,
)


def scan(text: str, strict: bool) -> Iterator[Token]:
    """Yield Lark tokens for `text`; what odyssey would reject comes as a BAD_* token.

    STRING tokens carry the string *value* (quotes removed; strict: `\\"` unescaped, default:
    raw as the legacy reader keeps it). NUMBER/SIZE/BAD_* tokens carry the source text.
    """
    token_re = _TOKEN_RE_STRICT if strict else _TOKEN_RE_DEFAULT
    match = token_re.match
    pos = 0
    line = 1
    line_start = 0
    end = len(text)
    while pos < end:
        m = match(text, pos)
        if m is None:
            column = pos - line_start + 1
            if text[pos] == '"':  # unterminated: the rest of the file is in the string
                yield Token(BAD_STRING, text[pos:], pos, line, column, line, column + 1, end)
                return
            yield Token(BAD_CHAR, text[pos], pos, line, column, line, column + 1, pos + 1)
            pos += 1
            continue
        kind = m.lastgroup
        stop = m.end()
        column = pos - line_start + 1
        if kind in ("suffix", "tail"):
            kind = "number"
        if kind == "ws" or kind == "comment":
            pass
        elif kind == "word":
            word = m.group()
            key = word.lower() if not strict else word
            yield Token(
                _KEYWORD_TYPES.get(key, "IDENT"),
                word,
                pos,
                line,
                column,
                line,
                column + len(word),
                stop,
            )
        elif kind == "string":
            raw = m.group()[1:-1]
            value = raw.replace('\\"', '"') if strict else raw
            nl = raw.count("\n")
            end_column = (stop - raw.rfind("\n") - 1 - pos) if nl else column + len(raw) + 2
            yield Token("STRING", value, pos, line, column, line + nl, end_column, stop)
        elif kind == "number":
            ttype = "SIZE" if m.group("suffix") else "NUMBER"
            if m.group("tail"):
                ttype = BAD_NUMBER
            yield Token(ttype, m.group(), pos, line, column, line, column + stop - pos, stop)
        elif kind == "lbrace":
            yield Token("_LBRACE", "{", pos, line, column, line, column + 1, stop)
        else:
            yield Token("_RBRACE", "}", pos, line, column, line, column + 1, stop)
        nl = text.count("\n", pos, stop)
        if nl:
            line += nl
            line_start = text.rfind("\n", pos, stop) + 1
        pos = stop


class _DefaultLexer(Lexer):
    strict = False

    def __init__(self, lexer_conf: Any) -> None:
        pass

    def lex(self, lexer_state: Any, parser_state: Any = None) -> Iterator[Token]:
        # lark calls custom lexers with the text only (a LexerState in its own signature)
        text = lexer_state if isinstance(lexer_state, str) else lexer_state.text
        return scan(text, self.strict)


class _StrictLexer(_DefaultLexer):
    strict = True


@cache
def parser(strict: bool, transformer: type[Transformer[Token, Any]]) -> Lark:
    """The Lark parser for one dialect, built on first use and kept for the process.

    `transformer` runs inside the LALR parser, so `parse` returns what it builds; the caller
    (config/syntax.py) owns it, which keeps this module free of the AST.
    """
    return Lark(
        grammar_text(),
        parser="lalr",
        lexer=_StrictLexer if strict else _DefaultLexer,
        transformer=transformer(),
        maybe_placeholders=False,
    )
