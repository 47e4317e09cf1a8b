"""The `pooler` command line: serve, check, demo, tui."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from pooler import __version__

EXIT_OK = 0
EXIT_INVALID = 1
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


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="pooler")
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
def serve(config_path: str, test_only: bool, strict: bool) -> None:
    """Run the pooler with CONFIG in the foreground."""
    if test_only:
        sys.exit(_check(config_path, strict))
    from pooler.supervisor.main import run

    sys.exit(run(Path(config_path), strict=strict))


@main.command()
@click.argument("config_path", metavar="CONFIG", required=False, type=click.Path(dir_okay=False))
def demo(config_path: str | None) -> None:
    """Start a throwaway PostgreSQL and serve sample.conf in front of it (Ctrl-C stops)."""
    from pooler.demo import default_sample_conf, run_demo

    sys.exit(run_demo(Path(config_path) if config_path else default_sample_conf()))
