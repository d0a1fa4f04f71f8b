"""The one place that turns errors into messages and exit codes.

0: success.  1: a problem was found (corrupt file, failed verify, missing checkpoint,
any modelsafe error).  2: usage error (bad options or arguments).
"""

from __future__ import annotations

import sys

import click

from ..errors import ModelsafeError

EXIT_OK = 0
EXIT_PROBLEM = 1
EXIT_USAGE = 2


class ProblemFound(click.ClickException):
    """A command found a problem it already reported; exit 1 with this message."""

    exit_code = EXIT_PROBLEM


def run(command: click.Command, argv: list[str] | None) -> None:
    try:
        command.main(args=argv, prog_name="modelsafe", standalone_mode=False)
    except click.UsageError as exc:
        exc.show()
        sys.exit(EXIT_USAGE)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.Abort:
        click.echo("aborted", err=True)
        sys.exit(EXIT_PROBLEM)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except ModelsafeError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_PROBLEM)
    except BrokenPipeError:
        sys.exit(EXIT_OK)
    sys.exit(EXIT_OK)
