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

from contextlib import contextmanager
from typing import Any, Callable, Iterator

__all__ = ["progress_bar", "Meter", "OnBytes"]

OnBytes = Callable[[int], None]
# Bytes gathered before the bar hears of them: tens of thousands of 1 KiB payloads
# would otherwise take a lock and a redraw check each.
STEP = 1 << 20


class Meter:
    """Adds work done to one task of a rich Progress, gathered :data:`STEP` at a time.

    Call it (or ``advance``) with the amount just done; ``describe`` relabels the bar.
    """

    def __init__(self, bar: Any, task: Any, step: int) -> None:
        self._bar, self._task, self._step, self._pending = bar, task, step, 0

    def __call__(self, amount: int) -> None:
        self._pending += amount
        if self._pending >= self._step:
            self.flush()

    advance = __call__

    def describe(self, text: str) -> None:
        self.flush()
        self._bar.update(self._task, description=text)

    def flush(self) -> None:
        if self._pending:
            self._bar.advance(self._task, self._pending)
            self._pending = 0


@contextmanager
def progress_bar(enabled: bool, description: str, total: int | None, *, unit_bytes: bool = True,
                 transient: bool = False) -> Iterator[Meter | None]:
    """A bar of ``total`` bytes (or items) labelled ``description`` while the block runs; None when not ``enabled``.

    ``transient``: the bar disappears when done (the CLI prints its own summary).
    """
    if not enabled:
        yield None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    counters = (DownloadColumn(), TransferSpeedColumn()) if unit_bytes else (MofNCompleteColumn(),)
    columns = (TextColumn("{task.description}"), BarColumn(), *counters, TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True, highlight=False), transient=transient) as bar:
        meter = Meter(bar, bar.add_task(description, total=total), STEP if unit_bytes else 1)
        try:
            yield meter
        finally:
            meter.flush()

