"""Config text -> AST items (`Setting`, `Block`, `Include`): Lark's LALR parser with the
`AstBuilder` run inside it, and a syntax pass that reports every syntax error and goes on.

`parse_items` is the entry point; `transform.Builder` turns the items into the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

from lark import Token, Transformer
from lark.exceptions import UnexpectedToken
from lark.parsers.lalr_analysis import Shift

from pooler.config import keywords as kw
from pooler.config.errors import ConfigError, Diagnostic, Pos, did_you_mean
from pooler.config.grammar import BAD_CHAR, BAD_STRING, parser, scan

# --------------------------------------------------------------------------------------------
# AST
# --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Setting:
    key_token: Token
    value: Token

    @property
    def key(self) -> str:
        return self.key_token.type.lower()


@dataclass(slots=True)
class Block:
    kind: str
    key_token: Token
    name: Token | None = None
    selector: list[Token] | None = None
    items: list[Any] = field(default_factory=list)


@dataclass(slots=True)
class Include:
    key_token: Token
    path: Token


class AstBuilder(Transformer[Token, Any]):
    """Turns parse-tree nodes into Setting/Block/Include while the LALR parser runs."""

    def start(self, children: list[Any]) -> list[Any]:
        return children

    def setting(self, children: list[Any]) -> Setting:
        return Setting(children[0], children[1])

    def include(self, children: list[Any]) -> Include:
        return Include(children[0], children[1])

    def selector(self, children: list[Any]) -> list[Token]:
        return list(children)

    def pair(self, children: list[Any]) -> tuple[Token, Token]:
        return (children[0], children[1])

    @staticmethod
    def _plain(kind: str, children: list[Any]) -> Block:
        return Block(kind, children[0], items=children[1:])

    @staticmethod
    def _named(kind: str, children: list[Any]) -> Block:
        return Block(kind, children[0], name=children[1], items=children[2:])

    def listen(self, c: list[Any]) -> Block:
        return self._plain("listen", c)

    def watchdog(self, c: list[Any]) -> Block:
        return self._plain("watchdog", c)

    def balancing(self, c: list[Any]) -> Block:
        return self._plain("balancing", c)

    def options(self, c: list[Any]) -> Block:
        return self._plain("options", c)

    def conn_drop_options(self, c: list[Any]) -> Block:
        return self._plain("conn_drop_options", c)

    def soft_oom(self, c: list[Any]) -> Block:
        return self._plain("soft_oom", c)

    def soft_oom_drop(self, c: list[Any]) -> Block:
        return self._plain("soft_oom_drop", c)

    def query_parsing(self, c: list[Any]) -> Block:
        return self._plain("query_parsing", c)

    def storage(self, c: list[Any]) -> Block:
        return self._named("storage", c)

    def method(self, c: list[Any]) -> Block:
        return self._named("method", c)

    def database(self, c: list[Any]) -> Block:
        return self._named("database", c)

    def ldap_storage_credentials(self, c: list[Any]) -> Block:
        return self._named("ldap_storage_credentials", c)

    def ldap_endpoint(self, c: list[Any]) -> Block:
        return self._named("ldap_endpoint", c)

    def shared_pool(self, c: list[Any]) -> Block:
        return self._named("shared_pool", c)

    def load_module(self, c: list[Any]) -> Block:
        return Block("load_module", c[0], name=c[1])

    def user(self, c: list[Any]) -> Block:
        return Block("user", c[0], name=c[1], selector=c[2], items=c[3:])

    def group(self, c: list[Any]) -> Block:
        return Block("group", c[0], name=c[1], selector=c[2], items=c[3:])


# --------------------------------------------------------------------------------------------
# Syntax errors: the parser reports every one and goes on
# --------------------------------------------------------------------------------------------
#
# Tokens are fed to Lark's LALR parser one by one. The parser is at an *item boundary* when it
# could take a `}` or the end of the file: the next token starts a new item (`key value` or a
# block). After a syntax error the parser is rebuilt at the boundary before the failed item
# (by feeding again what it took so far; Lark's values cannot be shared between two parser
# states) and the tokens up to the next line that starts an item it accepts are skipped. When
# the failed item starts left of the block it is in, and a `}` put before it lets it parse, the
# block's `}` is what is missing: that is reported at the block's `{` and the `}` supplied.

MAX_SYNTAX_ERRORS = 50

# block keyword -> the keyword context (kw.CONTEXTS) of its items
_BLOCK_CONTEXTS = {
    "listen": "listen",
    "storage": "storage",
    "database": "database",
    "user": "user/group/watchdog (route)",
    "group": "user/group/watchdog (route)",
    "watchdog": "user/group/watchdog (route)",
    "ldap_storage_credentials": "ldap_storage_credentials",
    "ldap_endpoint": "ldap_endpoint",
    "shared_pool": "shared_pool",
    "conn_drop_options": "conn_drop_options",
    "online_restart_drop_options": "conn_drop_options",
    "soft_oom": "soft_oom",
    "drop": "soft_oom.drop",
    "query_parsing": "query_parsing",
    "balancing": "balancing",
    "method": "balancing.method",
}
_VALUE_WORDS = {
    "NUMBER": "a number",
    "SIZE": "a number",
    "STRING": "a string",
    "YES": "yes or no",
    "NO": "yes or no",
    "_LBRACE": "'{'",
}
_LEX_MESSAGES = {BAD_CHAR: "unexpected character {value!r}", BAD_STRING: "unterminated string"}


@dataclass(slots=True)
class _OpenBlock:
    key: Token  # the keyword that opened it
    name: Token | None  # its first name or selector token, if any
    brace: Token  # its `{`

    @property
    def kind(self) -> str:
        return str(self.key.value).lower()

    def label(self) -> str:
        if self.name is None:
            return self.kind
        if self.name.type == "STRING":
            return f'{self.kind} "{self.name.value}"'
        return f"{self.kind} {self.name.value}"


def _at(token: Token) -> tuple[int, int]:
    """A token's line and column (the scanner sets both)."""
    return token.line or 1, token.column or 1


