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
from typing import Any, BinaryIO, Callable, Sequence

from ..adapters import format_tag
from ..errors import ModelsafeError, UnsupportedObjectError
from ..gc_pause import gc_paused
from . import checksum, manifest as manifest_mod
from .container import HEADER_ALIGN, HEADER_CHECKSUM_KEY, MANIFEST_KEY, build_header, reseal
from .dtypes import BY_NAME, header_shape
from .plan import FlatState, Payload

_ITEMSIZE = {name: dt.itemsize for name, dt in BY_NAME.items()}

LARGE_PAYLOAD_BYTES = 1 << 20  # written on their own; smaller ones are gathered into one writev
# how a checksum token is preceded inside the header: the manifest is a JSON string there
_TOKEN_CONTEXT = b'\\"xxh3\\":\\"'


def payload_size(payload: Payload) -> int:
    return _ITEMSIZE[payload.dtype] * math.prod(payload.shape)


DATA_ALIGN = HEADER_ALIGN
Layout = list[tuple[Payload, int, int]]
# Called with the number of payload bytes just written (progress bars); None: nobody listens.
OnBytes = Callable[[int], None] | None


def plan_layout(payloads: Sequence[Payload]) -> Layout:
    """(payload, begin, end) in file order.

    Payloads whose size is a multiple of DATA_ALIGN come first, so each of them starts
    DATA_ALIGN-aligned (the data section itself is); the rest follow by falling element
    size, so each is at least naturally aligned.  Aligned memory matters beyond speed:
    vectorised torch reductions sum in a different order on misaligned data.
    """
    ordered = sorted(payloads, key=lambda p: (payload_size(p) % DATA_ALIGN != 0, -_ITEMSIZE[p.dtype]))
    position = 0
    layout = []
    for payload in ordered:
        end = position + payload_size(payload)
        layout.append((payload, position, end))
        position = end
    return layout


def _string_items(user_metadata: object) -> dict[str, str]:
    """The str -> str entries of ``user_metadata`` a safetensors header can show (none under modelsafe's keys)."""
    if not isinstance(user_metadata, dict):
        return {}
    return {k: v for k, v in user_metadata.items() if isinstance(k, str) and isinstance(v, str) and not k.startswith("modelsafe")}


def _header_metadata(manifest: dict, user_metadata: object) -> dict[str, str]:
    meta: dict[str, str] = {}
    tag = format_tag(manifest.get("framework"))
    if tag:
        meta["format"] = tag  # what transformers and other safetensors users look for
    meta.update(_string_items(user_metadata))
    meta[MANIFEST_KEY] = json.dumps(manifest, separators=(",", ":"), allow_nan=False)
    meta[HEADER_CHECKSUM_KEY] = checksum.PLACEHOLDER
    return meta


def _entries(layout: Layout) -> list[tuple[str, str, list[int], int, int]]:
    entries = []
    for payload, begin, end in layout:
        dt = BY_NAME[payload.dtype]
        entries.append((payload.name, dt.storage, header_shape(dt, payload.shape), begin, end))
    return entries


def _header(layout: Layout, state: FlatState, metadata_node: object, user_metadata: object, checksums: dict) -> bytes:
    manifest = manifest_mod.build(state, [p for p, _, _ in layout], metadata_node, checksums)
    return build_header(_entries(layout), _header_metadata(manifest, user_metadata))


def _plain_header(layout: Layout, state: FlatState, user_metadata: object) -> bytes:
    """A plain safetensors header: tied names map to the stored one (as ``safetensors.torch.save_model``
    records them), then the caller's string metadata (``format``: the framework's tag)."""
    meta = dict(state.aliases)
    meta.update(_string_items(user_metadata))
    return build_header(_entries(layout), meta)


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


