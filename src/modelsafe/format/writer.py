"""Write one flattened tree as a single safetensors-compatible file, streaming.

Tensors are laid out by falling element size so each one is naturally aligned
(zero-copy views on load), written straight from the tensor's memory (no
whole-file copy), hashed as they go, and the header — fixed-width checksums
included — is rewritten in place once every checksum is known.
"""

from __future__ import annotations

import json
import os
from typing import Any, BinaryIO

from ..errors import ModelsafeError, UnsupportedObjectError
from . import checksum, manifest as manifest_mod
from .container import HEADER_CHECKSUM_KEY, MANIFEST_KEY, build_header
from .dtypes import BY_NAME

_FORMAT_TAGS = {"torch": "pt", "numpy": "np", "tensorflow": "tf", "jax": "flax", "mxnet": "mx"}


def plan_layout(leaves: list) -> list[tuple[Any, int, int]]:
    """(leaf, begin, end) in file order: larger element sizes first, so every offset is aligned."""
    ordered = sorted(leaves, key=lambda leaf: -BY_NAME[leaf.info.dtype].itemsize)
    position = 0
    layout = []
    for leaf in ordered:
        size = leaf.nbytes
        layout.append((leaf, position, position + size))
        position += size
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
        shape = [end - begin] if dt.stored_as_bytes else list(leaf.info.shape)
        entries.append((leaf.name, dt.storage, shape, begin, end))
    return build_header(entries, _header_metadata(manifest, user_metadata))


def write_file(f: BinaryIO, fl: Any, *, metadata_node: Any = None, user_metadata: Any = None) -> int:
    """Write flattened tree ``fl`` to the open binary file ``f`` (at offset 0); returns bytes written."""
    layout = plan_layout(fl.leaves)
    header = _header(layout, fl, metadata_node, user_metadata, {})
    f.write(header)
    checksums: dict[str, str] = {}
    for leaf, begin, end in layout:
        try:
            data = leaf.host_bytes()
        except ModelsafeError:
            raise
        except Exception as exc:
            raise UnsupportedObjectError(f"cannot read the bytes of {leaf.path}: {exc}", key=leaf.path) from exc
        if data.nbytes != end - begin:
            raise UnsupportedObjectError(
                f"{leaf.path} changed size while it was being saved ({end - begin} bytes expected, {data.nbytes} found); "
                "do not modify tensors during ms.save",
                key=leaf.path,
            )
        checksums[leaf.name] = checksum.digest(data)
        f.write(data)
    final = _header(layout, fl, metadata_node, user_metadata, checksums)
    if len(final) != len(header):  # pragma: no cover - fixed-width checksums make this impossible
        raise ModelsafeError("internal error: header length changed while writing")
    f.flush()
    os.pwrite(f.fileno(), final, 0)
    return len(header) + (layout[-1][2] if layout else 0)
