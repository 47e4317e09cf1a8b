"""Parse tree -> AST (AstBuilder, run inside the LALR parser) -> model (Builder).

The Builder applies the dialect rules the grammar leaves open (see docs/configuration.md):
default = union of odyssey's legacy and HEAD readers, `strict` = HEAD's rules.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, cast

from lark import Token, Transformer
from lark.exceptions import UnexpectedToken
from lark.parsers.lalr_analysis import Shift

from pooler.config import keywords as kw
from pooler.config.errors import ConfigError, Diagnostic, Pos, did_you_mean
from pooler.config.grammar import BAD_CHAR, BAD_STRING, parser, scan
from pooler.config.model import (
    Config,
    ConnDropOptions,
    Endpoint,
    HbaRule,
    LdapCredentials,
    LdapEndpoint,
    Listen,
    QueryParsing,
    Rule,
    SharedPool,
    SoftOom,
    Storage,
)

INCLUDE_DEPTH_LIMIT = 16
INT_MIN, INT_MAX = -(2**31), 2**31 - 1

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


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


def read_text_file(path: str, what: str = "config file") -> str:
    """Read a UTF-8 file or raise a ConfigError with one clear line."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            [
                Diagnostic(
                    None, f"failed to open {what} '{path}': No such file or directory", file=path
                )
            ]
        ) from None
    except IsADirectoryError:
        raise ConfigError(
            [Diagnostic(None, f"failed to open {what} '{path}': is a directory", file=path)]
        ) from None
    except PermissionError:
        raise ConfigError(
            [Diagnostic(None, f"failed to open {what} '{path}': Permission denied", file=path)]
        ) from None
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError(
            [Diagnostic(None, f"failed to open {what} '{path}': {reason}", file=path)]
        ) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        before = data[: exc.start]
        line = before.count(b"\n") + 1
        column = exc.start - (before.rfind(b"\n") + 1) + 1
        raise ConfigError(
            [
                Diagnostic(
                    Pos(path, line, column),
                    f"{what} is not valid UTF-8 (byte 0x{data[exc.start]:02x})",
                )
            ]
        ) from None


def resolve_relative(path: str, including_file: str | None) -> str:
    """Resolve a path as odyssey does (working directory); fall back to the including file's
    directory when the path does not exist relative to the working directory."""
    if os.path.isabs(path) or os.path.exists(path) or including_file is None:
        return path
    if including_file.startswith("<"):
        return path
    candidate = os.path.join(os.path.dirname(including_file), path)
    if os.path.exists(candidate):
        return candidate
    return path


# --------------------------------------------------------------------------------------------
# Builder
# --------------------------------------------------------------------------------------------

