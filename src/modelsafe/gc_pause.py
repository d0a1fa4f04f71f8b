"""Pause Python's cyclic garbage collector while a save or load builds many objects.

Saving or loading 20,000 small tensors creates hundreds of thousands of
long-lived objects (leaves, header entries, records, tensors); each one nudges the
collector towards a full collection that walks every object in the process, which
doubled the time of such loads and saves.  Nothing these paths create is cyclic
garbage, so the collector is paused for their duration and restored afterwards.
Reference counting still frees everything as usual.  Nested and concurrent
pauses are counted: the collector comes back when the last one ends, and only if
it was enabled when the first one began.

>>> import gc
>>> with gc_paused():
...     gc.isenabled()
False
>>> gc.isenabled()
True
"""

from __future__ import annotations

import contextlib
import gc
import threading
from typing import Iterator

_lock = threading.Lock()
_depth = 0
_was_enabled = False


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Disable the cyclic collector inside the block (reference counting keeps working)."""
    global _depth, _was_enabled
    with _lock:
        if _depth == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _was_enabled:
                gc.enable()
