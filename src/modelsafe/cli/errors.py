"""The one place that turns errors into messages and exit codes.

Exit codes: 0 success; 1 a problem was found (corrupt file or tensor, failed verify,
missing checkpoint, any other modelsafe error, an OS error); 2 usage error (bad options,
arguments or ``RUN@`` addresses, and :class:`~modelsafe.errors.InvalidArgumentError`: the
library refused a value the command line gave it).

Commands raise library errors as they are; :class:`ModelsafeGroup` catches them once,
at the top, and :func:`translate` maps each to a :class:`CommandError` through a small
registry keyed by exception type (most specific class in the MRO wins).  A command
that printed its own findings (``verify``) raises :class:`ProblemFound`.  Under
``--json`` every error is one JSON object on stderr, so stdout stays parseable.
"""

from __future__ import annotations

import json
from typing import Any, Callable

import click

from ..errors import InvalidArgumentError, ModelsafeError
from ..gc_pause import gc_paused
from .output import json_mode, printable

EXIT_OK = 0
EXIT_PROBLEM = 1
EXIT_USAGE = 2

__all__ = [
    "EXIT_OK", "EXIT_PROBLEM", "EXIT_USAGE", "CommandError", "ProblemFound", "UsageProblem",
    "ModelsafeGroup", "register_error", "translate", "run",
]


class CommandError(click.ClickException):
    """A failure shown to the user as ``error: <message>`` (or JSON) with an exit code."""

    exit_code = EXIT_PROBLEM

    def __init__(
        self, message: str, *, kind: str = "error", path: Any = None, key: str | None = None,
        exit_code: int | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.path = path
        self.key = key
        if exit_code is not None:
            self.exit_code = exit_code

    def as_dict(self) -> dict[str, Any]:
        return {"error": self.kind, "message": self.message, "path": self.path, "key": self.key, "exit_code": self.exit_code}

    as_json: bool | None = None  # set by ModelsafeGroup from the command's --json flag

    def show(self, file: Any = None) -> None:
        if self.as_json if self.as_json is not None else json_mode():
            click.echo(json.dumps(self.as_dict()), err=True)
        else:
            click.echo(f"error: {printable(self.message)}", err=True)


class ProblemFound(CommandError):
    """The command found a problem and already reported the details; exit 1 with a summary."""

    exit_code = EXIT_PROBLEM

    def __init__(self, message: str, **kwargs: Any) -> None:
        super().__init__(message, kind=kwargs.pop("kind", "problem"), **kwargs)


class UsageProblem(click.UsageError):
    """A usage error (exit 2) raised outside click's own parsing, e.g. a bad ``RUN@`` address."""


# -- translation registry -----------------------------------------------------------------

Translator = Callable[[BaseException], CommandError]
_TRANSLATORS: dict[type, Translator] = {}


def register_error(exc_type: type, translator: Translator) -> None:
    """Map ``exc_type`` (and its subclasses, unless more specific ones are registered)."""
    _TRANSLATORS[exc_type] = translator


def translate(exc: BaseException) -> CommandError | None:
    """The CommandError for ``exc``, or None when it is not an expected failure (a bug)."""
    if isinstance(exc, CommandError):
        return exc
    for cls in type(exc).__mro__:
        translator = _TRANSLATORS.get(cls)
        if translator is not None:
            return translator(exc)
    return None


def _from_modelsafe(exc: BaseException) -> CommandError:
    assert isinstance(exc, ModelsafeError)
    return CommandError(str(exc), kind=type(exc).__name__, path=exc.path, key=exc.key)


def _from_invalid_argument(exc: BaseException) -> CommandError:
    # the library refused a value the command line passed on (export --key of no entry, fork onto its source): usage,
    # exit 2 as click's own; still shown as "error: ..." (or JSON) with the library's message
    error = _from_modelsafe(exc)
    error.exit_code = EXIT_USAGE
    return error


def _from_os_error(exc: BaseException) -> CommandError:
    assert isinstance(exc, OSError)
    where = f"{exc.filename}: " if exc.filename else ""
    what = exc.strerror or str(exc)
    return CommandError(f"{where}{what}", kind=type(exc).__name__, path=exc.filename)


def _from_import_error(exc: BaseException) -> CommandError:
    assert isinstance(exc, ImportError)
    name = exc.name or str(exc)
    return CommandError(
        f"this command needs the Python package {name!r}, which is not installed ({exc}); install it with pip",
        kind="ImportError",
    )


register_error(ModelsafeError, _from_modelsafe)
register_error(InvalidArgumentError, _from_invalid_argument)
register_error(OSError, _from_os_error)
register_error(ImportError, _from_import_error)


class ModelsafeGroup(click.Group):
    """The command group: maps every expected error of a subcommand through :func:`translate`.

    The cyclic garbage collector is paused while a command runs (see :mod:`modelsafe.gc_pause`):
    listing 100,000 tensors otherwise spends a third of its time in collections.
    """

    def invoke(self, ctx: click.Context) -> Any:
        try:
            with gc_paused():  # commands build up to millions of small objects and no cycles
                return super().invoke(ctx)
        except CommandError as exc:
            exc.as_json = json_mode(ctx)
            raise
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException, BrokenPipeError):
            raise
        except Exception as exc:
            translated = translate(exc)
            if translated is None:
                raise
            translated.as_json = json_mode(ctx)
            raise translated from exc


def run(command: click.Command, argv: list[str] | None) -> None:
    """Run ``command`` as the ``modelsafe`` program: print errors, exit with 0, 1 or 2."""
    command.main(args=argv, prog_name="modelsafe", standalone_mode=True)
