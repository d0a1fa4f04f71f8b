"""An unpickler that can only build what an explicit allowlist names.

Every global a pickle asks for (GLOBAL, STACK_GLOBAL, INST) is looked up in a table
of ``"module.name" -> stand-in``.  The stand-ins are functions of ours that check
their arguments and build inert values; nothing the file names is ever imported or
called.  A name not in the table stops the load with
:class:`~modelsafe.errors.UnsafeObjectError` naming the file and the global.  Since
everything on the unpickler's stack is then either a plain value (str, int, list,
dict, ...), a stand-in's result or a stand-in function, the opcodes that call
things (REDUCE, OBJ, NEWOBJ, BUILD) can only reach those: the table is the whole
attack surface.

Before CPython's C unpickler runs, :func:`scan_opcodes` walks the stream once and
refuses the extension-registry opcodes (EXT1/2/4 resolve objects from copyreg's cache
without asking find_class), out-of-band buffers, and memo slots larger than the
stream (CPython would allocate and zero a memo table of that size first).  It also
follows which stack slots hold globals and refuses BUILD, SETITEM(S), APPEND(S) and
ADDITEMS on them: the allowlisted objects live as long as the process, so changing
one (``__defaults__`` of a stand-in, the fields of a dtype record) would change every
later load.  Only objects the unpickler made in this load may be modified.

>>> import io, pickle
>>> data = pickle.dumps({"a": [1, 2.5, None]}, protocol=2)
>>> restricted_loads(data, {}, source="demo.pkl")
{'a': [1, 2.5, None]}
"""

from __future__ import annotations

import _compat_pickle
import io
import pickle
import pickletools
from typing import Any, Callable, Mapping

from ..errors import CorruptCheckpointError, ModelsafeError, UnsafeObjectError

__all__ = ["RestrictedUnpickler", "restricted_loads", "scan_opcodes", "Refused"]

# Opcodes that resolve objects outside find_class (copyreg's extension cache) or need
# out-of-band buffers the caller never supplies.
_REFUSED_OPCODES = {"EXT1", "EXT2", "EXT4", "NEXT_BUFFER", "READONLY_BUFFER"}
_MEMO_OPCODES = {"PUT", "BINPUT", "LONG_BINPUT", "GET", "BINGET", "LONG_BINGET"}
MAX_PICKLE_BYTES = 1 << 31


class Refused(Exception):
    """Raised by a stand-in to refuse its arguments; becomes an error naming the file."""

    def __init__(self, message: str, *, unsafe: bool = False) -> None:
        super().__init__(message)
        self.unsafe = unsafe


