"""The modelsafe manifest: tree skeleton, per-tensor checksums and types, metadata, versions.

In a single file it is a JSON string stored under ``__metadata__["modelsafe"]``;
in a checkpoint directory it is ``manifest.json``.  See docs/format.md.
"""

from __future__ import annotations

import platform
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from .._version import __version__
from ..errors import CorruptCheckpointError, NewerFormatError
from . import checksum
from .container import RawEntry
from .dtypes import BY_NAME, DType

FORMAT_VERSION = (1, 0)
_HEX16 = re.compile(r"[0-9a-f]{16}\Z")
KINDS = ("tensor", "bytes", "pickle")


@dataclass
class TensorRecord:
    """Everything a reader needs to turn one stored payload back into an object."""

    name: str
    kind: str                 # "tensor" | "bytes" | "pickle"
    dtype: DType              # logical dtype
    shape: tuple[int, ...]    # logical shape
    begin: int
    end: int
    checksum: str | None      # None for foreign safetensors files
    framework: str | None = None
    attrs: dict[str, Any] = field(default_factory=dict)
    file: str | None = None   # shard file, for checkpoint directories

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


def framework_versions(frameworks: set[str]) -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in sorted(frameworks):
        module = sys.modules.get(name)
        version = getattr(module, "__version__", None)
        if version:
            versions[name] = str(version)
    return versions


def build(skeleton: Any, leaves: list, aliases: dict[str, str], metadata: Any, checksums: dict[str, str]) -> dict:
    """The manifest for ``leaves``; missing checksums are written as placeholders."""
    frameworks = Counter(leaf.adapter.framework for leaf in leaves if leaf.adapter is not None)
    default_framework = frameworks.most_common(1)[0][0] if frameworks else None
    tensors: dict[str, dict[str, Any]] = {}
    for leaf in leaves:
        entry: dict[str, Any] = {"xxh3": checksums.get(leaf.name, checksum.PLACEHOLDER)}
        if leaf.kind != "tensor":
            entry["kind"] = leaf.kind
        else:
            if leaf.adapter.framework != default_framework:
                entry["framework"] = leaf.adapter.framework
            if leaf.info.attrs:
                entry["attrs"] = leaf.info.attrs
            if BY_NAME[leaf.info.dtype].stored_as_bytes:
                entry["dtype"] = leaf.info.dtype
                entry["shape"] = list(leaf.info.shape)
        tensors[leaf.name] = entry
    manifest: dict[str, Any] = {
        "format_version": list(FORMAT_VERSION),
        "writer": f"modelsafe {__version__}",
        "framework": default_framework,
        "tree": skeleton,
        "tensors": tensors,
    }
    if aliases:
        manifest["aliases"] = aliases
    if metadata is not None:
        manifest["metadata"] = metadata
    manifest["versions"] = framework_versions(set(frameworks))
    return manifest


def _corrupt(path: Any, what: str, key: str | None = None) -> CorruptCheckpointError:
    where = f"{path}: tensor {key!r}: " if key is not None else f"{path}: "
    return CorruptCheckpointError(
        f"{where}{what}; the modelsafe manifest is damaged. Restore the file from a backup or save it again",
        path=path, key=key,
    )


def check_version(manifest: Any, path: Any) -> None:
    if not isinstance(manifest, dict):
        raise _corrupt(path, "manifest is not a JSON object")
    version = manifest.get("format_version")
    if not (isinstance(version, list) and len(version) == 2 and all(type(v) is int for v in version)):
        raise _corrupt(path, f"format_version {version!r} is not [major, minor]")
    if version[0] > FORMAT_VERSION[0]:
        writer = manifest.get("writer", "a newer modelsafe")
        raise NewerFormatError(
            f"{path}: written by {writer} in format {version[0]}.{version[1]}; this is modelsafe {__version__}, "
            f"which reads format {FORMAT_VERSION[0]}.x only. Upgrade: pip install -U modelsafe "
            f"(a release that reads format {version[0]})",
            path=path,
        )
    if version[0] < 1:
        raise _corrupt(path, f"format_version {version!r} is not a released format")


def records(manifest: dict, entries: dict[str, RawEntry], path: Any, file: str | None = None) -> dict[str, TensorRecord]:
    """Cross-check manifest tensors against header entries and return one record per payload."""
    tensors = manifest.get("tensors")
    if not isinstance(tensors, dict):
        raise _corrupt(path, "manifest has no 'tensors' object")
    if len(tensors) != len(entries) or tensors.keys() != entries.keys():
        missing = sorted(set(entries) - set(tensors))[:3]
        extra = sorted(set(tensors) - set(entries))[:3]
        raise _corrupt(path, f"header and manifest list different tensors (only in header: {missing}, only in manifest: {extra})")
    default_framework = manifest.get("framework")
    out: dict[str, TensorRecord] = {}
    for name, raw in entries.items():
        spec = tensors[name]
        if not isinstance(spec, dict):
            raise _corrupt(path, "manifest entry is not an object", name)
        digest = spec.get("xxh3")
        if not (isinstance(digest, str) and _HEX16.match(digest)):
            raise _corrupt(path, f"checksum {digest!r} is not 16 hex digits", name)
        kind = spec.get("kind", "tensor")
        if kind not in KINDS:
            raise _corrupt(path, f"unknown payload kind {kind!r}", name)
        attrs = spec.get("attrs", {})
        framework = spec.get("framework", default_framework)
        if not isinstance(attrs, dict) or (kind == "tensor" and not isinstance(framework, str)):
            raise _corrupt(path, "attrs must be an object and framework a string", name)
        dtype, shape = raw.storage, raw.shape
        if "dtype" in spec:
            dtype = BY_NAME.get(spec["dtype"]) if isinstance(spec["dtype"], str) else None
            shape = spec.get("shape")
            if dtype is None:
                raise _corrupt(path, f"unknown dtype {spec['dtype']!r}", name)
            if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)):
                raise _corrupt(path, f"shape {shape!r} is not a list of non-negative integers", name)
            count = 1
            for d in shape:
                count *= d
            if count * dtype.itemsize != raw.nbytes or (raw.storage.name != dtype.name and raw.storage.name != "uint8"):
                raise _corrupt(path, f"dtype {dtype.name} x shape {shape} does not match the {raw.nbytes} stored bytes", name)
            shape = tuple(shape)
        out[name] = TensorRecord(name, kind, dtype, shape, raw.begin, raw.end, digest, framework, attrs, file)
    aliases = manifest.get("aliases", {})
    if not isinstance(aliases, dict) or not all(isinstance(t, str) and t in out for t in aliases.values()):
        raise _corrupt(path, "aliases must map names to stored tensors")
    return out


def foreign_records(entries: dict[str, RawEntry], default_framework: str) -> dict[str, TensorRecord]:
    """Records for a plain safetensors file (no manifest, no checksums)."""
    return {
        name: TensorRecord(name, "tensor", raw.storage, raw.shape, raw.begin, raw.end, None, default_framework)
        for name, raw in entries.items()
    }


def foreign_manifest(entries: dict[str, RawEntry], metadata: dict[str, str]) -> dict:
    """A manifest equivalent to a plain safetensors file: a flat dict of its tensors."""
    return {
        "format_version": list(FORMAT_VERSION),
        "writer": None,
        "tree": {"dict": [[name, {"tensor": name}] for name in entries]},
        "tensors": {},
        "metadata": {"dict": [[k, v] for k, v in metadata.items()]} if metadata else None,
    }