SIZE_KEYS = frozenset({"limit", "mem_limit", "client_max_buffer"})
LEGACY_SUFFIXES = {"b": 1, "kb": 1024, "mb": 1024**2, "gb": 1024**3}
HEAD_SUFFIXES = {"b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
NON_NEGATIVE = frozenset(
    [
        "backlog",
        "client_login_timeout",
        "catchup_timeout",
        "pool_size",
        "min_pool_size",
        "pool_timeout",
        "pool_ttl",
        "pool_reset_timeout_ms",
        "pool_notice_after_waiting_ms",
        "pool_client_idle_timeout",
        "pool_idle_in_transaction_timeout",
        "server_lifetime",
        "watchdog_lag_interval",
        "server_max_routing",
        "stats_interval",
    ]
)
RANGES: dict[str, tuple[int, int]] = {
    "port": (1, 65535),
    "promhttp_server_port": (1, 65535),
    "client_max_buffer": (64 * 1024, 1 << 30),
    "ldapport": (0, 65535),
    "endpoints_status_poll_interval": (1, INT_MAX),
    "rate": (1, INT_MAX),
    "interval_ms": (1, INT_MAX),
}
REPEATABLE = frozenset({"storage@listen", "auth_common_name@route"})


class Builder:
    def __init__(self, strict: bool) -> None:
        self.strict = strict
        self.errors: list[Diagnostic] = []
        self.warnings: list[Diagnostic] = []
        self.file = "<text>"
        self.files: list[str] = []
        self.globals: dict[str, Any] = {}
        self.global_pos: dict[str, Pos] = {}
        self.listens: list[Listen] = []
        self.storages: list[Storage] = []
        self.rules: list[Rule] = []
        self.ldap_endpoints: list[LdapEndpoint] = []
        self.shared_pools: list[SharedPool] = []
        self.conn_drop: ConnDropOptions | None = None
        self.soft_oom: SoftOom | None = None
        self.query_parsing: QueryParsing | None = None
        self.load_modules: list[str] = []
        self.watchdog_pos: Pos | None = None
        self.rule_seen: dict[tuple[Any, ...], Pos] = {}

    # ---------------------------------------------------------------- helpers

    def pos(self, token: Token) -> Pos:
        return Pos(self.file, token.line or 0, token.column or 0)

    def error(self, token_or_pos: Token | Pos | None, message: str) -> None:
        pos = self.pos(token_or_pos) if isinstance(token_or_pos, Token) else token_or_pos
        self.errors.append(Diagnostic(pos, message))

    def warn(self, token_or_pos: Token | Pos | None, message: str) -> None:
        pos = self.pos(token_or_pos) if isinstance(token_or_pos, Token) else token_or_pos
        self.warnings.append(Diagnostic(pos, message, "warning"))

    def value(self, setting: Setting) -> Any:
        """Convert a setting's value token, checking odyssey's per-key rules."""
        token = setting.value
        key = setting.key
        ttype = token.type
        if ttype == "STRING":
            return str(token.value)
        if ttype in ("YES", "NO"):
            if self.strict and token.value not in ("yes", "no"):
                self.error(token, f"expected 'yes/no' for '{key}', found '{token.value}'")
            return ttype == "YES"
        if ttype == "NUMBER" or ttype == "SIZE":
            text = str(token.value)
            m = re.fullmatch(r"(-?[0-9]+)([A-Za-z]*)", text)
            assert m is not None
            number = int(m.group(1))
            suffix = m.group(2).lower()
            if suffix:
                if key in SIZE_KEYS:
                    number *= HEAD_SUFFIXES.get(suffix[0], 1)
                elif self.strict:
                    self.error(
                        token,
                        f"unexpected size '{text}' for '{key}': expected 'number' "
                        "(size suffixes are only allowed for limit and mem_limit)",
                    )
                elif suffix in LEGACY_SUFFIXES:
                    number *= LEGACY_SUFFIXES[suffix]
                else:
                    self.error(
                        token,
                        f"unexpected size '{text}' for '{key}': expected 'number' "
                        "(size suffixes are B, KB, MB, GB)",
                    )
            if key in SIZE_KEYS and key not in RANGES:
                return number
            if not INT_MIN <= number <= INT_MAX:
                self.error(token, f"value for option '{key}' is out of int range")
                return 0
            if key in RANGES:
                low, high = RANGES[key]
                if not low <= number <= high:
                    self.error(token, f"value for option '{key}' must be between {low} and {high}")
            elif key in NON_NEGATIVE and number < 0:
                if self.strict:
                    self.error(token, f"{key} must be non-negative")
                else:
                    self.warn(token, f"{key} must be non-negative (accepted as legacy odyssey)")
            return number
        # bare keyword values: default, disabled, minimal, full
        return ttype.lower()

    def collect(self, items: list[Any], context: str) -> tuple[dict[str, Any], dict[str, Pos]]:
        """Scalar settings of one block; duplicates: last wins (warning) or error (strict)."""
        values: dict[str, Any] = {}
        positions: dict[str, Pos] = {}
        for item in items:
            if not isinstance(item, Setting):
                continue
            key = item.key
            pos = self.pos(item.key_token)
            if key in kw.DEPRECATED:
                self.warn(pos, f"option '{key}' is deprecated and ignored")
                continue
            value = self.value(item)
            if f"{key}@{context}" in REPEATABLE:
                values.setdefault(key, []).append(value)
                positions.setdefault(key, pos)
                continue
            if key in values:
                self.duplicate(key, pos, positions[key])
            values[key] = value
            positions[key] = pos
        return values, positions

    def duplicate(self, key: str, pos: Pos, previous: Pos) -> None:
        if self.strict:
            self.error(pos, f"duplicate option '{key}'")
        else:
            self.warn(
                pos,
                f"duplicate option '{key}' (also set at {previous}); the last value wins",
            )

    # ---------------------------------------------------------------- top level

    def process(self, items: list[Any], file: str, depth: int) -> None:
        for item in items:
            self.file = file
            if isinstance(item, Setting):
                self.top_setting(item)
            elif isinstance(item, Include):
                self.include(item, file, depth)
            else:
                getattr(self, f"block_{item.kind}")(item)

    def top_setting(self, item: Setting) -> None:
        key = item.key
        pos = self.pos(item.key_token)
        if key in kw.DEPRECATED:
            self.warn(pos, f"option '{key}' is deprecated and ignored")
            return
        value = self.workers(item) if key == "workers" else self.value(item)
        if key in self.globals:
            self.duplicate(key, pos, self.global_pos[key])
        self.globals[key] = value
        self.global_pos[key] = pos

    def workers(self, item: Setting) -> Any:
        token = item.value
        if token.type == "STRING":
            text = str(token.value)
            if text == "auto" or (not self.strict and "auto".startswith(text)):
                return "auto"
            self.error(
                token, f"'{text}' is invalid value for workers: expected 'number' or '\"auto\"'"
            )
            return 1
        number = self.value(item)
        if number < 1:
            self.error(
                token,
                f"bad workers number {number} "
                "(value for option 'workers' must be between 1 and 2147483647)",
            )
        return number

    def include(self, item: Include, file: str, depth: int) -> None:
        pos = self.pos(item.key_token)
        if depth + 1 > INCLUDE_DEPTH_LIMIT:
            self.error(
                pos,
                f"include depth limit ({INCLUDE_DEPTH_LIMIT}) exceeded — possible circular include",
            )
            return
        path = resolve_relative(str(item.path.value), file)
        try:
            text = read_text_file(path)
            items = parse_items(text, path, self.strict)
        except ConfigError as exc:
            for d in exc.diagnostics:
                if d.pos is None:
                    self.errors.append(Diagnostic(pos, d.message))
                else:
                    self.errors.append(d)
            return
        self.files.append(path)
        self.process(items, path, depth + 1)

    # ---------------------------------------------------------------- blocks

    def block_listen(self, block: Block) -> None:
        values, positions = self.collect(block.items, "listen")
        if "storage" in values:
            values["storage"] = tuple(values["storage"])
        listen = Listen(
            pos=self.pos(block.key_token), key_pos=MappingProxyType(positions), **values
        )
        self.listens.append(listen)

    def block_storage(self, block: Block) -> None:
        assert block.name is not None
        name = str(block.name.value)
        pos = self.pos(block.key_token)
        if not name:
            self.error(block.name, "storage name must not be empty")
        for other in self.storages:
            if other.name == name:
                self.error(pos, f"duplicate storage definition '{name}' (first at {other.pos})")
        values, positions = self.collect(block.items, "storage")
        extra: dict[str, Any] = {}
        for sub in block.items:
            if isinstance(sub, Block) and sub.kind == "watchdog":
                sub_pos = self.pos(sub.key_token)
                if "watchdog" in extra:
                    self.error(sub_pos, f"redefinition of watchdog in storage '{name}'")
                    continue
                if self.watchdog_pos is not None:
                    self.error(
                        sub_pos,
                        "route 'watchdog_int.watchdog_int': is redefined "
                        f"(only one watchdog per config; first at {self.watchdog_pos})",
                    )
                    continue
                self.watchdog_pos = sub_pos
                extra["watchdog"] = self.route(sub, "watchdog_int", "watchdog_int", False, [])
            elif isinstance(sub, Block) and sub.kind == "balancing":
                if "balancing_method" in extra:
                    self.error(
                        self.pos(sub.key_token),
                        f"balancing section is redefined in storage '{name}'",
                    )
                    continue
                extra.update(self.balancing(sub, name))
        if "port" in values:
            extra["port_set"] = True
        values.setdefault("type", None)
        storage = Storage(
            name=name, pos=pos, key_pos=MappingProxyType(positions), **values, **extra
        )
        self.storages.append(storage)

    def balancing(self, block: Block, storage: str) -> dict[str, Any]:
        values, _ = self.collect(block.items, "balancing")
        result: dict[str, Any] = {
            "balancing_method": "roundrobin",
            "show_notice_messages": values.get("show_notice_messages", False),
        }
        methods = [b for b in block.items if isinstance(b, Block) and b.kind == "method"]
        for method in methods[1:]:
            self.duplicate("method", self.pos(method.key_token), self.pos(methods[0].key_token))
        if methods:
            method = methods[-1]
            assert method.name is not None
            name = str(method.name.value).lower()
            if name in ("weighted", "weightedleastconn", "responsetime"):
                self.error(method.name, f"not implemented balancing method '{name}'")
            elif name not in ("roundrobin", "leastconn"):
                self.error(method.name, f"unexpected balancing method '{method.name.value}'")
            result["balancing_method"] = name
            method_values, _ = self.collect(method.items, "method")
            result["balancing_az_aware"] = method_values.get("az_aware", True)
        return result

    def block_database(self, block: Block) -> None:
        assert block.name is not None
        database = None if block.name.type == "DEFAULT" else str(block.name.value)
        for item in block.items:
            assert isinstance(item, Block)
            self.file_rule(item, database)

    def file_rule(self, block: Block, database: str | None) -> None:
        assert block.name is not None
        group = block.kind == "group"
        user = None if block.name.type == "DEFAULT" else str(block.name.value)
        address, conn_type = self.selector(block.selector or [])
        rule = self.route(block, database, user, group, block.selector or [], address, conn_type)
        identity = rule.identity
        if identity in self.rule_seen:
            message = (
                f"route '{rule.name} {rule.selector}' is redefined "
                f"(first at {self.rule_seen[identity]})"
            )
            # both odyssey readers accept this silently; we keep the first and say so
            self.warn(rule.pos, message + "; the first definition is used")
            return
        self.rule_seen.setdefault(identity, rule.pos)
        self.rules.append(rule)

    def selector(self, tokens: list[Token]) -> tuple[str | None, str]:
        addresses = [t for t in tokens if t.type == "STRING"]
        conn_types = [t for t in tokens if t.type not in ("STRING", "DEFAULT")]
        defaults = [t for t in tokens if t.type == "DEFAULT"]
        if len(tokens) > 2 or len(addresses) > 1 or len(conn_types) > 1:
            bad = tokens[2] if len(tokens) > 2 else tokens[1]
            what = "address" if bad.type in ("STRING", "DEFAULT") else "connection type"
            self.error(bad, f"redefinition of {what}: '{bad.value}'")
        elif self.strict and len(tokens) == 2 and not addresses:
            self.error(
                tokens[1],
                f"unexpected '{tokens[1].value}': expected an address string or '{{'",
            )
        address = None
        if addresses:
            address = str(addresses[0].value)
            self.check_address(addresses[0])
        conn_type = conn_types[0].type.lower() if conn_types else "default"
        del defaults
        return address, conn_type

    _HOSTNAME = re.compile(
        r"^\.?[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*$"
    )

    def check_address(self, token: Token) -> None:
        text = str(token.value)
        if text in ("all", ""):
            return
        if "/" in text:
            try:
                ipaddress.ip_network(text, strict=False)
            except ValueError:
                self.error(token, f"invalid address or hostname: '{text}'")
            return
        try:
            ipaddress.ip_address(text)
        except ValueError:
            pass
        else:
            self.error(token, f"expected network mask in '{text}'")
            return
        if not self._HOSTNAME.match(text):
            self.error(token, f"invalid address or hostname: '{text}'")

    def route(
        self,
        block: Block,
        database: str | None,
        user: str | None,
        group: bool,
        selector: list[Token],
        address: str | None = None,
        conn_type: str = "default",
    ) -> Rule:
        values, positions = self.collect(block.items, "route")
        name = (
            f"{database or 'default_db'}.{f'group_{user}' if group else (user or 'default_user')}"
        )
        if "auth_common_name" in values:
            names = values.pop("auth_common_name")
            values["auth_common_name"] = tuple(n for n in names if n != "default")
            values["auth_common_name_default"] = "default" in names
        for key in ("group_query", "group_query_user", "group_query_db"):
            if key in values and not group:
                message = f"{key} is not allowed outside group, rule {name}"
                if self.strict:
                    self.error(positions[key], message)
                else:
                    self.warn(positions[key], message + " (ignored)")
        for key in ("watchdog_lag_query", "watchdog_lag_interval"):
            if key in values and block.kind != "watchdog":
                message = f"{key} is only allowed inside storage watchdog, rule {name}"
                if self.strict:
                    self.error(positions[key], message)
                else:
                    self.warn(positions[key], message + " (ignored)")
        options: dict[str, list[tuple[str, str]]] = {}
        creds: list[LdapCredentials] = []
        for sub in block.items:
            if not isinstance(sub, Block):
                continue
            if sub.kind == "options":
                which = sub.key_token.type.lower()
                options.setdefault(which, []).extend(
                    (str(k.value), str(v.value)) for k, v in sub.items
                )
            elif sub.kind == "ldap_storage_credentials":
                assert sub.name is not None
                cvalues, _ = self.collect(sub.items, "ldap_storage_credentials")
                cname = str(sub.name.value)
                for ckey in ("ldap_storage_username", "ldap_storage_password"):
                    if not cvalues.get(ckey):
                        self.error(
                            sub.key_token,
                            f"ldap_storage_credentials '{cname}': {ckey} is not set",
                        )
                creds.append(LdapCredentials(name=cname, pos=self.pos(sub.key_token), **cvalues))
        for which, pairs in options.items():
            values[which] = tuple(pairs)
        if not self.strict and values.get("client_max") is not None and values["client_max"] <= 0:
            values["client_max"] = None  # legacy: <= 0 means unset
        if creds:
            values["ldap_storage_credentials"] = tuple(creds)
        del selector
        return Rule(
            database=database,
            user=user,
            group=group,
            address=address,
            conn_type=conn_type,
            order=len(self.rules),
            pos=self.pos(block.key_token),
            key_pos=MappingProxyType(positions),
            **values,
        )

    def block_ldap_endpoint(self, block: Block) -> None:
        assert block.name is not None
        name = str(block.name.value)
        pos = self.pos(block.key_token)
        for other in self.ldap_endpoints:
            if other.name == name:
                self.error(pos, f"duplicate ldap_endpoint definition '{name}'")
        values, positions = self.collect(block.items, "ldap_endpoint")
        self.ldap_endpoints.append(
            LdapEndpoint(name=name, pos=pos, key_pos=MappingProxyType(positions), **values)
        )

    def block_shared_pool(self, block: Block) -> None:
        assert block.name is not None
        name = str(block.name.value)
        pos = self.pos(block.key_token)
        for other in self.shared_pools:
            if other.name == name:
                self.error(pos, f"duplicate shared_pool definition '{name}'")
        values, positions = self.collect(block.items, "shared_pool")
        if "pool_size" not in values:
            self.error(pos, f"pool_size is required in shared_pool '{name}'")
        elif values["pool_size"] <= 0:
            self.error(positions["pool_size"], f"shared_pool '{name}' pool_size must be positive")
        self.shared_pools.append(
            SharedPool(name=name, pos=pos, key_pos=MappingProxyType(positions), **values)
        )

    def block_conn_drop_options(self, block: Block) -> None:
        pos = self.pos(block.key_token)
        values, positions = self.collect(block.items, "conn_drop_options")
        if self.conn_drop is not None:
            if self.strict:
                self.error(pos, "conn_drop_options is redefined")
                return
            merged = dict(self.conn_drop.key_pos)
            merged.update(positions)
            kept = {k: getattr(self.conn_drop, k) for k in self.conn_drop.key_pos}
            kept.update(values)
            values, positions = kept, merged
        self.conn_drop = ConnDropOptions(pos=pos, key_pos=MappingProxyType(positions), **values)

    def block_soft_oom(self, block: Block) -> None:
        pos = self.pos(block.key_token)
        if self.soft_oom is not None:
            self.error(pos, "soft_oom is redefined")
            return
        values, positions = self.collect(block.items, "soft_oom")
        drops = [b for b in block.items if isinstance(b, Block)]
        for extra in drops[1:]:
            self.error(self.pos(extra.key_token), "soft_oom drop is redefined")
        if drops:
            dvalues, dpositions = self.collect(drops[0].items, "soft_oom_drop")
            values.update(dvalues)
            positions.update(dpositions)
        if "limit" not in values:
            self.error(pos, "soft_oom: limit is required")
        elif values["limit"] <= 0:
            self.error(positions["limit"], "soft_oom: limit must be positive")
        if len(values.get("process") or "") >= 256:
            self.error(positions["process"], "soft_oom: process name is too long")
        if "signal" in values:
            signal = values["signal"].upper()
            if not signal.startswith("SIG"):
                signal = "SIG" + signal
            import signal as _signal

            if not hasattr(_signal, signal):
                self.error(positions["signal"], f"soft_oom: unknown signal '{values['signal']}'")
            values["signal"] = signal
        self.soft_oom = SoftOom(pos=pos, key_pos=MappingProxyType(positions), **values)

    def block_query_parsing(self, block: Block) -> None:
        pos = self.pos(block.key_token)
        if self.query_parsing is not None:
            self.error(pos, "query_parsing is redefined")
            return
        values, positions = self.collect(block.items, "query_parsing")
        if values.get("mode") == "full":
            self.error(positions["mode"], "full mode of query parsing is not supported now")
        self.query_parsing = QueryParsing(pos=pos, key_pos=MappingProxyType(positions), **values)

    def block_load_module(self, block: Block) -> None:
        assert block.name is not None
        pos = self.pos(block.key_token)
        if self.strict:
            self.error(pos, "unknown directive 'load_module' (legacy odyssey only)")
            return
        self.warn(pos, "load_module is not supported by pooler; the block is ignored")
        self.load_modules.append(str(block.name.value))

    # ---------------------------------------------------------------- result

    def config(self, path: str | None, pos: Pos) -> Config:
        values = dict(self.globals)
        workers = values.pop("workers", 1)
        workers_auto = workers == "auto"
        if workers_auto:
            workers = ((os.cpu_count() or 1) + 1) // 2  # odyssey: (ncpu + 1) / 2
        if "client_max" in values and values["client_max"] <= 0:
            values["client_max"] = None
        storages = tuple(
            self.finish_storage(s, values.get("unix_socket_dir")) for s in self.storages
        )
        return Config(
            path=path,
            warnings=tuple(self.warnings),
            listens=tuple(self.listens),
            storages=storages,
            rules=tuple(self.rules),
            ldap_endpoints=tuple(self.ldap_endpoints),
            shared_pools=tuple(self.shared_pools),
            conn_drop_options=self.conn_drop or ConnDropOptions(),
            soft_oom=self.soft_oom,
            query_parsing=self.query_parsing or QueryParsing(),
            load_modules=tuple(self.load_modules),
            includes=tuple(self.files),
            workers=workers,
            workers_auto=workers_auto,
            pos=pos,
            key_pos=MappingProxyType(dict(self.global_pos)),
            **values,
        )

    def finish_storage(self, storage: Storage, unix_socket_dir: str | None) -> Storage:
        from dataclasses import replace

        endpoints: list[Endpoint] = []
        if storage.host is None:
            if unix_socket_dir is not None:
                endpoints.append(
                    Endpoint(None, storage.port, f"{unix_socket_dir}/.s.PGSQL.{storage.port}")
                )
        else:
            error_pos = storage.key_pos.get("host", storage.pos)
            try:
                endpoints = parse_endpoints(storage.host, storage.port)
            except ValueError as exc:
                self.error(error_pos, f"storage '{storage.name}': {exc}")
        return replace(storage, endpoints=tuple(endpoints))


def parse_endpoints(host: str, default_port: int) -> list[Endpoint]:
    """`h1:5432,[::1]:5433:az1,unix:///tmp` -> endpoints (odyssey.md §1.6)."""
    endpoints = []
    parts = host.split(",")
    if len(parts) > 128:
        raise ValueError("too many hosts (at most 128)")
    for raw in parts:
        entry = raw.strip()
        if not entry:
            raise ValueError(f"empty host in '{host}'")
        unix = False
        if entry.startswith("tcp://"):
            entry = entry[6:]
        elif entry.startswith("unix://"):
            entry = entry[7:]
            unix = True
        if entry.startswith("["):
            close = entry.find("]")
            if close < 0:
                raise ValueError(f"unclosed '[' in host '{raw}'")
            name = entry[1:close]
            rest = entry[close + 1 :]
            if rest and not rest.startswith(":"):
                raise ValueError(f"unexpected text after ']' in host '{raw}'")
            tail = rest[1:].split(":") if rest else []
        else:
            name, *tail = entry.split(":")
        if not name:
            raise ValueError(f"empty host in '{raw}'")
        port: int | None = None
        zone: str | None = None
        for piece in tail:
            if piece[:1].isdigit():
                if port is not None or not piece.isdigit():
                    raise ValueError(f"bad port in host '{raw}'")
                port = int(piece)
                if not 1 <= port <= 65535:
                    raise ValueError(f"port out of range in host '{raw}'")
            elif piece:
                if zone is not None:
                    raise ValueError(f"more than one availability zone in host '{raw}'")
                zone = piece
            else:
                raise ValueError(f"empty field in host '{raw}'")
        port = port if port is not None else default_port
        if unix:
            path = name if ".s.PGSQL." in name else f"{name.rstrip('/')}/.s.PGSQL.{port}"
            endpoints.append(Endpoint(None, port, path, zone))
        else:
            endpoints.append(Endpoint(name, port, None, zone))
    return endpoints


def parse_hba(text: str, file: str) -> tuple[list[HbaRule], list[Diagnostic]]:
    """Parse odyssey's hba_file format (odyssey.md §1.10)."""
    rules: list[HbaRule] = []
    errors: list[Diagnostic] = []
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.split("#", 1)[0]
        fields = stripped.split()
        if not fields:
            continue
        column = len(line) - len(line.lstrip()) + 1
        pos = Pos(file, number, column)
        conn_type = fields[0].lower()
        if conn_type not in kw.CONNECTION_TYPES:
            errors.append(Diagnostic(pos, f"unknown connection type '{fields[0]}' in hba file"))
            continue
        expected = 4 if conn_type == "local" else (5, 6)
        if (conn_type == "local" and len(fields) != 4) or (
            conn_type != "local" and len(fields) not in (5, 6)
        ):
            errors.append(
                Diagnostic(
                    pos,
                    f"wrong number of fields in hba line ({len(fields)}; expected {expected})",
                )
            )
            continue
        address = None
        if conn_type != "local":
            address = fields[3] if len(fields) == 5 else f"{fields[3]}/{fields[4]}"
            try:
                address = str(ipaddress.ip_network(address, strict=False))
            except ValueError:
                errors.append(Diagnostic(pos, f"invalid address in hba line: '{address}'"))
                continue
        method = fields[-1].lower()
        if method not in ("allow", "trust", "deny", "reject"):
            errors.append(
                Diagnostic(
                    pos,
                    f"unknown auth method '{fields[-1]}' (only allow/trust/deny/reject supported)",
                )
            )
            continue
        rules.append(
            HbaRule(
                conn_type=conn_type,
                databases=tuple(fields[1].split(",")),
                users=tuple(fields[2].split(",")),
                address=address,
                method=method,
                pos=pos,
            )
        )
    return rules, errors
