"""The exception tree of modelsafe.

Every error raised on purpose by modelsafe is a :class:`ModelsafeError`.  Each
carries ``path`` (the file or directory involved) and ``key`` (the tensor or
tree path, where one applies), and its message says what failed, where, and
what to do.  Several also inherit the matching builtin so that existing
``except ValueError`` / ``except FileNotFoundError`` code keeps working.
"""

from __future__ import annotations

import os
from typing import Any

__all__ = [
    "ModelsafeError",
    "CorruptCheckpointError",
    "NewerFormatError",
    "CheckpointNotFoundError",
    "UnsupportedObjectError",
    "UnsafeObjectError",
    "UnknownClassError",
    "MissingRecipeError",
    "IncompatibleStateError",
    "StorageError",
    "RunLockedError",
    "FrameworkNotInstalledError",
    "InvalidArgumentError",
    "RunConflictError",
    "CheckpointRemovedError",
    "TensorKeyError",
]


class ModelsafeError(Exception):
    """Root of every error modelsafe raises on purpose.

    >>> try:
    ...     raise ModelsafeError("boom", path="a.safetensors", key="w")
    ... except ModelsafeError as e:
    ...     (e.path, e.key)
    ('a.safetensors', 'w')
    """

    def __init__(self, message: str, *, path: Any = None, key: str | None = None) -> None:
        super().__init__(message)  # first: ImportError.__init__ would reset .path afterwards
        self.message = message
        self.path = os.fspath(path) if isinstance(path, os.PathLike) else path
        self.key = key

    def __str__(self) -> str:
        return self.message

    def __reduce__(self):  # keep errors picklable across processes (async saves, workers)
        return (_rebuild_error, (type(self), self.message, self.path, self.key, self.__dict__))


def _rebuild_error(cls, message, path, key, state):
    err = cls.__new__(cls)
    ModelsafeError.__init__(err, message, path=path, key=key)
    err.__dict__.update(state)
    return err


class CorruptCheckpointError(ModelsafeError, ValueError):
    """A file or checkpoint is damaged, truncated, hostile or not a modelsafe file."""


class NewerFormatError(CorruptCheckpointError):
    """The file was written by a newer major format version than this modelsafe reads."""


class CheckpointNotFoundError(ModelsafeError, FileNotFoundError):
    """No file, directory or checkpoint exists where one was asked for."""

    def __init__(self, message: str, *, path: Any = None, key: str | None = None) -> None:
        ModelsafeError.__init__(self, message, path=path, key=key)
        self.filename = self.path
        self.errno = 2
        self.strerror = message

    def __str__(self) -> str:
        return self.message


class UnsupportedObjectError(ModelsafeError, TypeError):
    """``ms.save`` met an object that nothing knows how to store."""


class UnsafeObjectError(ModelsafeError):
    """A file holds pickled objects and the caller did not pass ``allow_pickle=True``."""


class UnknownClassError(ModelsafeError):
    """A recipe names a class that is neither registered nor in a trusted module."""


class MissingRecipeError(UnknownClassError):
    """A saved module (or optimizer) has no recipe, so ``ms.load`` cannot rebuild it; use ``ms.load_into``."""


class IncompatibleStateError(ModelsafeError, ValueError):
    """Saved state does not fit the target; ``report`` holds the full LoadReport."""

    def __init__(self, message: str, *, path: Any = None, key: str | None = None, report: Any = None) -> None:
        super().__init__(message, path=path, key=key)
        self.report = report


class StorageError(ModelsafeError, OSError):
    """Writing or reading storage failed (full disk, permissions, lost connection)."""

    def __init__(self, message: str, *, path: Any = None, key: str | None = None, errno: int | None = None) -> None:
        ModelsafeError.__init__(self, message, path=path, key=key)
        self.errno = errno
        self.filename = self.path
        self.strerror = message

    def __str__(self) -> str:
        return self.message


class RunLockedError(StorageError):
    """Another writer holds the run: two writers would interleave their checkpoints."""


class FrameworkNotInstalledError(ModelsafeError, ImportError):
    """A file or object needs a framework that is not installed."""


class InvalidArgumentError(ModelsafeError, ValueError, TypeError):
    """An argument of a modelsafe call has the wrong type or value; the message names it.

    It is also a ``ValueError`` and a ``TypeError``, so code written against the
    builtins keeps working.

    >>> issubclass(InvalidArgumentError, (ValueError, TypeError))
    True
    """


class RunConflictError(ModelsafeError, ValueError):
    """The state of a run forbids the operation: a step or name already taken, a fork
    into a directory that holds checkpoints, a directory that belongs to another run."""


class CheckpointRemovedError(CheckpointNotFoundError):
    """The checkpoint was removed (by retention or ``delete``) while it was being read."""


class UnsupportedFormatError(ModelsafeError, ValueError):
    """A valid file that modelsafe cannot load as it is: another tool's format that
    ``modelsafe convert`` reads, or a safetensors dtype no framework here represents.
    Never used for damaged files (those are :class:`CorruptCheckpointError`)."""


class TensorKeyError(ModelsafeError, KeyError):
    """``reader[key]`` names no tensor: a key the file lacks, or one that holds bytes or a
    pickled object (``ms.load`` returns those in their place in the tree).  Also a
    ``KeyError``, as for any mapping."""
