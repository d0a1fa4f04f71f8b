"""Command definitions.  Each command is a thin shell over the library."""

from __future__ import annotations

import click

from .._version import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="modelsafe")
def cli() -> None:
    """Save, inspect and verify machine-learning models and checkpoints safely."""


@cli.command()
@click.argument("directory", required=False, type=click.Path(file_okay=False))
def demo(directory: str | None) -> None:
    """A short tour: save and load the everyday objects, then catch a corrupted file."""
    from .demo import run_demo

    run_demo(directory)