def global_name(module: str, name: str) -> str:
    """``module.name`` with Python 2 spellings (``__builtin__``, ``commands``), which protocols 0-2
    write, mapped to the Python 3 names they resolve to, as CPython's own unpickler maps them."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        module, name = _compat_pickle.NAME_MAPPING[(module, name)]
    elif module in _compat_pickle.IMPORT_MAPPING:
        module = _compat_pickle.IMPORT_MAPPING[module]
    return f"{module}.{name}"


# How each opcode's argument is laid out, derived from pickletools' own opcode table so the
# scan splits a stream exactly where CPython's unpickler does:
#   ("fixed", name, n)                 n bytes
#   ("prefixed", name, n, signed)      an n-byte little-endian length, then that many bytes
#   ("lines", name, k)                 k newline-terminated lines
#   ("none", name)                     no argument
def _opcode_table() -> list:
    table: list = [None] * 256
    for op in pickletools.opcodes:
        code = ord(op.code)
        if op.arg is None:
            table[code] = ("none", op.name)
        elif op.arg.n >= 0:
            table[code] = ("fixed", op.name, op.arg.n)
        elif op.arg.n == pickletools.UP_TO_NEWLINE:
            table[code] = ("lines", op.name, 2 if op.arg.name == "stringnl_noescape_pair" else 1)
        else:
            size = {pickletools.TAKEN_FROM_ARGUMENT1: 1, pickletools.TAKEN_FROM_ARGUMENT4: 4,
                    pickletools.TAKEN_FROM_ARGUMENT4U: 4, pickletools.TAKEN_FROM_ARGUMENT8U: 8}[op.arg.n]
            table[code] = ("prefixed", op.name, size, op.arg.n == pickletools.TAKEN_FROM_ARGUMENT4)
    return table


_OPCODES = _opcode_table()

# Stack effects, from the same table: (pops down to a MARK first, items popped below it or
# in all, items pushed).  The scan models the stack with one flag per slot: does it hold
# a global (or a persistent object), which must never be modified?  Marks are kept apart,
# as CPython's unpickler keeps them: a list of stack heights.
_MUTATORS = {"BUILD", "SETITEM", "SETITEMS", "APPEND", "APPENDS", "ADDITEMS"}
_SHARED_RESULTS = {"GLOBAL", "STACK_GLOBAL", "PERSID", "BINPERSID"}
_KEEPS_TAG = {"DUP", "MEMOIZE"}
_PUT_OPCODES = {"PUT", "BINPUT", "LONG_BINPUT"}
_GET_OPCODES = {"GET", "BINGET", "LONG_BINGET"}


def _effect_table() -> list:
    table: list = [None] * 256
    for op in pickletools.opcodes:
        before = op.stack_before
        to_mark = pickletools.markobject in before
        below = before.index(pickletools.markobject) if to_mark else len(before)
        table[ord(op.code)] = (to_mark, below, len(op.stack_after))
    return table


_EFFECTS = _effect_table()
# opcodes that only push one new value (ints, strings, empty containers): the scan's fast path
_PUSHES_ONE = frozenset(
    ord(op.code) for op in pickletools.opcodes
    if _EFFECTS[ord(op.code)] == (False, 0, 1) and op.name not in _SHARED_RESULTS | _GET_OPCODES and op.name != "MARK"
)


class _StackModel:
    """Which stack slots and memo entries hold globals, opcode by opcode (no objects built)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.stack: list[bool] = []
        self.marks: list[int] = []
        self.memo: dict[int, bool] = {}

    def _underflow(self, pos: int) -> CorruptCheckpointError:
        return CorruptCheckpointError(f"{self.source}: the pickle is damaged or hostile (stack underflow at byte {pos})", path=self.source)

    def fence(self) -> int:
        return self.marks[-1] if self.marks else 0

    def put(self, memo_index: int, pos: int) -> None:
        if len(self.stack) <= self.fence():
            raise self._underflow(pos)
        self.memo[memo_index] = self.stack[-1]

    def step(self, code: int, name: str, memo_index: int | None, pos: int) -> None:
        stack, marks = self.stack, self.marks
        if name == "MARK":
            return marks.append(len(stack))
        if name in _PUT_OPCODES:
            return self.put(memo_index, pos)  # type: ignore[arg-type]
        if name in _GET_OPCODES:
            return stack.append(self.memo.get(memo_index, False))  # type: ignore[arg-type]
        if name == "POP" and marks and marks[-1] == len(stack):
            return marks.pop() and None  # POP on a mark pops the mark, as CPython's unpickler does
        to_mark, below, pushed = _EFFECTS[code]
        if to_mark:
            if not marks:
                raise self._underflow(pos)
            del stack[marks.pop():]
        if len(stack) - (marks[-1] if marks else 0) < below:
            raise self._underflow(pos)
        deepest = stack[-below] if below else False
        if below:
            del stack[-below:]
        if deepest and name in _MUTATORS:
            raise UnsafeObjectError(
                f"{self.source}: the pickle modifies a global in place ({name} at byte {pos}); an allowlisted "
                "function or class outlives the load, so changing it would change later loads. Refused (nothing "
                "was executed)",
                path=self.source,
            )
        if name == "MEMOIZE":
            self.memo[len(self.memo)] = deepest
        shared = name in _SHARED_RESULTS or (deepest and name in _KEEPS_TAG)
        stack.extend([shared] * pushed)


