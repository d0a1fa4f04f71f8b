"""Write one flattened tree as a single safetensors-compatible file, streaming.

Tensors are laid out by falling element size so each one is naturally aligned
(zero-copy views on load) and written straight from the tensor's memory (no
whole-file copy), each hashed right before it is written.

The file's size is reserved up front where the file allows it.  The header is built
once, with a random 16-hex-digit token in place of each checksum, and written first.
Once every payload is written its checksums are patched over the tokens (checksums
are fixed-width, so no offset moves), the header seal is recomputed and the header
is rewritten in place.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Any, BinaryIO

from ..errors import ModelsafeError, UnsupportedObjectError
from ..gc_pause import gc_paused
from . import checksum, manifest as manifest_mod
from .container import HEADER_ALIGN, HEADER_CHECKSUM_KEY, MANIFEST_KEY, build_header, reseal
from .dtypes import BY_NAME, header_shape

_FORMAT_TAGS = {"torch": "pt", "numpy": "np", "tensorflow": "tf", "jax": "flax", "mxnet": "mx"}
_ITEMSIZE = {name: dt.itemsize for name, dt in BY_NAME.items()}

LARGE_PAYLOAD_BYTES = 1 << 20  # written on their own; smaller ones are gathered into one writev
# how a checksum token is preceded inside the header: the manifest is a JSON string there
_TOKEN_CONTEXT = b'\\"xxh3\\":\\"'


def payload_size(leaf: Any) -> int:
    return _ITEMSIZE[leaf.info.dtype] * math.prod(leaf.info.shape)


DATA_ALIGN = HEADER_ALIGN


def plan_layout(leaves: list) -> list[tuple[Any, int, int]]:
    """(leaf, begin, end) in file order.

    Payloads whose size is a multiple of DATA_ALIGN come first, so each of them starts
    DATA_ALIGN-aligned (the data section itself is); the rest follow by falling element
    size, so each is at least naturally aligned.  Aligned memory matters beyond speed:
    vectorised torch reductions sum in a different order on misaligned data.
    """
    ordered = sorted(leaves, key=lambda leaf: (payload_size(leaf) % DATA_ALIGN != 0, -_ITEMSIZE[leaf.info.dtype]))
    position = 0
    layout = []
    for leaf in ordered:
        end = position + payload_size(leaf)
        layout.append((leaf, position, end))
        position = end
    return layout


def _header_metadata(manifest: dict, user_metadata: Any) -> dict[str, str]:
    meta: dict[str, str] = {}
    tag = _FORMAT_TAGS.get(manifest.get("framework") or "")
    if tag:
        meta["format"] = tag  # what transformers and other safetensors users look for
    if isinstance(user_metadata, dict):
        for key, value in user_metadata.items():
            if isinstance(key, str) and isinstance(value, str) and not key.startswith("modelsafe"):
                meta[key] = value
    meta[MANIFEST_KEY] = json.dumps(manifest, separators=(",", ":"), allow_nan=False)
    meta[HEADER_CHECKSUM_KEY] = checksum.PLACEHOLDER
    return meta


def _header(layout, fl, metadata_node, user_metadata, checksums) -> bytes:
    manifest = manifest_mod.build(fl.skeleton, [leaf for leaf, _, _ in layout], fl.aliases, metadata_node, checksums)
    entries = []
    for leaf, begin, end in layout:
        dt = BY_NAME[leaf.info.dtype]
        entries.append((leaf.name, dt.storage, header_shape(dt, leaf.info.shape), begin, end))
    return build_header(entries, _header_metadata(manifest, user_metadata))


def _placeholder_tokens(count: int) -> list[str]:
    """Distinct random 16-hex-digit stand-ins for checksums, one per payload."""
    while True:
        text = os.urandom(8 * count).hex()
        tokens = [text[i : i + 16] for i in range(0, 16 * count, 16)]
        if len(set(tokens)) == count:
            return tokens


def _patch_checksums(header: bytes, tokens: list[str], checksums: list[str]) -> bytes:
    """``header`` with each token replaced by its checksum and the seal recomputed.

    Tokens appear in the manifest in payload order, each right after ``"xxh3":"``; they
    are 64 random bits each, so nothing else in the header can look like one.
    """
    out = bytearray(header)
    position = 0
    context = len(_TOKEN_CONTEXT)
    find, startswith = header.find, header.startswith
    for token, value in zip(tokens, checksums):
        position = find(token.encode("ascii"), position)
        if position < context or not startswith(_TOKEN_CONTEXT, position - context):
            raise ModelsafeError("internal error: a checksum placeholder is missing from the header")
        out[position : position + 16] = value.encode("ascii")
        position += 16
    return reseal(bytes(out))


def _payload(leaf: Any, size: int) -> memoryview:
    try:
        data = leaf.host_bytes()
    except ModelsafeError:
        raise
    except Exception as exc:
        raise UnsupportedObjectError(f"cannot read the bytes of {leaf.path}: {exc}", key=leaf.path) from exc
    if data.nbytes != size:
        raise UnsupportedObjectError(
            f"{leaf.path} changed size while it was being saved ({size} bytes expected, {data.nbytes} found); "
            "do not modify tensors during ms.save",
            key=leaf.path,
        )
    return data


class _SmallBatch:
    """Small payloads collected and written together by one ``write_many`` (writev) call, uncopied."""

    LIMIT_COUNT = 1024
    LIMIT_BYTES = 4 << 20

    def __init__(self, f: BinaryIO) -> None:
        self._write_many = getattr(f, "write_many", None)
        self._write = f.write
        self._views: list = []
        self._bytes = 0

    def add(self, data: memoryview) -> None:
        if self._write_many is None:
            self._write(data)
            return
        self._views.append(data)
        self._bytes += data.nbytes
        if len(self._views) >= self.LIMIT_COUNT or self._bytes >= self.LIMIT_BYTES:
            self.flush()

    def flush(self) -> None:
        if self._views:
            self._write_many(self._views)
            self._views, self._bytes = [], 0


def _write_payloads(f: BinaryIO, layout: list[tuple[Any, int, int]], payloads: list | None = None) -> list[str]:
    """Write every payload in layout order; return their checksums in the same order.

    Each payload is hashed just before it is written, while its bytes are in cache.
    (Hashing on a second thread was tried: xxh3 runs at ~25 GB/s, far faster than the
    disk, and the extra thread made saves slower and less steady on a loaded machine.)
    ``payloads``: bytes already read and hashed (:func:`hash_payloads`): written, not hashed again.
    """
    checksums: list[str] = []
    small = _SmallBatch(f)
    for index, (leaf, begin, end) in enumerate(layout):
        data = _payload(leaf, end - begin) if payloads is None else payloads[index]
        if payloads is None:
            checksums.append(checksum.digest(data))
        if end - begin >= LARGE_PAYLOAD_BYTES:
            small.flush()
            f.write(data)
        else:
            small.add(data)
    small.flush()
    return checksums


def write_file(
    f: BinaryIO, fl: Any, *, metadata_node: Any = None, user_metadata: Any = None, checksums_out: dict | None = None,
    header_out: list | None = None,
) -> int:
    """Write flattened tree ``fl`` to the open binary file ``f`` (at offset 0); returns bytes written.

    ``checksums_out``, when given, receives payload name -> xxh3 (checkpoint shards use it);
    ``header_out`` gets the final header appended (the same bytes :func:`hash_payloads` builds).
    """
    with gc_paused():
        layout = plan_layout(fl.leaves)
        tokens = _placeholder_tokens(len(layout))
        header = _header(layout, fl, metadata_node, user_metadata, {leaf.name: t for (leaf, _, _), t in zip(layout, tokens)})
    reserve = getattr(f, "reserve", None)  # files from atomic_file allocate their size up front
    if reserve is not None:
        reserve(len(header) + (layout[-1][2] if layout else 0))
    f.write(header)
    checksums = _write_payloads(f, layout)
    if checksums_out is not None:
        checksums_out.update(zip((leaf.name for leaf, _, _ in layout), checksums))
    with gc_paused():
        final = _patch_checksums(header, tokens, checksums)
    if len(final) != len(header):  # pragma: no cover - fixed-width checksums make this impossible
        raise ModelsafeError("internal error: header length changed while writing")
    f.flush()
    os.pwrite(f.fileno(), final, 0)
    if header_out is not None:
        header_out.append(final)
    return len(header) + (layout[-1][2] if layout else 0)


@dataclass(frozen=True)
class HashedFile:
    """A flattened tree read and hashed but not yet written: its final header, bytes and checksums.

    Two trees with the same header hold the same names, dtypes, shapes and payload
    checksums, so checkpoint shards use the header's digest (``identity``) to find an
    equal file written before (deduplication) instead of writing the bytes again.
    """

    header: bytes
    layout: list
    payloads: list
    checksums: dict

    @property
    def size(self) -> int:
        return len(self.header) + (self.layout[-1][2] if self.layout else 0)

    @property
    def identity(self) -> str:
        return checksum.digest(self.header)


def hash_payloads(fl: Any, *, metadata_node: Any = None, user_metadata: Any = None) -> HashedFile:
    """Read and hash every payload of flattened tree ``fl`` once; :func:`write_hashed` writes it
    front to back (no seek back to patch the header: what a streamed upload needs)."""
    with gc_paused():
        layout = plan_layout(fl.leaves)
    payloads = [_payload(leaf, end - begin) for leaf, begin, end in layout]
    checksums = {leaf.name: checksum.digest(data) for (leaf, _, _), data in zip(layout, payloads)}
    with gc_paused():
        header = _header(layout, fl, metadata_node, user_metadata, checksums)
    return HashedFile(header, layout, payloads, checksums)


def write_hashed(f: BinaryIO, hashed: HashedFile) -> int:
    """Write ``hashed`` to the open binary file ``f`` (at offset 0); returns bytes written."""
    reserve = getattr(f, "reserve", None)
    if reserve is not None:
        reserve(hashed.size)
    f.write(hashed.header)
    _write_payloads(f, hashed.layout, hashed.payloads)
    f.flush()
    return hashed.size
