"""Compare two saved files or checkpoints: the model behind ``diff``.

Tensors whose stored checksums, dtypes and shapes agree are equal without reading a
byte.  Others are read and compared numerically in float64 (complex128 for complex
dtypes; bfloat16 and float8 through ml_dtypes; complex32 as float16 pairs), chunk by
chunk so memory stays bounded on large tensors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np

from ..format.dtypes import DType, numpy_dtype
from ..reader import Reader
from .describe import scalar_values

CHUNK_ELEMENTS = 1 << 22


@dataclass
class TensorChange:
    name: str
    dtype: tuple[str, str]
    shape: tuple[tuple[int, ...], tuple[int, ...]]
    max_abs_diff: float | None = None     # None when not comparable (shapes differ, bytes payloads)
    differing: int | None = None          # elements that differ
    elements: int | None = None

    @property
    def dtype_changed(self) -> bool:
        return self.dtype[0] != self.dtype[1]

    @property
    def shape_changed(self) -> bool:
        return self.shape[0] != self.shape[1]

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "max_abs_diff": self.max_abs_diff, "differing": self.differing, "elements": self.elements}
        out["dtype"] = list(self.dtype) if self.dtype_changed else self.dtype[0]
        out["shape"] = [list(s) for s in self.shape] if self.shape_changed else list(self.shape[0])
        out["dtype_changed"], out["shape_changed"] = self.dtype_changed, self.shape_changed
        return out


@dataclass
class MappingDiff:
    """Differences between two flat ``path -> value`` maps."""

    added: dict[str, Any] = field(default_factory=dict)
    removed: dict[str, Any] = field(default_factory=dict)
    changed: dict[str, tuple[Any, Any]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)

    def as_dict(self) -> dict[str, Any]:
        return {"added": self.added, "removed": self.removed, "changed": {k: list(v) for k, v in self.changed.items()}}


@dataclass
class Comparison:
    a: str
    b: str
    added: list[str]
    removed: list[str]
    changed: list[TensorChange]
    unchanged: int
    metadata: MappingDiff
    values: MappingDiff

    @property
    def identical(self) -> bool:
        return not (self.added or self.removed or self.changed or self.metadata or self.values)

    def as_dict(self) -> dict[str, Any]:
        return {
            "a": self.a,
            "b": self.b,
            "identical": self.identical,
            "added": self.added,
            "removed": self.removed,
            "changed": [c.as_dict() for c in self.changed],
            "unchanged": self.unchanged,
            "metadata": self.metadata.as_dict(),
            "values": self.values.as_dict(),
        }


# -- numbers ------------------------------------------------------------------------------

def as_numbers(raw: np.ndarray, dtype: DType) -> np.ndarray:
    """Flat float64 (or complex128) values of the bytes ``raw`` holding ``dtype`` elements."""
    if dtype.name == "complex32":
        halves = raw.view(np.float16).astype(np.float64)
        return halves[0::2] + 1j * halves[1::2]
    npdt = numpy_dtype(dtype)
    if npdt is None:  # pragma: no cover - every table dtype but complex32 has a numpy twin
        raise TypeError(f"cannot compare dtype {dtype.name} numerically")
    values = raw.view(npdt)
    return values.astype(np.complex128 if values.dtype.kind == "c" else np.float64)


def compare_values(raw_a: np.ndarray, dtype_a: DType, raw_b: np.ndarray, dtype_b: DType, count: int,
                   advance: Callable[[int], None] = lambda n: None) -> tuple[float, int]:
    """(max |a - b|, number of differing elements) over ``count`` elements.

    Elements equal as numbers (NaN equal to NaN, inf to inf of the same sign) count as
    equal; a NaN against a number makes the maximum NaN.
    """
    worst = 0.0
    differing = 0
    with np.errstate(invalid="ignore", over="ignore"):
        for start in range(0, count, CHUNK_ELEMENTS):
            stop = min(count, start + CHUNK_ELEMENTS)
            a = as_numbers(raw_a[start * dtype_a.itemsize : stop * dtype_a.itemsize], dtype_a)
            b = as_numbers(raw_b[start * dtype_b.itemsize : stop * dtype_b.itemsize], dtype_b)
            same = (a == b) | (np.isnan(a) & np.isnan(b))
            if same.all():
                advance((stop - start) * (dtype_a.itemsize + dtype_b.itemsize))
                continue
            delta = np.abs(a - b)
            delta[same] = 0.0
            differing += int(np.count_nonzero(~same))
            chunk_max = float(np.max(delta))
            worst = math.nan if math.isnan(chunk_max) or math.isnan(worst) else max(worst, chunk_max)
            advance((stop - start) * (dtype_a.itemsize + dtype_b.itemsize))
    return worst, differing


# -- trees and metadata ----------------------------------------------------------------------

def flat_items(value: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """``{"a": {"b": 1}}`` -> ``("a.b", 1)``; lists and scalars are leaves."""
    if isinstance(value, dict) and value:
        for key, item in value.items():
            yield from flat_items(item, f"{prefix}.{key}" if prefix else str(key))
    else:
        yield prefix, value


def diff_mappings(a: dict[str, Any], b: dict[str, Any]) -> MappingDiff:
    out = MappingDiff()
    for key, value in a.items():
        if key not in b:
            out.removed[key] = value
        elif not _same_value(value, b[key]):
            out.changed[key] = (value, b[key])
    for key, value in b.items():
        if key not in a:
            out.added[key] = value
    return out


def _same_value(x: Any, y: Any) -> bool:
    if isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y):
        return True
    return type(x) is type(y) and x == y


# -- the comparison ------------------------------------------------------------------------------

def _resolve(name: str, aliases: dict[str, str]) -> str:
    return aliases.get(name, name)


def compare(src_a: Any, src_b: Any, *, progress: Any = None) -> Comparison:
    """Compare two open sources (``modelsafe.sources.open_source``): files or checkpoints."""
    reader_a, reader_b = Reader(src_a), Reader(src_b)
    added, removed, to_read, unchanged = _plan(src_a, src_b)
    changed: list[TensorChange] = []
    advance = progress.advance if progress is not None else (lambda n: None)

    if to_read:
        buffers_a, buffers_b = src_a.buffers(lazy=True), src_b.buffers(lazy=True)
        for name, ra, rb in to_read:
            base_a, base_b = buffers_a[ra.file], buffers_b[rb.file]
            src_a.verify_record(ra, base_a)
            src_b.verify_record(rb, base_b)
            raw_a, raw_b = base_a[ra.begin : ra.end], base_b[rb.begin : rb.end]
            change = TensorChange(name, (ra.dtype.name, rb.dtype.name), (tuple(ra.shape), tuple(rb.shape)))
            same_layout = change.shape[0] == change.shape[1] and ra.kind == rb.kind == "tensor"
            if not same_layout:
                changed.append(change)
                advance(ra.nbytes + rb.nbytes)
                continue
            if ra.dtype.name == rb.dtype.name and np.array_equal(raw_a, raw_b):
                unchanged += 1
                advance(ra.nbytes + rb.nbytes)
                continue
            count = int(np.prod(ra.shape, dtype=np.int64)) if ra.shape else 1
            change.max_abs_diff, change.differing = compare_values(raw_a, ra.dtype, raw_b, rb.dtype, count, advance)
            change.elements = count
            changed.append(change)

    metadata = diff_mappings(dict(flat_items(_plain(reader_a.metadata))), dict(flat_items(_plain(reader_b.metadata))))
    values = diff_mappings(dict(scalar_values(reader_a.manifest.get("tree"))), dict(scalar_values(reader_b.manifest.get("tree"))))
    return Comparison(reader_a.path, reader_b.path, added, removed, changed, unchanged, metadata, values)


def _plan(src_a: Any, src_b: Any) -> tuple[list[str], list[str], list[tuple[str, Any, Any]], int]:
    """(added, removed, pairs of records to read, number equal by checksum) for two sources."""
    aliases_a, aliases_b = src_a.aliases or {}, src_b.aliases or {}
    names_a, names_b = _names(Reader(src_a)), _names(Reader(src_b))
    set_a, set_b = set(names_a), set(names_b)
    added = [n for n in names_b if n not in set_a]
    removed = [n for n in names_a if n not in set_b]
    to_read: list[tuple[str, Any, Any]] = []
    unchanged = 0
    for name in names_a:
        if name not in set_b:
            continue
        ra = src_a.records[_resolve(name, aliases_a)]
        rb = src_b.records[_resolve(name, aliases_b)]
        if ra.dtype.name == rb.dtype.name and tuple(ra.shape) == tuple(rb.shape) and ra.kind == rb.kind and ra.checksum and ra.checksum == rb.checksum:
            unchanged += 1
        else:
            to_read.append((name, ra, rb))
    return added, removed, to_read, unchanged


def bytes_to_compare(src_a: Any, src_b: Any) -> int:
    """Tensor bytes :func:`compare` reads (for a progress bar): both sides of every pair it reads."""
    return sum(ra.nbytes + rb.nbytes for _, ra, rb in _plan(src_a, src_b)[2])


def _names(reader: Any) -> list[str]:
    names = reader.keys()
    seen = set(names)
    names.extend(n for n in reader.records if n not in seen)  # bytes and pickled payloads
    return names


def _plain(metadata: Any) -> Any:
    return metadata if isinstance(metadata, dict) else ({} if metadata is None else {"": metadata})
