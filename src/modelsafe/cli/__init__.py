"""The ``modelsafe`` command line.  Thin commands; :mod:`.errors` maps failures to exit codes."""

from __future__ import annotations

from .app import cli
from .errors import run

__all__ = ["cli", "main"]


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``modelsafe`` and ``python -m modelsafe``."""
    run(cli, argv)
