"""Hot reload: every trigger takes one path — parse, validate, diff, then apply or refuse.

Triggers: the config file or one of its includes (or the hba_file) changing on disk
(watchfiles, debounced; editors that save by rename are seen through the directory),
SIGHUP, the console's RELOAD, and the control socket's `reload` / `config apply`.

`Reloader` owns what does not need the running processes: reading and validating the text,
the diff, the rule births (which routes survive), the atomic write of an edited config, and
the history of results. The supervisor applies a valid outcome to its workers.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from pooler.config import Config, ConfigError, Diagnostic, diff, load, parse_text
from pooler.config.diff import RuleIdentity, rule_births

HISTORY = 20
DEBOUNCE_MS = 300
POLL_MS = 1000


@dataclass(frozen=True)
class Outcome:
    """One reload attempt, as kept in the history and shown by SHOW RELOADS / the tui."""

    ok: bool
    trigger: str
    generation: int  # the generation running after the attempt
    at: float
    changes: tuple[str, ...] = ()  # applied live
    restart_required: tuple[str, ...] = ()  # noted, not applied
    errors: tuple[Diagnostic, ...] = ()

    @property
    def error_lines(self) -> list[str]:
        return [str(d) for d in self.errors]


@dataclass
class Plan:
    """A validated new config, ready for the supervisor to apply."""

    config: Config
    births: dict[RuleIdentity, int]
    changes: list[str] = field(default_factory=list)
    restart_required: list[str] = field(default_factory=list)
    workers_changed: bool = False


def file_hash(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return ""


class Reloader:
    def __init__(self, path: Path, config: Config, *, strict: bool = False) -> None:
        self.path = path
        self.strict = strict
        self.births: dict[RuleIdentity, int] = {
            rule.identity: config.generation for rule in config.rules
        }
        self.history: deque[Outcome] = deque(maxlen=HISTORY)
        self.seen = self._hashes(config)  # the files as last read

    def _hashes(self, config: Config) -> dict[Path, str]:
        return {f: file_hash(f) for f in self.watched_files(config)}

    @property
    def last(self) -> Outcome | None:
        return self.history[-1] if self.history else None

    def parse(self, text: str | None = None) -> Config:
        """The file as on disk, or a proposed text (includes resolve next to the file)."""
        if text is None:
            return load(self.path, strict=self.strict)
        return parse_text(text, str(self.path), strict=self.strict)

    def plan(self, running: Config, text: str | None = None) -> Plan:
        """Validate and diff; raises ConfigError with every problem found."""
        new = replace(self.parse(text), generation=running.generation + 1)
        plan = Plan(new, rule_births(running, new, self.births))
        for change in diff(running, new):
            if change.text.startswith("workers"):
                plan.workers_changed = True  # applied by starting/retiring workers
                plan.changes.append(change.text)
            elif change.restart_required:
                plan.restart_required.append(change.text)
            else:
                plan.changes.append(change.text)
        return plan

    def record_success(self, plan: Plan, trigger: str) -> Outcome:
        self.births = plan.births
        self.seen = self._hashes(plan.config)  # whatever the trigger, these files are read
        outcome = Outcome(
            True,
            trigger,
            plan.config.generation,
            time.time(),
            tuple(plan.changes),
            tuple(plan.restart_required),
        )
        self.history.append(outcome)
        return outcome

    def record_failure(self, running: Config, trigger: str, error: ConfigError) -> Outcome:
        self.seen = self._hashes(running)  # not retried until the next edit
        outcome = Outcome(
            False, trigger, running.generation, time.time(), errors=tuple(error.diagnostics)
        )
        self.history.append(outcome)
        return outcome

    def watched_files(self, config: Config) -> set[Path]:
        files = {self.path.resolve()}
        files.update(Path(p).resolve() for p in config.includes)
        if config.hba_file:
            files.add(Path(config.hba_file).resolve())
        return files

    async def watch(
        self,
        current: Callable[[], Config],
        on_change: Callable[[], Awaitable[object]],
        stop: asyncio.Event,
    ) -> None:
        """Call `on_change` when a file of the running config changes on disk (debounced).

        The directories are watched, not the files, so an editor that writes a new file and
        renames it over the old one is seen too."""
        from watchfiles import awatch

        while not stop.is_set():
            files = set(self.seen)
            if any(file_hash(f) != digest for f, digest in self.seen.items()):
                await self._changed(current, on_change)  # changed before we started watching
                continue
            dirs = {str(f.parent) for f in files}
            # Every second without events the hashes are compared too, so a change made
            # while the watch was being set up is not missed.
            async for _changes in awatch(
                *dirs,
                debounce=DEBOUNCE_MS,
                stop_event=stop,
                rust_timeout=POLL_MS,
                yield_on_timeout=True,
            ):
                if any(file_hash(f) != self.seen.get(f) for f in files):
                    await self._changed(current, on_change)
                    break  # the set of files may have changed with the config

    async def _changed(
        self, current: Callable[[], Config], on_change: Callable[[], Awaitable[object]]
    ) -> None:
        seen = self._hashes(current())
        await on_change()
        # Remember what was read (a failed reload is not retried until the next edit).
        self.seen = {**seen, **self._hashes(current())}
