"""Addresses of one checkpoint of a run: ``RUN@best``, ``RUN@latest``, ``RUN@<step>``, ``RUN@<name>``.

Every call that takes a path (``ms.load``, ``ms.open``, ``ms.load_into``, the commands)
takes such an address too.  A path that exists is always taken literally, so files and
directories with ``@`` in their names still open as themselves; otherwise the text is
split at the right-most ``@`` whose left part is an existing directory (a run whose own
name holds ``@`` works too).

>>> parse_address("runs/exp1@best").selector
'best'
>>> parse_address("model.safetensors").selector is None
True

Which checkpoint a selector names is decided by ``Checkpoints.info`` (one implementation
for the library and the command line).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .errors import InvalidArgumentError

__all__ = ["Address", "parse_address", "SELECTORS", "is_url", "remote_kind"]

SELECTORS = "RUN@best, RUN@latest, RUN@<step> or RUN@<name>"


@dataclass(frozen=True)
class Address:
    """``text`` as given; ``path`` the file or directory; ``selector`` what follows ``@`` (None: no address)."""

    text: str
    path: str
    selector: str | None = None

    @property
    def step(self) -> int | None:
        """The step a numeric selector names (``RUN@7``), else None."""
        if self.selector is not None and self.selector.isdigit():
            return int(self.selector)
        return None


def parse_address(text: str) -> Address:
    """Split ``text`` into a path and an optional ``@`` selector (see the module docs).

    When no part of ``text`` exists, the split is at the last ``@``, so the error that
    follows names the missing run.

    >>> parse_address("runs/exp1@12").step
    12
    """
    if not text:
        raise InvalidArgumentError("an empty path was given", key="path")
    if "@" not in text or os.path.exists(text):
        return Address(text, text)
    for i in reversed([i for i, c in enumerate(text) if c == "@"]):
        run, selector = text[:i], text[i + 1:]
        if "/" in selector or os.sep in selector:  # no checkpoint name holds a separator: '@' of a parent folder
            continue
        if run and os.path.isdir(run):
            if not selector:
                raise InvalidArgumentError(f"{text!r}: nothing after '@'; use {SELECTORS}", path=text, key="path")
            return Address(text, run, selector)
    run, _, selector = text.rpartition("@")
    if not run or not selector or "/" in selector or os.sep in selector:
        return Address(text, text)  # not an address: a path that does not exist
    return Address(text, run, selector)


def is_url(text: object) -> bool:
    """True for an fsspec URL such as ``s3://bucket/run`` (``file://`` is a local path).

    >>> is_url("s3://bucket/run@best"), is_url("runs/exp1")
    (True, False)
    """
    from .storage import is_url as storage_is_url

    return storage_is_url(text)


def remote_kind(url: str, storage_options: dict | None = None) -> str | None:
    """What URL ``url`` holds: "file", "checkpoint" (a manifest.json), "run" (a run file) or None."""
    from .storage.remote import kind_of

    return kind_of(url, storage_options)