def _payload(payload: Payload, size: int) -> memoryview:
    try:
        data = payload.host_bytes()
    except ModelsafeError:
        raise
    except Exception as exc:
        raise UnsupportedObjectError(f"cannot read the bytes of {payload.path}: {exc}", key=payload.path) from exc
    if data.nbytes != size:
        raise UnsupportedObjectError(
            f"{payload.path} changed size while it was being saved ({size} bytes expected, {data.nbytes} found); "
            "do not modify tensors during ms.save",
            key=payload.path,
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


def _write_payloads(f: BinaryIO, layout: Layout, payloads: list | None = None, *, hashing: bool = True,
                    on_bytes: OnBytes = None) -> list[str]:
    """Write every payload in layout order; return their checksums in the same order.

    Each payload is hashed just before it is written, while its bytes are in cache, unless
    its checksum is known already (a copy of a verified payload) or ``hashing`` is off
    (plain safetensors files hold no checksums).  (Hashing on a second thread was tried:
    xxh3 runs at ~25 GB/s, far faster than the disk, and the extra thread made saves
    slower and less steady on a loaded machine.)
    ``payloads``: bytes already read and hashed (:func:`hash_payloads`): written, not hashed again.
    """
    checksums: list[str] = []
    small = _SmallBatch(f)
    for index, (payload, begin, end) in enumerate(layout):
        data = _payload(payload, end - begin) if payloads is None else payloads[index]
        if payloads is None and hashing:
            checksums.append(payload.checksum or checksum.digest(data))
        if end - begin >= LARGE_PAYLOAD_BYTES:
            small.flush()
            f.write(data)
        else:
            small.add(data)
        if on_bytes is not None:
            on_bytes(end - begin)
    small.flush()
    return checksums


def write_file(
    f: BinaryIO, state: FlatState, *, metadata_node: object = None, user_metadata: object = None,
    checksums_out: dict | None = None, header_out: list | None = None, on_bytes: OnBytes = None,
) -> int:
    """Write flattened ``state`` to the open binary file ``f`` (at offset 0); returns bytes written.

    ``checksums_out``, when given, receives payload name -> xxh3 (checkpoint shards use it);
    ``header_out`` gets the final header appended (the same bytes :func:`hash_payloads` builds);
    ``on_bytes`` is called with each payload's size once it is written (progress bars).
    """
    with gc_paused():
        layout = plan_layout(state.payloads)
        tokens = _placeholder_tokens(len(layout))
        header = _header(layout, state, metadata_node, user_metadata, {p.name: t for (p, _, _), t in zip(layout, tokens)})
    _reserve(f, len(header) + (layout[-1][2] if layout else 0))
    f.write(header)
    checksums = _write_payloads(f, layout, on_bytes=on_bytes)
    if checksums_out is not None:
        checksums_out.update(zip((p.name for p, _, _ in layout), checksums))
    with gc_paused():
        final = _patch_checksums(header, tokens, checksums)
    if len(final) != len(header):  # pragma: no cover - fixed-width checksums make this impossible
        raise ModelsafeError("internal error: header length changed while writing")
    f.flush()
    os.pwrite(f.fileno(), final, 0)
    if header_out is not None:
        header_out.append(final)
    return len(header) + (layout[-1][2] if layout else 0)


def write_plain_file(f: BinaryIO, state: FlatState, *, user_metadata: object = None, on_bytes: OnBytes = None) -> int:
    """Write ``state``'s payloads as a plain safetensors file for other tools; returns bytes written.

    No modelsafe manifest and no checksums: the header lists the tensors (laid out as
    :func:`write_file` lays them out), ``state.aliases`` as metadata (tied name -> stored
    name), then string ``user_metadata`` (``{"format": "pt"}`` and the like).  The
    skeleton is not written.
    """
    layout = plan_layout(state.payloads)
    header = _plain_header(layout, state, user_metadata)
    size = len(header) + (layout[-1][2] if layout else 0)
    _reserve(f, size)
    f.write(header)
    _write_payloads(f, layout, hashing=False, on_bytes=on_bytes)
    f.flush()
    return size


def _reserve(f: BinaryIO, size: int) -> None:
    reserve = getattr(f, "reserve", None)  # files from atomic_file allocate their size up front
    if reserve is not None:
        reserve(size)


@dataclass(frozen=True)
class HashedFile:
    """A flattened tree read and hashed but not yet written: its final header, bytes and checksums.

    Two trees with the same header hold the same names, dtypes, shapes and payload
    checksums, so checkpoint shards use the header's digest (``identity``) to find an
    equal file written before (deduplication) instead of writing the bytes again.
    """

    header: bytes
    layout: Layout
    payloads: list
    checksums: dict

    @property
    def size(self) -> int:
        return len(self.header) + (self.layout[-1][2] if self.layout else 0)

    @property
    def identity(self) -> str:
        return checksum.digest(self.header)


def hash_payloads(state: FlatState, *, metadata_node: Any = None, user_metadata: Any = None) -> HashedFile:
    """Read and hash every payload of flattened ``state`` once; :func:`write_hashed` writes it
    front to back (no seek back to patch the header: what a streamed upload needs)."""
    with gc_paused():
        layout = plan_layout(state.payloads)
    payloads = [_payload(p, end - begin) for p, begin, end in layout]
    checksums = {p.name: p.checksum or checksum.digest(data) for (p, _, _), data in zip(layout, payloads)}
    with gc_paused():
        header = _header(layout, state, metadata_node, user_metadata, checksums)
    return HashedFile(header, layout, payloads, checksums)


def write_hashed(f: BinaryIO, hashed: HashedFile, *, on_bytes: OnBytes = None) -> int:
    """Write ``hashed`` to the open binary file ``f`` (at offset 0); returns bytes written."""
    _reserve(f, hashed.size)
    f.write(hashed.header)
    _write_payloads(f, hashed.layout, hashed.payloads, on_bytes=on_bytes)
    f.flush()
    return hashed.size
