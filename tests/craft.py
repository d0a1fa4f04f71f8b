"""Helpers for tests that take files apart and build (hostile) files by hand."""

from __future__ import annotations

import json
import struct
from typing import Any, Callable

from modelsafe.format import checksum
from modelsafe.format.container import HEADER_CHECKSUM_KEY, MANIFEST_KEY, build_header


def read_parts(path) -> tuple[dict, bytes]:
    """(header JSON object, data section bytes) of a safetensors file."""
    blob = open(path, "rb").read()
    (n,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8 : 8 + n]), blob[8 + n :]


def raw_file(header: Any, data: bytes = b"", *, pad: bool = True) -> bytes:
    """A file from any header (JSON-encoded unless already bytes) and data, unsealed."""
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    if pad:
        text += b" " * (-(len(text) + 8) % 8)
    return struct.pack("<Q", len(text)) + text + data


def sealed_file(header: dict, data: bytes) -> bytes:
    """A file whose header is rebuilt by modelsafe's own builder and sealed with a valid checksum.

    ``header`` is a parsed header (tensor entries plus ``__metadata__``); the manifest
    may be given as a dict under ``__metadata__["modelsafe"]``.
    """
    meta = dict(header.get("__metadata__", {}))
    if isinstance(meta.get(MANIFEST_KEY), dict):
        meta[MANIFEST_KEY] = json.dumps(meta[MANIFEST_KEY], separators=(",", ":"))
    meta[HEADER_CHECKSUM_KEY] = checksum.PLACEHOLDER
    entries = [
        (name, spec["dtype"], spec["shape"], spec["data_offsets"][0], spec["data_offsets"][1])
        for name, spec in header.items()
        if name != "__metadata__"
    ]
    return build_header(entries, meta) + data


def edit_manifest(path, edit: Callable[[dict], Any]) -> None:
    """Rewrite ``path`` with ``edit`` applied to its manifest, re-sealed as a valid file."""
    header, data = read_parts(path)
    manifest = json.loads(header["__metadata__"][MANIFEST_KEY])
    edit(manifest)
    header["__metadata__"][MANIFEST_KEY] = manifest
    with open(path, "wb") as f:
        f.write(sealed_file(header, data))


def manifest_of(path) -> dict:
    header, _ = read_parts(path)
    return json.loads(header["__metadata__"][MANIFEST_KEY])


def replace_tree_node(path, tree: Any, where: tuple, value: Any) -> None:
    """Rewrite ``path`` (resealed) with the manifest tree's node at index path ``where`` set to ``value``."""
    import copy

    def edit(manifest: dict) -> None:
        new = copy.deepcopy(tree)
        node = new
        for part in where[:-1]:
            node = node[part]
        node[where[-1]] = value
        manifest["tree"] = new

    edit_manifest(path, edit)
