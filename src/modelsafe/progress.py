"""Progress bars for long saves, loads, converts and copies: bytes done, rate and time left, on stderr.

``progress_bar(False, ...)`` yields None and costs nothing: the writers and readers
skip reporting altogether.  With ``True`` it yields a function the writer or reader
calls with the number of bytes it just finished; the bar (rich) is drawn on stderr.
Like any rich output it animates on a terminal; ``TTY_COMPATIBLE=1`` or
``FORCE_COLOR=1`` force it elsewhere.

>>> with progress_bar(False, "saving", 100) as on_bytes:
...     on_bytes is None
True
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Callable, Iterator

__all__ = ["progress_bar", "stderr_is_terminal", "OnBytes"]

OnBytes = Callable[[int], None]
# Bytes gathered before the bar hears of them: tens of thousands of 1 KiB payloads
# would otherwise take a lock and a redraw check each.
STEP = 1 << 20


class _Meter:
    """Adds bytes to one task of a rich Progress, a megabyte at a time."""

    def __init__(self, bar: object, task: int) -> None:
        self._bar, self._task, self._pending = bar, task, 0

    def __call__(self, nbytes: int) -> None:
        self._pending += nbytes
        if self._pending >= STEP:
            self.flush()

    def flush(self) -> None:
        if self._pending:
            self._bar.advance(self._task, self._pending)
            self._pending = 0


@contextmanager
def progress_bar(enabled: bool, description: str, total: int | None) -> Iterator[OnBytes | None]:
    """A bar of ``total`` bytes labelled ``description`` while the block runs; None when not ``enabled``."""
    if not enabled:
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True)) as bar:
        meter = _Meter(bar, bar.add_task(description, total=total))
        try:
            yield meter
        finally:
            meter.flush()


def stderr_is_terminal() -> bool:
    """Whether stderr is a terminal (the CLI then shows bars for long work)."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False
