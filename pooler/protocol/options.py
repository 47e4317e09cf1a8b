"""The startup parameter `options` (PGOPTIONS): command-line switches for the backend.

A pooler cannot pass switches to a server process it shares, so only the ones that set a
run-time parameter are accepted, `-c name=value` (or `-cname=value`) and `--name=value`,
split as PostgreSQL's `pg_split_opts` does (blanks separate, a backslash keeps the next
character); they become session parameters of the client. Anything else raises
ValueError, and the login is refused (SQLSTATE `SYNTAX_ERROR`): never dropped silently.
"""

from __future__ import annotations

SYNTAX_ERROR = "42601"  # what PostgreSQL answers a bad switch with


def split_options(options: str) -> list[str]:
    """PostgreSQL's pg_split_opts."""
    words: list[str] = []
    word: list[str] = []
    escaped = False
    started = False
    for char in options:
        if escaped:
            word.append(char)
            escaped = False
        elif char == "\\":
            escaped = started = True
        elif char.isspace():
            if started:
                words.append("".join(word))
                word, started = [], False
        else:
            word.append(char)
            started = True
    if escaped:
        word.append("\\")
    if started:
        words.append("".join(word))
    return words


def parse_options(options: str) -> dict[str, str]:
    """The run-time parameters `options` sets, in order; ValueError for anything else."""
    settings: dict[str, str] = {}
    words = split_options(options)
    i = 0
    while i < len(words):
        word = words[i]
        if word == "-c" and i + 1 < len(words):
            i += 1
            setting, shown = words[i], f"-c {words[i]}"
        elif (word.startswith("-c") and word != "-c") or word.startswith("--"):
            setting, shown = word[2:], word
        else:
            raise ValueError(
                f'unsupported startup option "{word}": a pooler takes only -c name=value '
                "and --name=value"
            )
        name, equals, value = setting.partition("=")
        if not equals or not name:
            raise ValueError(f'unsupported startup option "{shown}": expected name=value')
        settings[name.replace("-", "_")] = value
        i += 1
    return settings


def parse_bool(value: str) -> bool | None:
    """PostgreSQL's parse_bool: a prefix of `true`, `false`, `yes`, `no` (any case), `on`,
    `of(f)`, `1`, `0`; None for anything else."""
    word = value.lower()
    if not word:
        return None
    for full, meaning in (("true", True), ("false", False), ("yes", True), ("no", False)):
        if full.startswith(word) and word[0] == full[0]:
            return meaning
    if word == "on" or word == "1":
        return True
    if word in ("of", "off", "0"):
        return False
    return None


def replication_refusal(value: str | None) -> tuple[str, str] | None:
    """(SQLSTATE, message) refusing the startup parameter `replication`, or None when the
    client asked for an ordinary connection. The pooler relays no replication protocol:
    handing such a client an ordinary session instead would be a silent lie."""
    if value is None:
        return None
    wanted = True if value == "database" else parse_bool(value)
    if wanted is None:
        return "22023", f'invalid value for parameter "replication": "{value}"'
    if wanted:
        return "0A000", "replication connections are not supported by the pooler"
    return None
