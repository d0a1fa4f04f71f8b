"""An unpickler that can only build what an explicit allowlist names.

Every global a pickle asks for (GLOBAL, STACK_GLOBAL, INST, OBJ and the extension
opcodes) is looked up in a table of ``"module.name" -> stand-in``.  The stand-ins are
functions of ours that build inert values; nothing the file names is ever imported
or called.  A name not in the table stops the load with
:class:`~modelsafe.errors.UnsafeObjectError` naming the file and the global.
Extension-registry and out-of-band-buffer opcodes are refused before unpickling
starts, because they resolve objects without going through the table.

>>> import io, pickle
>>> data = pickle.dumps({"a": [1, 2.5, None]}, protocol=2)
>>> restricted_loads(data, {}, source="demo.pkl")
{'a': [1, 2.5, None]}
"""

from __future__ import annotations

import io
import pickle
import pickletools
from typing import Any, Callable, Mapping

from ..errors import CorruptCheckpointError, ModelsafeError, UnsafeObjectError

__all__ = ["RestrictedUnpickler", "restricted_loads", "read_pickle_segment", "scan_opcodes", "Refused"]

# Python 2 spellings a protocol 0-2 pickle may use for builtins.
_MODULE_ALIASES = {"__builtin__": "builtins", "copy_reg": "copyreg"}
# Opcodes that resolve objects outside find_class (copyreg's extension cache) or need
# out-of-band buffers the caller never supplies.
_REFUSED_OPCODES = {"EXT1", "EXT2", "EXT4", "NEXT_BUFFER", "READONLY_BUFFER"}
MAX_PICKLE_BYTES = 1 << 31


class Refused(Exception):
    """Raised by a stand-in to refuse its arguments; becomes an error naming the file."""

    def __init__(self, message: str, *, unsafe: bool = False) -> None:
        super().__init__(message)
        self.unsafe = unsafe


def global_name(module: str, name: str) -> str:
    return f"{_MODULE_ALIASES.get(module, module)}.{name}"


def scan_opcodes(data: bytes, source: str) -> None:
    """Walk every opcode once (no objects built) and refuse the ones that bypass the allowlist."""
    try:
        for opcode, arg, pos in pickletools.genops(data):
            if opcode.name in _REFUSED_OPCODES:
                raise UnsafeObjectError(
                    f"{source}: the pickle uses opcode {opcode.name} at byte {pos}, which resolves objects outside "
                    "the allowlist; refused (nothing was executed)",
                    path=source,
                )
    except ModelsafeError:
        raise
    except Exception as exc:  # ValueError, struct errors, ... from a damaged stream
        raise CorruptCheckpointError(f"{source}: the pickle stream is damaged ({exc})", path=source) from None


def read_pickle_segment(f: Any, source: str) -> bytes:
    """The bytes of the next pickle in binary file ``f`` (up to and including STOP); ``f`` ends after it."""
    start = f.tell()
    try:
        for _opcode, _arg, _pos in pickletools.genops(f):
            pass
    except Exception as exc:
        raise CorruptCheckpointError(f"{source}: the pickle stream at byte {start} is damaged ({exc})", path=source) from None
    end = f.tell()
    if end - start > MAX_PICKLE_BYTES:
        raise CorruptCheckpointError(f"{source}: pickle of {end - start} bytes exceeds the 2 GiB limit", path=source)
    f.seek(start)
    data = f.read(end - start)
    if len(data) != end - start:
        raise CorruptCheckpointError(f"{source}: file ended inside a pickle", path=source)
    return data


class RestrictedUnpickler(pickle.Unpickler):
    """pickle.Unpickler whose find_class only answers from ``allowed`` (``"module.name" -> object``).

    ``refused`` maps names torch itself would accept but that modelsafe does not support
    to an explanation; they raise UnsupportedObjectError rather than UnsafeObjectError.
    ``persistent_load`` is called with every persistent id (None: persistent ids refused).
    """

    def __init__(
        self,
        file: Any,
        allowed: Mapping[str, Any],
        *,
        source: str,
        persistent_load: Callable[[Any], Any] | None = None,
        unsupported: Mapping[str, str] | None = None,
        hint: Callable[[str], str] | None = None,
    ) -> None:
        super().__init__(file, fix_imports=False, encoding="utf-8", errors="strict")
        self._hint = hint
        self._allowed = allowed
        self._unsupported = unsupported or {}
        self._source = source
        self._persistent = persistent_load

    def find_class(self, module: str, name: str) -> Any:  # noqa: D401 - pickle API
        full = global_name(str(module), str(name))
        found = self._allowed.get(full)
        if found is not None:
            return found
        if full in self._unsupported:
            from ..errors import UnsupportedObjectError

            raise UnsupportedObjectError(
                f"{self._source}: holds {full} ({self._unsupported[full]}); modelsafe cannot convert it",
                path=self._source, key=full,
            )
        advice = (self._hint(full) if self._hint else "") or (
            "If you trust the file and need that object, load it with its own tool in a sandbox and save the "
            "plain tensors"
        )
        raise UnsafeObjectError(
            f"{self._source}: refuses to load global {full}: it is not on modelsafe's allowlist of tensor and "
            f"container types, and loading it could run code. Nothing from the file was executed. {advice}",
            path=self._source, key=full,
        )

    def persistent_load(self, pid: Any) -> Any:  # noqa: D401 - pickle API
        if self._persistent is None:
            raise CorruptCheckpointError(
                f"{self._source}: the pickle refers to external storage ({_short(pid)}) but this file has none",
                path=self._source,
            )
        return self._persistent(pid)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def restricted_loads(
    data: bytes,
    allowed: Mapping[str, Any],
    *,
    source: str,
    persistent_load: Callable[[Any], Any] | None = None,
    unsupported: Mapping[str, str] | None = None,
    hint: Callable[[str], str] | None = None,
) -> Any:
    """Unpickle ``data`` through the allowlist.

    Every failure is a ModelsafeError naming ``source``: UnsafeObjectError for a
    refused global, CorruptCheckpointError for a damaged or hostile stream.
    """
    if len(data) > MAX_PICKLE_BYTES:
        raise CorruptCheckpointError(f"{source}: pickle of {len(data)} bytes exceeds the 2 GiB limit", path=source)
    scan_opcodes(data, source)
    unpickler = RestrictedUnpickler(io.BytesIO(data), allowed, source=source, persistent_load=persistent_load, unsupported=unsupported, hint=hint)
    try:
        return unpickler.load()
    except ModelsafeError:
        raise
    except Refused as exc:
        error = UnsafeObjectError if exc.unsafe else CorruptCheckpointError
        raise error(f"{source}: {exc}", path=source) from None
    except RecursionError:
        raise CorruptCheckpointError(f"{source}: the pickle nests too deeply", path=source) from None
    except MemoryError:
        raise CorruptCheckpointError(f"{source}: the pickle asks for more memory than is available", path=source) from None
    except Exception as exc:  # UnpicklingError, EOFError, TypeError from stand-ins fed wrong arguments, ...
        raise CorruptCheckpointError(
            f"{source}: the pickle is damaged or hostile and was refused ({type(exc).__name__}: {exc})", path=source
        ) from None
