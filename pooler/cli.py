"""The `pooler` command line: serve, check, reload, demo, tui."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from pooler import __version__

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_UNREACHABLE = 2
EXIT_STARTUP_FAILED = 3


def _check(config_path: str, strict: bool) -> int:
    from pooler.config import ConfigError, load

    try:
        config = load(config_path, strict=strict)
    except ConfigError as exc:
        for diagnostic in exc.diagnostics:
            click.echo(str(diagnostic), err=True)
        return EXIT_INVALID
    for warning in config.warnings:
        click.echo(str(warning), err=True)
    click.echo("config is valid")
    return EXIT_OK


def _version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    from pooler.compiled import build

    click.echo(f"pooler, version {__version__} ({build()})")
    ctx.exit()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_version,
    help="Show the version (and whether the hot path runs compiled) and exit.",
)
def main() -> None:
    """A PostgreSQL connection pooler that reads odyssey's configuration language."""


@main.command()
@click.argument("config_path", metavar="CONFIG", type=click.Path(dir_okay=True))
@click.option("--strict", is_flag=True, help="Apply odyssey master's (HEAD) stricter rules.")
def check(config_path: str, strict: bool) -> None:
    """Parse and validate CONFIG; print `config is valid` or every error."""
    sys.exit(_check(config_path, strict))


@main.command()
@click.argument("config_path", metavar="CONFIG", type=click.Path(dir_okay=True))
@click.option("--test", "test_only", is_flag=True, help="Only check the config (as `check`).")
@click.option("--strict", is_flag=True, help="Apply odyssey master's (HEAD) stricter rules.")
@click.option(
    "--control",
    "control_path",
    type=click.Path(dir_okay=False),
    help="Control socket path (default: .<config name>.control next to CONFIG).",
)
def serve(config_path: str, test_only: bool, strict: bool, control_path: str | None) -> None:
    """Run the pooler with CONFIG in the foreground."""
    if test_only:
        sys.exit(_check(config_path, strict))
    from pooler.supervisor.main import run

    control = Path(control_path) if control_path else None
    sys.exit(run(Path(config_path), strict=strict, control=control))


@main.command()
@click.argument("config_path", metavar="[CONFIG]", required=False, type=click.Path(dir_okay=False))
def demo(config_path: str | None) -> None:
    """Start a throwaway PostgreSQL and serve a copy of CONFIG (default: sample.conf) in front
    of it (Ctrl-C stops and removes both)."""
    from pooler.demo import default_sample_conf, run_demo

    sys.exit(run_demo(Path(config_path) if config_path else default_sample_conf()))


def _control_option(f: Any) -> Any:
    f = click.option(
        "--control",
        "control_path",
        type=click.Path(dir_okay=False),
        help="Control socket of the running pooler (default: .<config name>.control next to "
        "CONFIG).",
    )(f)
    return click.argument(
        "config_path", metavar="[CONFIG]", required=False, type=click.Path(dir_okay=False)
    )(f)


def _control_socket(config_path: str | None, control_path: str | None) -> Path:
    if control_path is not None:
        return Path(control_path)
    if config_path is None:
        raise click.UsageError("give the CONFIG of the running pooler or --control PATH")
    from pooler.control.client import default_control_path

    return default_control_path(config_path)


@main.command()
@_control_option
@click.option(
    "--startup-report",
    is_flag=True,
    help="Start without a terminal, print the seconds from launch to the first frame and to "
    "the first live numbers, and quit.",
)
def tui(config_path: str | None, control_path: str | None, startup_report: bool) -> None:
    """The dashboard, attached to a running `pooler serve CONFIG` through its control socket."""
    path = _control_socket(config_path, control_path)
    from tui.app import run

    run(path, startup_report=startup_report)


@main.command()
@_control_option
def reload(config_path: str | None, control_path: str | None) -> None:
    """Reload the config of the running `pooler serve CONFIG` (through its control socket,
    this pooler only); print what changed, or every error (then nothing changed)."""
    import asyncio

    from pooler.control.client import ControlClient, ControlError

    path = _control_socket(config_path, control_path)

    async def ask() -> tuple[Any, list[Any]]:
        async with ControlClient(path) as client:
            return await client.reload(), await client.reloads()

    try:
        result, history = asyncio.run(ask())
    except (OSError, ControlError) as exc:
        click.echo(f"pooler reload: no pooler answers on {path}: {exc}", err=True)
        sys.exit(EXIT_UNREACHABLE)
    if not result.ok:
        for error in result.errors:
            click.echo(error, err=True)
        click.echo(
            f"reload failed: nothing changed, still serving generation {result.generation}",
            err=True,
        )
        sys.exit(EXIT_INVALID)
    changes, restart_required = result.changes, result.restart_required
    before = history[-2] if len(history) >= 2 and history[-1].at == result.at else None
    if not changes and not restart_required and before is not None and before.trigger == "file":
        # the file watcher was quicker: what this reload would have printed is its diff
        click.echo(f"applied already by the file watcher (generation {before.generation}):")
        changes, restart_required = before.changes, before.restart_required
    for change in changes:
        click.echo(change)
    for what in restart_required:
        click.echo(f"{what} (needs a restart)")
    if not changes and not restart_required:
        click.echo("no changes")
    click.echo(f"serving generation {result.generation}")