def _as_written(token: Token) -> str:
    """A token as the user wrote it, quoted for a message."""
    if token.type == "$END":
        return "end of file"
    if token.type == "STRING":
        return f'"{token.value}"'
    if token.type == BAD_STRING:
        return "an unterminated string"
    return f"'{token.value}'"


def _where(blocks: list[_OpenBlock]) -> str:
    """`at top level`, `in listen`, `in user "app" of database "shop"`."""
    if not blocks:
        return "at top level"
    text = f"in {blocks[-1].label()}"
    return f"{text} of {blocks[-2].label()}" if len(blocks) > 1 else text


def _context_keys(blocks: list[_OpenBlock]) -> tuple[str, ...]:
    context = _BLOCK_CONTEXTS.get(blocks[-1].kind) if blocks else "top level"
    return kw.CONTEXTS.get(context, ()) if context else ()


def _expected_words(expected: set[str]) -> list[str]:
    words: list[str] = []
    for t in sorted(expected, key=lambda t: (t not in _VALUE_WORDS, t)):
        word = _VALUE_WORDS.get(t)
        if word is None and t.lower() in kw.VALUE_WORDS:
            word = t.lower()
        if word is not None and word not in words:
            words.append(word)
    return words


def key_message(token: Token, blocks: list[_OpenBlock], strict: bool) -> str:
    """The message for a token where an item (a key) should start."""
    where = _where(blocks)
    if token.type == "IDENT":
        message = f"unknown parameter '{token.value}' {where}"
        hint = did_you_mean(str(token.value), _context_keys(blocks), kw.KEYWORDS)
        if hint is not None:
            message += f"; did you mean '{hint}'?"
        if strict and str(token.value).lower() in kw.KEYWORD_SET:
            message += (
                f" (keywords are case-sensitive in strict mode: '{str(token.value).lower()}')"
            )
        return message
    if token.type == "_RBRACE" and not blocks:
        return "unexpected '}' at top level: no block is open"
    word = token.type.lower()
    if word in kw.KEYWORD_SET and word not in kw.VALUE_WORDS:
        valid_in = [name for name, keys in kw.CONTEXTS.items() if word in keys]
        message = f"unexpected parameter '{token.value}' {where}"
        return message + (f" ('{word}' is valid in: {', '.join(valid_in)})" if valid_in else "")
    return f"unexpected {_as_written(token)} {where}: expected a parameter name"


