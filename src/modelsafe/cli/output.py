"""How commands talk to people and programs: tables, JSON, sizes, progress bars.

* :class:`TableSpec` renders with rich for ordinary sizes and with a plain, fast
  column formatter for very long tables (rich needs ~25 s for 100,000 rows).
* :func:`emit_json` writes one JSON document to stdout (NaN/inf become strings).
* :func:`progress` shows a rich progress bar on stderr only when stderr is a
  terminal; otherwise it is a silent no-op with the same interface.
* ``--json`` is one shared option (:func:`json_option`); :func:`json_mode` tells the
  error layer whether to report failures as JSON too.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import math
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence

import click

from ..progress import progress_bar

RICH_ROW_LIMIT = 2000  # above this, tables are rendered by the plain formatter
PIPE_WIDTH = 200      # table width when stdout is a pipe or file

_JSON_KEY = "modelsafe.json"


# -- --json ---------------------------------------------------------------------------

def _set_json(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    if value:
        ctx.meta[_JSON_KEY] = True  # meta is shared by the whole context tree
    return value


def json_option(fn: Callable) -> Callable:
    """The ``--json`` flag shared by every command (machine-readable output on stdout)."""
    return click.option(
        "--json", "as_json", is_flag=True, is_eager=True, callback=_set_json,
        help="Print one JSON document on stdout instead of tables (errors go to stderr as JSON).",
    )(fn)


def json_mode(ctx: click.Context | None = None) -> bool:
    """True when the running command was given ``--json``."""
    ctx = ctx or click.get_current_context(silent=True)
    return bool(ctx is not None and ctx.meta.get(_JSON_KEY))


def jsonable(value: Any) -> Any:
    """``value`` with non-finite floats as strings and tuples as lists, ready for json.dumps."""
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return value
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (bytes, bytearray)):
        return f"<{len(value)} bytes>"
    if isinstance(value, _dt.datetime):
        return value.isoformat()
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        try:
            return jsonable(value.item())
        except (TypeError, ValueError):
            pass
    return str(value)


def emit_json(document: Any, *, trusted: bool = False) -> None:
    """Write ``document`` as one line of JSON to stdout.

    ``trusted=True`` skips :func:`jsonable` for documents built of plain JSON values
    only (fast for 100,000 tensors); compact output keeps json's C encoder in use.
    """
    text = json.dumps(document if trusted else jsonable(document), separators=(",", ":"), allow_nan=False)
    click.echo(text)


# -- consoles -------------------------------------------------------------------------

def stdout_console() -> Any:
    """Rich console on stdout; when stdout is not a terminal, wide enough not to fold tables."""
    from rich.console import Console

    width = None
    if not _is_terminal(sys.stdout) and not os.environ.get("COLUMNS"):
        width = PIPE_WIDTH
    return Console(highlight=False, soft_wrap=False, width=width)


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def stderr_console() -> Any:
    from rich.console import Console

    return Console(stderr=True, highlight=False)


def say(text: str = "", *, style: str | None = None) -> None:
    """Print a line of human output (rich markup allowed) on stdout."""
    stdout_console().print(text, style=style, soft_wrap=True)


def printable(text: Any) -> str:
    r"""``text`` with control characters shown as escapes (``\x1b``), never sent to the terminal.

    Names and metadata come from files, which may be hostile: an escape sequence in a
    tensor name must not reach the terminal.

    >>> print(printable("w\x1b[2J"))
    w\x1b[2J
    """
    text = str(text)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _escape_char(c) for c in text)


def _escape_char(c: str) -> str:
    code = ord(c)
    if c in "\t\n\r":
        return {"\t": "\\t", "\n": "\\n", "\r": "\\r"}[c]
    return f"\\x{code:02x}" if code < 0x100 else (f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")


def escape(text: Any) -> str:
    """``text`` safe to print: control characters escaped, rich markup disabled."""
    from rich.markup import escape as rich_escape

    return rich_escape(printable(text))


# -- formatting helpers --------------------------------------------------------------

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def human_bytes(n: int | None) -> str:
    """``1536`` -> ``"1.5 KiB"``; exact below 1 KiB."""
    if n is None:
        return "-"
    size = float(n)
    for unit in _UNITS:
        if abs(size) < 1024 or unit == _UNITS[-1]:
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover


def format_number(value: Any) -> str:
    """Compact rendering of a metric or difference (4 significant digits): 0.421, 1.2e-07, nan, 12."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        return f"{value:.4g}"
    return str(value)


def format_shape(shape: Sequence[int]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def format_time(value: Any) -> str:
    """A timestamp (epoch seconds, datetime or ISO string) in local time, to the second."""
    if value is None:
        return "-"
    if isinstance(value, (int, float)):
        value = _dt.datetime.fromtimestamp(value)
    elif isinstance(value, str):
        try:
            value = _dt.datetime.fromisoformat(value)
        except ValueError:
            return value
    if isinstance(value, _dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone()
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return str(value)


# -- tables ---------------------------------------------------------------------------

@dataclass
class Column:
    header: str
    justify: str = "left"  # "left" | "right"
    style: str | None = None


@dataclass
class TableSpec:
    """A table of plain strings; rendered by rich, or by a fast formatter when very long.

    >>> t = TableSpec([Column("name"), Column("bytes", "right")], title="tensors")
    >>> t.add("w", "16")
    >>> print(t.plain())
    tensors
    name  bytes
    w        16
    """

    columns: list[Column]
    title: str | None = None
    rows: list[tuple[str, ...]] = field(default_factory=list)
    footer: tuple[str, ...] | None = None
    row_styles: list[str | None] = field(default_factory=list)

    def add(self, *cells: Any, style: str | None = None) -> None:
        self.rows.append(tuple(c if type(c) is str else ("" if c is None else str(c)) for c in cells))
        self.row_styles.append(style)

    def extend(self, rows: Iterable[tuple[str, ...]]) -> None:
        """Add many rows of ready-made strings at once (no per-cell conversion)."""
        before = len(self.rows)
        self.rows.extend(rows)
        self.row_styles.extend([None] * (len(self.rows) - before))

    def plain(self) -> str:
        """Fixed-width text: columns separated by two spaces, no wrapping."""
        rows = [tuple(c.header for c in self.columns), *self.rows]
        if self.footer is not None:
            rows.append(self.footer)
        columns = list(zip(*rows))
        if not all("".join(column).isprintable() for column in columns):  # rare: names with control characters
            rows = list(zip(*([printable(cell) for cell in column] for column in columns)))
            columns = list(zip(*rows))
        widths = [max(map(len, column)) for column in columns]
        template = "  ".join(
            f"{{:{'>' if col.justify == 'right' else '<'}{width}}}" for col, width in zip(self.columns, widths)
        )
        out = [self.title] if self.title else []
        out.extend(template.format(*row).rstrip() for row in rows)
        return "\n".join(out)

    def render(self) -> None:
        """Print the table on stdout."""
        if len(self.rows) > RICH_ROW_LIMIT:
            click.echo(self.plain())
            return
        from rich.table import Table

        table = Table(title=escape(self.title) if self.title else None, show_footer=self.footer is not None, title_justify="left")
        for i, col in enumerate(self.columns):
            table.add_column(
                escape(col.header), justify=col.justify, style=col.style, overflow="fold",
                footer=escape(self.footer[i]) if self.footer is not None else "",
            )
        for row, style in zip(self.rows, self.row_styles):
            table.add_row(*(escape(c) for c in row), style=style)
        stdout_console().print(table)


# -- progress ---------------------------------------------------------------------------

class _NoProgress:
    def advance(self, amount: float = 1) -> None:
        pass

    def describe(self, text: str) -> None:
        pass


def stderr_is_terminal() -> bool:
    return _is_terminal(sys.stderr)


@contextlib.contextmanager
def progress(total: float, description: str, *, unit_bytes: bool = False) -> Iterator[Any]:
    """A progress bar on stderr while the block runs, only when stderr is a terminal.

    Yields an object with ``advance(amount)`` and ``describe(text)``; both do
    nothing when no bar is shown (pipes, files, CI logs, ``--json`` consumers).
    """
    if not stderr_is_terminal() or total <= 0:
        yield _NoProgress()
        return
    with progress_bar(True, description, total, unit_bytes=unit_bytes, transient=True) as bar:
        yield bar