def scan_opcodes(data: Any, source: str, start: int = 0) -> int:
    """Walk the opcodes of the pickle at ``data[start:]`` (no objects built); returns the offset after STOP.

    Refused: opcodes that bypass the allowlist (extension registry, out-of-band buffers),
    memo indices beyond the pickle's size, and opcodes that modify a global in place.  A pickler numbers memo entries 0, 1, 2, ...,
    one per PUT, so an index larger than the byte count is never legitimate, while
    CPython's unpickler would allocate (and zero) a memo table of that many slots first.
    """
    n = len(data)
    i = start
    table = _OPCODES
    model = _StackModel(source)
    push, pushes_one = model.stack.append, _PUSHES_ONE
    while i < n:
        pos = i
        entry = table[data[i]]
        i += 1
        if entry is None:
            raise CorruptCheckpointError(
                f"{source}: the pickle stream is damaged (unknown opcode {data[pos]:#04x} at byte {pos})", path=source
            )
        kind, name = entry[0], entry[1]
        code = data[pos]
        if name in _REFUSED_OPCODES:
            raise UnsafeObjectError(
                f"{source}: the pickle uses opcode {name} at byte {pos}, which resolves objects outside "
                "the allowlist; refused (nothing was executed)",
                path=source,
            )
        memo: Any = None
        if kind == "none":
            if name == "STOP":
                return i
            if code in pushes_one:
                push(False)
            else:
                model.step(code, name, None, pos - start)
            continue
        if kind == "fixed":
            end = i + entry[2]
            if name in _MEMO_OPCODES:
                memo = int.from_bytes(data[i:end], "little")
            i = end
        elif kind == "prefixed":
            size = entry[2]
            length = int.from_bytes(data[i : i + size], "little", signed=entry[3])
            if length < 0:
                raise CorruptCheckpointError(f"{source}: the pickle stream is damaged (negative length at byte {pos})", path=source)
            i += size + length
        else:
            for _ in range(entry[2]):
                j = data.find(b"\n", i)
                if j < 0:
                    i = n + 1
                    break
                if name in _MEMO_OPCODES:
                    try:
                        memo = int(bytes(data[i:j]))
                    except ValueError:
                        raise CorruptCheckpointError(f"{source}: bad memo index at byte {pos}", path=source) from None
                i = j + 1
        if i > n:
            break
        if memo is not None and not 0 <= memo <= pos - start:
            raise CorruptCheckpointError(
                f"{source}: the pickle uses memo slot {memo} at byte {pos - start}; refused before allocating a memo "
                "table that large (damaged or hostile file)",
                path=source,
            )
        if code in pushes_one:
            push(False)
        elif memo is not None and name in _PUT_OPCODES:
            model.put(memo, pos - start)
        else:
            model.step(code, name, memo, pos - start)
    raise CorruptCheckpointError(f"{source}: the pickle stream at byte {start} is truncated (no STOP opcode)", path=source)


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
        spelled = f"{module}.{name}"
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
            f"{self._source}: refuses to load global {full}{'' if spelled == full else f' (spelled {spelled})'}: "
            "it is not on modelsafe's allowlist of tensor and "
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
    scanned: bool = False,
) -> Any:
    """Unpickle ``data`` through the allowlist (``scanned``: the caller already ran scan_opcodes on it).

    Every failure is a ModelsafeError naming ``source``: UnsafeObjectError for a
    refused global, CorruptCheckpointError for a damaged or hostile stream.
    """
    if len(data) > MAX_PICKLE_BYTES:
        raise CorruptCheckpointError(f"{source}: pickle of {len(data)} bytes exceeds the 2 GiB limit", path=source)
    if not scanned:
        scan_opcodes(data, source)
    unpickler = RestrictedUnpickler(io.BytesIO(data), allowed, source=source, persistent_load=persistent_load, unsupported=unsupported, hint=hint)
    try:
        return unpickler.load()
    except ModelsafeError as exc:
        if exc.path is None:  # raised by a stand-in: say which file
            raise type(exc)(f"{source}: {exc.message}", path=source, key=exc.key) from None
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