def value_message(key: Token, token: Token, expected: set[str], blocks: list[_OpenBlock]) -> str:
    """The message for a token after `key` that is not what the key takes."""
    words = _expected_words(expected)
    wanted = " or ".join(words) if words else "something else"
    name = f'"{key.value}"' if key.type == "STRING" else str(key.value).lower()
    message = f"expected {wanted} for {name}, found {_as_written(token)}"
    if token.type == "IDENT" and "STRING" in expected:
        message += f' (strings must be double-quoted: "{token.value}")'
    if blocks:
        message += f" ({_where(blocks)})"
    return message


class _SyntaxPass:
    """Feed one file's tokens to the parser, recovering after each syntax error."""

    def __init__(self, text: str, file: str, strict: bool) -> None:
        self.file = file
        self.strict = strict
        self.tokens = list(scan(text, strict))
        lines = text.split("\n")
        self.eof = Token("$END", "", len(text), len(lines), len(lines[-1]) + 1)
        self.lark = parser(strict, AstBuilder)
        self.errors: list[Diagnostic] = []

    def fresh(self, fed: list[Token]) -> Any:
        state = self.lark.parse_interactive().parser_state
        for token in fed:
            state.feed_token(token)
        return state

    @staticmethod
    def accepts(state: Any, terminal: str) -> bool:
        """Would the parser take `terminal` now (reductions run on a copy of the state stack
        only: LALR's merged lookaheads make the action table alone say yes too often)?"""
        conf = state.parse_conf
        stack = list(state.state_stack)
        while True:
            action = conf.states[stack[-1]].get(terminal)
            if action is None:
                return False
            kind, rule = action
            if kind is Shift:
                return True
            if rule.expansion:
                del stack[-len(rule.expansion) :]
            stack.append(conf.states[stack[-1]][rule.origin.name][1])
            if stack[-1] == conf.end_state:
                return terminal == "$END"

    def error(self, token: Token, message: str) -> None:
        self.errors.append(Diagnostic(Pos(self.file, *_at(token)), message))

    def run(self) -> list[Any]:
        tokens, n = self.tokens, len(self.tokens)
        state = self.fresh([])
        fed: list[Token] = []  # what the parser took (a supplied `}` included)
        blocks: list[_OpenBlock] = []
        # item boundaries: (index of the item's first token, len(fed), the blocks open there)
        mark: tuple[int, int, tuple[_OpenBlock, ...]] = (0, 0, ())  # the last one
        previous = mark  # the one before it
        i = 0
        while True:
            token = tokens[i] if i < n else self.eof
            try:
                result = state.feed_token(token, token.type == "$END")
            except UnexpectedToken as exc:
                # a `}` may be missing before this item or the one before it (`storage "s" {`
                # after a listen block left open is a listen setting, then a stray `{`)
                for start, fed_len, open_blocks in (mark, previous):
                    blocks = list(open_blocks)
                    closed = self._unclosed(start, i, fed[:fed_len], blocks)
                    if closed or mark == previous:
                        break
                if not closed:
                    start, fed_len, open_blocks = mark
                    blocks = list(open_blocks)
                del fed[fed_len:]
                if closed:
                    first = tokens[start] if start < n else self.eof
                    for _ in range(closed):
                        blocks.pop()
                        fed.append(Token.new_borrow_pos("_RBRACE", "}", first))
                    i = start
                elif len(self.errors) >= MAX_SYNTAX_ERRORS:
                    self.error(token, "too many syntax errors; stopping here")
                    return []
                else:
                    self._report(token, i, start, exc.expected or set(), blocks)
                    if token.type == "$END":
                        return []
                    i = self._resume(max(i, start + 1), start, self.fresh(fed))
                state = self.fresh(fed)
                mark = previous = (i, len(fed), tuple(blocks))
                continue
            if token.type == "$END":
                return [] if self.errors else cast(list[Any], result)
            fed.append(token)
            if token.type == "_LBRACE":
                item = mark[0]
                blocks.append(
                    _OpenBlock(tokens[item], tokens[item + 1] if item + 1 < i else None, token)
                )
            elif token.type == "_RBRACE" and blocks:
                blocks.pop()
            i += 1
            if self.accepts(state, "_RBRACE") or self.accepts(state, "$END"):
                previous, mark = mark, (i, len(fed), tuple(blocks))

    def _unclosed(self, start: int, i: int, fed: list[Token], blocks: list[_OpenBlock]) -> int:
        """How many of the innermost blocks lack their `}` (reported), if supplying them lets
        tokens[start..i] parse and the item at `start` is not right of their keywords; else 0."""
        tokens, n = self.tokens, len(self.tokens)
        first = tokens[start] if start < n else self.eof
        for count in range(1, len(blocks) + 1):
            block = blocks[-count]
            if first.type != "$END" and (
                _at(first)[0] <= _at(block.brace)[0] or _at(first)[1] > _at(block.key)[1]
            ):
                return 0
            state = self.fresh(fed)
            try:
                for _ in range(count):
                    state.feed_token(Token.new_borrow_pos("_RBRACE", "}", first))
                for token in tokens[start : i + 1]:
                    state.feed_token(token)
                if i >= n:
                    state.feed_token(self.eof, True)
            except UnexpectedToken:
                continue
            before = "end of file" if first.type == "$END" else f"line {first.line}"
            for unclosed in reversed(blocks[-count:]):
                self.error(
                    unclosed.brace,
                    f"'{{' of {unclosed.label()} is never closed: missing '}}' before {before}",
                )
            return count
        return 0

    def _report(
        self, token: Token, i: int, start: int, expected: set[str], blocks: list[_OpenBlock]
    ) -> None:
        if token.type in _LEX_MESSAGES:
            self.error(token, _LEX_MESSAGES[token.type].format(value=token.value))
        elif i == start:
            self.error(token, key_message(token, blocks, self.strict))
        elif token.type == "$END":
            key = str(self.tokens[start].value).lower()
            self.error(token, f"unexpected end of file after {key} ({_where(blocks)})")
        else:
            self.error(token, value_message(self.tokens[start], token, expected, blocks))

    def _resume(self, j: int, start: int, state: Any) -> int:
        """Where to go on after the failed item at `start`: the first token from `j` on that
        starts a line outside any brace skipped and starts an item (one the parser takes at
        the boundary, or any key, which is then reported); a `}` that closes the block; or
        the end."""
        tokens, n = self.tokens, len(self.tokens)
        depth = sum((t.type == "_LBRACE") - (t.type == "_RBRACE") for t in tokens[start:j])
        while j < n:
            token = tokens[j]
            kind = token.type
            starts_line = _at(token)[0] > (tokens[j - 1].end_line or 0)
            if (
                depth <= 0
                and starts_line
                and (kind == "IDENT" or kind.lower() in kw.KEYWORD_SET or self.accepts(state, kind))
            ):
                return j
            if kind == "_LBRACE":
                depth += 1
            elif kind == "_RBRACE":
                if depth <= 0 and self.accepts(state, "_RBRACE"):
                    return j  # it closes the block the failed item was in
                depth -= 1
            j += 1
        return n


def parse_items(text: str, file: str, strict: bool) -> list[Any]:
    """Parse one file's text into AST items; raise ConfigError with every syntax error."""
    syntax = _SyntaxPass(text, file, strict)
    items = syntax.run()
    if syntax.errors:
        raise ConfigError(syntax.errors)
    return items
