"""Open a single file that is not a modelsafe/safetensors file: torch pickles load, others are named.

``ms.load``, ``ms.open`` and ``ms.load_into`` take torch ``.pt/.pth/.bin`` files: they
are read by the same allowlist reader ``modelsafe convert`` uses (nothing the file
names is imported or called), flattened and written as a modelsafe file into memory,
and that is opened like any other file, so every verb, ``framework=`` and
``map_location`` work the same.  A valid file of another tool that the verbs do not
read (npz, Keras h5, MXNet params, ...) gets an UnsupportedFormatError that says what
the file is and how to convert it; a file nothing recognises is left to the
safetensors reader, whose error says it is damaged or not a modelsafe file.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

from . import legacy
from .errors import CorruptCheckpointError, UnsupportedFormatError
from .format.reader import FileSource
from .format.writer import write_file
from .tree import flatten

# formats the loading verbs read through their legacy reader
LOADABLE = ("torch",)
# formats that are (or claim to be) safetensors: the format reader validates them itself
_SAFETENSORS = ("safetensors",)


def open_file(path: str) -> FileSource:
    """A Source for the regular file ``path``, whatever tool wrote it."""
    entry = _foreign_entry(path)
    if entry is None or entry.name in _SAFETENSORS:
        return FileSource(path)
    if entry.name in LOADABLE:
        return _converted(path, legacy.read_foreign(path))
    raise UnsupportedFormatError(
        f"{path}: is a {entry.name} file ({entry.description}), not a modelsafe or safetensors file; "
        f"ms.load reads modelsafe, safetensors and torch files. Convert it first: "
        f"modelsafe convert {path} {os.path.splitext(path)[0]}.safetensors",
        path=path,
    )


def _foreign_entry(path: str) -> Any:
    """The legacy registry's entry for ``path`` (signatures first, then extensions), or None."""
    try:
        return legacy.reader_for(path)
    except CorruptCheckpointError:  # no signature or extension matches: the safetensors reader says why
        return None


def _converted(path: str, found: legacy.ForeignFile) -> FileSource:
    """``found`` written as a modelsafe file into anonymous memory, opened under ``path``'s name."""
    from .convert import lower_tree  # the values convert lowers (torch.Size -> tuple, ...), lowered alike

    fl = flatten(lower_tree(found.tree, []))
    fd = _anonymous_file()
    try:
        with open(fd, "wb", closefd=False) as f:
            write_file(f, fl, user_metadata={"source_format": found.format})
        return FileSource(path, fd=fd)
    except BaseException:
        os.close(fd)
        raise


def _anonymous_file() -> int:
    """A read-write descriptor of a file with no name: in memory where the OS allows."""
    if hasattr(os, "memfd_create"):
        try:
            return os.memfd_create("modelsafe-legacy", getattr(os, "MFD_CLOEXEC", 0))
        except OSError:
            pass
    with tempfile.TemporaryFile() as f:
        return os.dup(f.fileno())
