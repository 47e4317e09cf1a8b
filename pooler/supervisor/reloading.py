"""The running config: `reload` (SIGHUP, files changed, console RELOAD, control) applies a
plan of pooler/supervisor/reload.py to every worker or keeps everything; control
`config validate` / `config apply`; what older generations left (obsolete rules).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pooler.config import Config, ConfigError, Diagnostic
from pooler.config.files import write_atomically
from pooler.control import schema
from pooler.ipc import ConfigMessage
from pooler.logs import log
from pooler.supervisor import aggregate, odyssey_views
from pooler.supervisor.notify import notify, reloading
from pooler.supervisor.reload import Outcome, file_hash
from pooler.supervisor.workers import WorkerProcesses


class Reloading(WorkerProcesses):
    """Reloads of the running config (state set by `Supervisor.__init__`)."""

    path: Path
    old_configs: dict[int, Config]

    @property
    def last_reload(self) -> schema.ReloadResult | None:
        last = self.reloader.last
        return None if last is None else _reload_result(last)

    def reload(self, trigger: str = "SIGHUP", text: str | None = None) -> schema.ReloadResult:
        """Parse, validate, diff; on success apply to every worker, else change nothing.

        `text` is a proposed config (control `config apply` writes it first)."""
        log.info("config", f"importing changes from '{self.path}' ({trigger})")
        running = self.config
        told_systemd = self._ready is not None and self._ready.is_set() and reloading()
        try:
            plan = self.reloader.plan(running, text)
        except ConfigError as exc:
            if told_systemd:
                notify("READY=1", f"STATUS=reload failed, serving generation {running.generation}")
            outcome = self.reloader.record_failure(running, trigger, exc)
            for error in outcome.error_lines:
                log.error("config", f"reload failed: {error}")
            return _reload_result(outcome)
        new = plan.config
        self.old_configs[running.generation] = running
        self.config = new
        self.broadcast(ConfigMessage(new, plan.births, self.pause))
        self._apply_pool_sizes(new, plan.births)
        if plan.workers_changed:
            self._spawn(self._resize(), "resize workers")
        outcome = self.reloader.record_success(plan, trigger)
        for change in plan.changes:
            log.info("config", change)
        if new.log_config:
            _log_config(new)
        for change in plan.restart_required:
            log.error("config", f"restart required: {change}")
        log.info("config", f"reloaded, generation {new.generation}")
        if told_systemd:  # READY=1 again once every worker has applied it
            self._reloading = new.generation
            self._check_ready()
        return _reload_result(outcome)

    def _apply_pool_sizes(self, config: Config, births: dict[Any, int]) -> None:
        """pool_size of surviving routes applies live: more slots are granted at once, a
        smaller limit has the excess shed as servers come back idle."""
        rules = {rule.identity: rule for rule in config.rules}
        for key in self.broker.route_keys():
            if len(key) == 2 and key[0] == "shared_pool":  # a shared_pool's slots
                shared = config.shared_pool(key[1])
                if shared is not None:
                    self._deliver(self.broker.set_limit(key, shared.pool_size))
                continue
            if len(key) != 4 or key[0] == "clients":
                continue
            birth, identity = key[0], key[1]
            rule = rules.get(identity)
            if rule is not None and births.get(identity) == birth and rule.pool_size > 0:
                self._deliver(self.broker.set_limit(key, rule.pool_size))

    def validate(self, text: str) -> dict[str, Any]:
        """Control `config validate`: the errors with positions, or the diff it would apply."""
        try:
            plan = self.reloader.plan(self.config, text)
        except ConfigError as exc:
            return {"ok": False, "errors": [_position(d) for d in exc.diagnostics], "changes": []}
        return {
            "ok": True,
            "errors": [],
            "changes": plan.changes,
            "restart_required": plan.restart_required,
        }

    def apply(self, text: str, expected_hash: str) -> dict[str, Any]:
        """Control `config apply`: validate, write the file atomically, reload. Refused when
        the file changed on disk since the editor read it (its hash differs)."""
        if file_hash(self.path) != expected_hash:
            raise schema.ProtocolError(
                "conflict", f"{self.path} changed on disk since it was read; reload it first"
            )
        check = self.validate(text)
        if not check["ok"]:
            return {**check, "generation": self.config.generation}
        write_atomically(self.path, text)
        result = self.reload("control", text)
        return {
            "ok": result.ok,
            "generation": result.generation,
            "errors": result.errors,
            "changes": result.changes,
            "restart_required": result.restart_required,
        }

    async def _file_changed(self) -> None:
        self.reload("file")

    def quantiles(self) -> tuple[float, ...]:
        for rule in self.config.rules:
            storage = self.config.storage(rule.storage or "")
            if storage is not None and storage.type == "local" and rule.quantiles:
                return odyssey_views.parse_quantiles(rule.quantiles)
        return odyssey_views.DEFAULT_QUANTILES

    def obsolete_rules(self) -> list[Any]:
        wanted = {
            (r.key[0], r.key[1]) for r in aggregate.merge_routes(self.snapshots()) if r.obsolete
        }
        out = []
        for _birth, identity in sorted(wanted, key=repr):
            for generation in sorted(self.old_configs, reverse=True):  # its last version
                found = [r for r in self.old_configs[generation].rules if r.identity == identity]
                if found:
                    out.extend(found)
                    break
        return out


def _reload_result(outcome: Outcome) -> schema.ReloadResult:
    return schema.ReloadResult(
        ok=outcome.ok,
        generation=outcome.generation,
        errors=outcome.error_lines,
        changes=list(outcome.changes),
        at=outcome.at,
        trigger=outcome.trigger,
        restart_required=list(outcome.restart_required),
    )


def _position(diagnostic: Diagnostic) -> dict[str, Any]:
    pos = diagnostic.pos
    return {
        "file": pos.file if pos else getattr(diagnostic, "file", None),
        "line": pos.line if pos else None,
        "column": pos.column if pos else None,
        "message": diagnostic.message,
        "text": str(diagnostic),
    }


def _log_config(config: Config) -> None:
    """log_config: the parsed config as the pooler understood it (passwords left out)."""
    for listen in config.listens:
        log.info("config", f"listen {listen.host or 'unix'}:{listen.port} tls {listen.tls}")
    for storage in config.storages:
        hosts = ", ".join(str(e) for e in storage.endpoints) or storage.type
        log.info("config", f"storage '{storage.name}' {storage.type} {hosts} tls {storage.tls}")
    for rule in config.rules:
        log.info(
            "config",
            f"rule {rule.name} {rule.selector}: authentication {rule.authentication}, "
            f"storage {rule.storage}, pool {rule.pool}, pool_size {rule.pool_size}",
        )
    log.info("config", f"workers {config.workers}, generation {config.generation}")
