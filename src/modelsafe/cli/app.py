"""The ``modelsafe`` command group.  Commands live one module each and load on first use.

To add a command, add ``"name": "modelsafe.cli.<module>:<function>"`` to COMMANDS.
Errors of every command are mapped to messages and exit codes in :mod:`.errors`.
"""

from __future__ import annotations

import importlib

import click

from .._version import __version__
from .errors import ModelsafeGroup

COMMANDS: dict[str, str] = {
    "ls": "modelsafe.cli.runs:ls",
    "show": "modelsafe.cli.inspect:show",
    "diff": "modelsafe.cli.diff:diff",
    "verify": "modelsafe.cli.verify:verify",
    "convert": "modelsafe.cli.convert:convert",
    "prune": "modelsafe.cli.runs:prune",
    "plot": "modelsafe.cli.plot:plot",
    "fork": "modelsafe.cli.runs:fork",
    "export": "modelsafe.cli.runs:export",
}


class CommandGroup(ModelsafeGroup):
    """Imports a command's module only when that command runs (fast start-up)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(COMMANDS))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        command = super().get_command(ctx, name)
        if command is not None or name not in COMMANDS:
            return command
        module, _, attr = COMMANDS[name].partition(":")
        return getattr(importlib.import_module(module), attr)


@click.group(cls=CommandGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="modelsafe")
def cli() -> None:
    """Save, inspect and verify machine-learning models and checkpoints safely.

    Wherever a path is taken, RUN@best, RUN@latest, RUN@<step> and RUN@<name> address
    one checkpoint of a run.  --json prints machine-readable output.  Exit codes:
    0 ok, 1 problem found (corrupt data, missing checkpoint), 2 usage error.
    """


@cli.command()
@click.argument("directory", required=False, type=click.Path(file_okay=False))
def demo(directory: str | None) -> None:
    """Train with checkpoints, get killed mid-save, resume, list, export the best.

    DIRECTORY (default: a new temporary directory, printed) receives the run and the
    export; running the demo again into it replaces its previous run.  Needs torch.
    """
    from .demo import run_demo

    run_demo(directory)
