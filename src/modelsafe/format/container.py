"""The safetensors container: an 8-byte header length, a JSON header, then tensor bytes.

This module builds and validates headers.  It trusts nothing it reads: every field
is checked before anything is allocated (bounded header size, known dtypes,
non-negative shapes, byte length = dtype x shape, offsets inside the file, no
overlaps and no gaps), and every problem is a CorruptCheckpointError naming the
file and, where one applies, the tensor.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from typing import Any

from ..errors import CorruptCheckpointError
from . import checksum
from .dtypes import STORAGE_CODES, DType, logical_shape, odd_packing

# Limits a real file never reaches and a hostile one hits before anything is parsed or
# allocated (docs/format.md, "Limits").  Parsing costs about 25 bytes of memory per
# header byte and ~20 us per tensor, so these bound a hostile header to about 1 GB and
# a few seconds while the largest real single files (hundreds of thousands of
# optimizer tensors) stay well inside them.
MAX_HEADER_BYTES = 100_000_000   # the limit safetensors itself applies
MAX_TENSORS = 500_000            # tensor entries in one header
HEADER_BASE_BYTES = 16 << 20     # header bytes allowed besides the tensors' own ...
HEADER_BYTES_PER_TENSOR = 4096   # ... plus this much per tensor entry
MAX_NAME_CHARS = 16_384          # characters of a tensor name
MANIFEST_BASE_NODES = 2_000_000  # JSON objects and arrays in a manifest besides the tensors' own ...
MANIFEST_NODES_PER_TENSOR = 16   # ... plus this many per tensor
MAX_DIMS = 64
HEADER_ALIGN = 64  # the data section starts 64-byte aligned (safetensors needs 8)
MANIFEST_KEY = "modelsafe"
HEADER_CHECKSUM_KEY = "modelsafe.header_xxh3"
_HEADER_CHECKSUM_RE = re.compile(rb'"modelsafe\.header_xxh3"\s*:\s*"([0-9a-f]{16})"')


@dataclass(frozen=True)
class RawEntry:
    """One tensor as the safetensors header describes it (its storage form)."""

    name: str
    storage: DType             # the logical dtype the header's code holds
    shape: tuple[int, ...]     # logical shape (F4: half the header's last dimension)
    begin: int  # offsets relative to the start of the data section
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


@dataclass
class Header:
    entries: dict[str, RawEntry]   # in header order
    metadata: dict[str, str]       # the __metadata__ map
    data_start: int                # absolute file offset of the data section
    data_len: int
    raw: bytes                     # the header JSON bytes (for checksum verification)


# -- writing --------------------------------------------------------------------

def build_header(entries: list[tuple[str, str, list[int], int, int]], metadata: dict[str, str]) -> bytes:
    """Header bytes (length prefix included), padded so the data starts HEADER_ALIGN-byte aligned.

    ``entries`` are (name, storage code, shape, begin, end).  If ``metadata`` holds
    HEADER_CHECKSUM_KEY, its value is replaced by the checksum of the header.
    """
    obj: dict[str, Any] = {}
    if metadata:
        obj["__metadata__"] = metadata
    for name, code, shape, begin, end in entries:
        obj[name] = {"dtype": code, "shape": shape, "data_offsets": [begin, end]}
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    text += b" " * (-(len(text) + 8) % HEADER_ALIGN)
    blob = struct.pack("<Q", len(text)) + text
    if HEADER_CHECKSUM_KEY in metadata:
        blob = _seal(blob)
    return blob


def reseal(blob: bytes) -> bytes:
    """``blob``, a header that build_header sealed, with its seal recomputed after an edit in place."""
    return _seal(blob)


def _seal(blob: bytes) -> bytes:
    match = _HEADER_CHECKSUM_RE.search(blob)
    assert match is not None
    start, end = match.span(1)
    zeroed = blob[:start] + checksum.PLACEHOLDER.encode() + blob[end:]
    return blob[:start] + checksum.digest(zeroed).encode() + blob[end:]


# -- reading --------------------------------------------------------------------

def _corrupt(path: Any, what: str, key: str | None = None) -> CorruptCheckpointError:
    where = f"{path}: tensor {key!r}: " if key is not None else f"{path}: "
    return CorruptCheckpointError(
        f"{where}{what}. The file is damaged, truncated or not a safetensors/modelsafe file; "
        "restore it from a backup or save it again",
        path=path, key=key,
    )


def read_length(prefix: bytes, file_size: int, path: Any) -> int:
    """Validate the 8-byte prefix and return the header length."""
    if len(prefix) < 8 or file_size < 8:
        raise _corrupt(path, f"file is {file_size} bytes, too short to hold a safetensors header")
    (n,) = struct.unpack("<Q", prefix[:8])
    if n > MAX_HEADER_BYTES:
        raise _corrupt(path, f"header length {n} exceeds the {MAX_HEADER_BYTES}-byte limit")
    if n > file_size - 8:
        raise _corrupt(path, f"header length {n} is larger than the file ({file_size} bytes)")
    if n < 2:
        raise _corrupt(path, f"header length {n} is too small to hold a JSON object")
    return n


def parse_header(raw: bytes, file_size: int, path: Any) -> Header:
    """Parse and validate header JSON ``raw`` of a file of ``file_size`` bytes."""
    _check_header_budget(raw, path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _corrupt(path, f"header is not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError) as exc:  # ValueError: bad JSON, or an integer past int_max_str_digits
        raise _corrupt(path, f"header is not valid JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise _corrupt(path, "header is not a JSON object")
    data_start = 8 + len(raw)
    data_len = file_size - data_start
    metadata = obj.pop("__metadata__", None)
    if metadata is None:
        metadata = {}
    elif not (isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())):
        raise _corrupt(path, "__metadata__ must map strings to strings")
    if HEADER_CHECKSUM_KEY in metadata and MANIFEST_KEY not in metadata:
        # a damaged manifest key would otherwise turn a modelsafe file into a "plain" safetensors
        # file that skips every modelsafe check (seal and checksums)
        raise _corrupt(path, f"the header is sealed by modelsafe but holds no {MANIFEST_KEY!r} manifest")
    entries: dict[str, RawEntry] = {}
    for name, spec in obj.items():
        entries[name] = _parse_entry(name, spec, data_len, path)
    _check_layout(entries, data_len, path)
    return Header(entries, metadata, data_start, data_len, raw)


def _too_large(path: Any, what: str) -> CorruptCheckpointError:
    return CorruptCheckpointError(
        f"{path}: {what}; no real file comes near this limit, so the file is damaged or hostile "
        "and is refused before it is parsed (limits: docs/format.md)",
        path=path,
    )


def _check_header_budget(raw: bytes, path: Any) -> None:
    """Refuse headers over the limits before json parses them (a byte count is cheap; parsing is not).

    Every tensor entry holds exactly one unescaped ``"data_offsets"`` key (inside the
    manifest string the quotes are escaped), so counting it bounds the entries.
    """
    entries = raw.count(b'"data_offsets"')
    if entries > MAX_TENSORS:
        raise _too_large(path, f"the header lists {entries} tensors, over the limit of {MAX_TENSORS}")
    budget = HEADER_BASE_BYTES + HEADER_BYTES_PER_TENSOR * entries
    if len(raw) > budget:
        raise _too_large(
            path, f"the header is {len(raw)} bytes for {entries} tensors, over the limit of {budget} "
            f"({HEADER_BASE_BYTES} + {HEADER_BYTES_PER_TENSOR} per tensor)"
        )


def check_manifest_budget(text: str, tensors: int, path: Any) -> None:
    """Refuse a manifest with more JSON objects and arrays than its tensors explain, before parsing it.

    Counting brackets over-counts (strings may hold them), never under-counts.
    """
    nodes = text.count("{") + text.count("[")
    limit = MANIFEST_BASE_NODES + MANIFEST_NODES_PER_TENSOR * tensors
    if nodes > limit:
        raise _too_large(
            path, f"the manifest holds up to {nodes} tree nodes for {tensors} tensors, over the limit of {limit} "
            f"({MANIFEST_BASE_NODES} + {MANIFEST_NODES_PER_TENSOR} per tensor)"
        )


def _parse_entry(name: str, spec: Any, data_len: int, path: Any) -> RawEntry:
    if len(name) > MAX_NAME_CHARS:
        raise _corrupt(path, f"tensor name of {len(name)} characters exceeds the limit of {MAX_NAME_CHARS}", name[:80])
    if not isinstance(spec, dict):
        raise _corrupt(path, "header entry is not an object", name)
    code, shape, offsets = spec.get("dtype"), spec.get("shape"), spec.get("data_offsets")
    storage = STORAGE_CODES.get(code) if isinstance(code, str) else None
    if storage is None:
        raise _corrupt(path, f"dtype {code!r} is not a safetensors dtype code", name)
    if not (isinstance(shape, list) and len(shape) <= MAX_DIMS and all(type(d) is int and d >= 0 for d in shape)):
        raise _corrupt(path, f"shape {shape!r} is not a list of at most {MAX_DIMS} non-negative integers", name)
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)):
        raise _corrupt(path, f"data_offsets {offsets!r} is not a pair of integers", name)
    begin, end = offsets
    if not 0 <= begin <= end <= data_len:
        raise _corrupt(path, f"data_offsets [{begin}, {end}] lie outside the {data_len}-byte data section", name)
    count = 1
    for d in shape:
        count *= d
    bits = count * storage.header_bits
    if bits % 8 or bits // 8 != end - begin:
        needs = f"{bits // 8} bytes" if bits % 8 == 0 else f"{bits} bits, not a whole number of bytes,"
        raise _corrupt(path, f"dtype {code} x shape {shape} needs {needs} but data_offsets span {end - begin}", name)
    logical = logical_shape(storage, tuple(shape))
    if logical is None:  # packed pairs (F4) that do not split into whole pairs along the last axis
        return RawEntry(name, odd_packing(storage), tuple(shape), begin, end)
    return RawEntry(name, storage, logical, begin, end)


def _check_layout(entries: dict[str, RawEntry], data_len: int, path: Any) -> None:
    position = 0
    for entry in sorted(entries.values(), key=lambda e: (e.begin, e.end)):
        if entry.begin < position:
            raise _corrupt(path, f"data_offsets [{entry.begin}, {entry.end}] overlap another tensor", entry.name)
        if entry.begin > position:
            raise _corrupt(path, f"a gap of {entry.begin - position} unused bytes precedes this tensor", entry.name)
        position = entry.end
    if position != data_len:
        raise _corrupt(path, f"the data section is {data_len} bytes but its tensors cover {position}")


def verify_header_checksum(prefix_and_raw: bytes, path: Any) -> None:
    """Check the header seal written by modelsafe (covers every header byte)."""
    matches = list(_HEADER_CHECKSUM_RE.finditer(prefix_and_raw))
    if len(matches) != 1:
        raise _corrupt(path, "the modelsafe header checksum is missing or ambiguous")
    start, end = matches[0].span(1)
    stored = prefix_and_raw[start:end].decode()
    zeroed = prefix_and_raw[:start] + checksum.PLACEHOLDER.encode() + prefix_and_raw[end:]
    actual = checksum.digest(zeroed)
    if actual != stored:
        raise _corrupt(path, f"header checksum mismatch (stored {stored}, computed {actual})")
