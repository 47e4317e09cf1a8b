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
