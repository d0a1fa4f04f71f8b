"""The modelsafe manifest: tree skeleton, per-tensor checksums and types, metadata, versions.

In a single file it is a JSON string stored under ``__metadata__["modelsafe"]``;
in a checkpoint directory it is ``manifest.json``.  See docs/format.md.
"""

from __future__ import annotations

import math
import platform
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Sequence

from .._version import __version__
from ..errors import CorruptCheckpointError, NewerFormatError
from . import checksum
from .container import RawEntry
from .dtypes import BY_NAME, DType, header_shape, logical_shape
from .plan import FlatState, Payload

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


def needs_logical_entry(dtype: DType, shape: tuple[int, ...]) -> bool:
    """True when the header's code and shape do not say ``dtype`` x ``shape``: the manifest entry does."""
    return dtype.stored_as_bytes or logical_shape(dtype, tuple(header_shape(dtype, shape))) != shape


def _contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides, step = [], 1
    for d in reversed(shape):
        strides.append(step)
        step *= d
    return tuple(reversed(strides))


def _extent(offset: int, shape: Any, strides: Any) -> int:
    """One past the last element a view of ``shape`` and ``strides`` at ``offset`` reads (non-empty views)."""
    return offset + sum((d - 1) * s for d, s in zip(shape, strides)) + 1


def _shares_as_view(payload: Payload) -> bool:
    """A tensor whose memory relation survives a load: no gradient state that a view would change."""
    return not ({"parameter", "requires_grad"} & payload.attrs.keys())


def _byte_span(payload: Payload) -> tuple[int, int]:
    offset, strides = payload.view
    size = BY_NAME[payload.dtype].itemsize
    return offset * size, _extent(offset, payload.shape, strides) * size


def _overlapping(group: list[Payload]) -> list[list[Payload]]:
    """``group`` (tensors over one memory) split into clusters whose byte spans overlap."""
    clusters: list[list] = []
    end = -1
    for leaf in sorted(group, key=_byte_span):
        begin, stop = _byte_span(leaf)
        if begin < end:
            clusters[-1].append(leaf)
        else:
            clusters.append([leaf])
        end = max(end, stop)
    return [c for c in clusters if len(c) > 1]


def plan_views(payloads: Sequence[Payload]) -> tuple[dict[str, dict], list[str]]:
    """(views, copied): how tensors that view one memory come back shared.

    Tensors whose spans of one memory overlap form a cluster.  Its largest contiguous
    tensor is the base; a tensor of the same dtype whose elements all lie inside it is
    recorded as ``{"of": base, "offset": elements, "strides": [...]}`` and rebuilt as a
    view of the base on load (its bytes are still stored, so plain readers see it).
    The other members of a cluster are ``copied``: they load unshared.  Disjoint
    slices of one buffer share nothing a load could lose.
    """
    groups: dict[Any, list] = {}
    for payload in payloads:
        if payload.kind == "tensor" and payload.storage is not None and payload.view is not None:
            groups.setdefault(payload.storage, []).append(payload)
    views: dict[str, dict] = {}
    copied: list[str] = []
    for group in groups.values():
        for cluster in _overlapping(group) if len(group) > 1 else ():
            shared = _plan_cluster(cluster, views)
            copied.extend(l.name for l in cluster if l.name not in shared)
    return views, copied


def _plan_cluster(cluster: list[Payload], views: dict[str, dict]) -> set[str]:
    """Record the views of ``cluster`` in ``views``; return the names that come back shared."""
    bases = [p for p in cluster if _shares_as_view(p) and p.view[1] == _contiguous_strides(p.shape)]
    base = max(bases, key=lambda p: math.prod(p.shape), default=None)
    shared: set[str] = set()
    for p in cluster:
        if base is None or p is base or not _shares_as_view(p) or p.dtype != base.dtype:
            continue
        offset, strides = p.view[0] - base.view[0], p.view[1]
        if offset >= 0 and _extent(offset, p.shape, strides) <= math.prod(base.shape):
            views[p.name] = {"of": base.name, "offset": offset, "strides": list(strides)}
            shared.update((p.name, base.name))
    return shared


def framework_versions(frameworks: set[str]) -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in sorted(frameworks):
        module = sys.modules.get(name)
        version = getattr(module, "__version__", None)
        if version:
            versions[name] = str(version)
    return versions


def build(state: FlatState | None, payloads: Sequence[Payload], metadata: Any, checksums: dict[str, str]) -> dict:
    """The manifest of ``state`` holding ``payloads`` (in file order); missing checksums are written as placeholders."""
    frameworks = Counter(p.framework for p in payloads if p.framework is not None)
    default_framework = frameworks.most_common(1)[0][0] if frameworks else None
    tensors: dict[str, dict[str, Any]] = {}
    for p in payloads:
        entry: dict[str, Any] = {"xxh3": checksums.get(p.name, checksum.PLACEHOLDER)}
        if p.kind != "tensor":
            entry["kind"] = p.kind
        else:
            if p.framework != default_framework:
                entry["framework"] = p.framework
            if p.attrs:
                entry["attrs"] = dict(p.attrs)
            if needs_logical_entry(BY_NAME[p.dtype], p.shape):
                entry["dtype"] = p.dtype
                entry["shape"] = list(p.shape)
        tensors[p.name] = entry
    manifest: dict[str, Any] = {
        "format_version": list(FORMAT_VERSION),
        "writer": f"modelsafe {__version__}",
        "framework": default_framework,
        "tree": state.skeleton if state is not None else None,
        "tensors": tensors,
    }
    if state is not None and state.aliases:
        manifest["aliases"] = dict(state.aliases)
    views, copied = plan_views(payloads)
    if views:
        manifest["views"] = views
    if copied:
        manifest["copied_views"] = copied
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
        if kind == "tensor" and not isinstance(framework, str):
            raise _corrupt(path, "framework must be a string", name)
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
        check_attrs(attrs, dtype, shape, path, name)
        out[name] = TensorRecord(name, kind, dtype, shape, raw.begin, raw.end, digest, framework, attrs, file)
    check_aliases(manifest.get("aliases"), out, path)
    copied = manifest.get("copied_views", [])
    if not (isinstance(copied, list) and all(isinstance(v, str) and v in out for v in copied)):
        raise _corrupt(path, "copied_views must list stored tensor names")
    check_views(manifest.get("views"), out, path)
    return out


# Tensor attrs a reader acts on, with the one type each value may have.  Every attr is
# checked here, before any adapter sees it: a file cannot hand torch a value it was not
# meant to take (a device that imports a module, requires_grad on an integer tensor).
ATTR_TYPES: dict[str, type] = {"parameter": bool, "requires_grad": bool, "scalar": bool, "device": str, "variant": str,
                               "variable": bool, "trainable": bool}  # the last two: tf.Variable
# "variant": which of a framework's array types the tensor was (MXNet's "np" for mx.np.ndarray); a short name
_VARIANT = re.compile(r"[a-z][a-z0-9_]{0,31}\Z")
# a device is only a hint (the caller's map_location decides), but it must look like one
_DEVICE = re.compile(r"[a-z][a-z0-9_]{0,31}(:[0-9]{1,4})?\Z")
_GRADIENT_DTYPES = ("float", "bfloat", "complex")


def check_attrs(attrs: Any, dtype: DType, shape: tuple[int, ...], path: Any, name: str) -> None:
    """Refuse tensor ``attrs`` that are not exactly what modelsafe writes (types, values, combinations)."""
    if not isinstance(attrs, dict):
        raise _corrupt(path, "attrs must be an object", name)
    for key, value in attrs.items():
        expected = ATTR_TYPES.get(key)
        if expected is None:
            raise _corrupt(path, f"unknown tensor attr {key!r} (known: {', '.join(ATTR_TYPES)})", name)
        if type(value) is not expected:
            raise _corrupt(path, f"attr {key!r} is {value!r}, not a {expected.__name__}", name)
    device = attrs.get("device")
    if device is not None and not _DEVICE.match(device):
        raise _corrupt(path, f"attr 'device' {device[:40]!r} is not a device name such as 'cuda:0'", name)
    variant = attrs.get("variant")
    if variant is not None and not _VARIANT.match(variant):
        raise _corrupt(path, f"attr 'variant' {variant[:40]!r} is not a short lower-case name", name)
    wants_grad = attrs.get("requires_grad", attrs.get("parameter", False))
    if wants_grad and not dtype.name.startswith(_GRADIENT_DTYPES):
        raise _corrupt(path, f"a {dtype.name} tensor cannot require gradients (only floating and complex ones can)", name)
    if attrs.get("scalar") and shape != ():
        raise _corrupt(path, f"attr 'scalar' is set on a tensor of shape {list(shape)}", name)


def check_views(views: Any, stored: dict[str, TensorRecord], path: Any) -> dict[str, tuple[str, int, tuple[int, ...]]]:
    """Validated ``views`` of a manifest: name -> (base name, offset, strides), every element inside the base.

    A view and its base are stored tensors of one dtype without gradient attrs; a base
    is no view itself (no chains or cycles).  The caller still checks that the view's
    stored bytes equal what it reads from the base.
    """
    if views is None:
        return {}
    if not isinstance(views, dict):
        raise _corrupt(path, f"views must be an object, not {type(views).__name__}")
    out = {}
    for name, spec in views.items():
        record = stored.get(name)
        if not isinstance(spec, dict):
            raise _corrupt(path, "view entry is not an object", name)
        base, offset, strides = spec.get("of"), spec.get("offset"), spec.get("strides")
        of = stored.get(base) if isinstance(base, str) else None
        if record is None or of is None or record.kind != "tensor" or of.kind != "tensor" or base in views:
            raise _corrupt(path, f"a view must join two stored tensors, the base no view itself (base {str(base)[:80]!r})", str(name)[:80])
        if record.dtype != of.dtype or {"parameter", "requires_grad"} & (record.attrs.keys() | of.attrs.keys()):
            raise _corrupt(path, f"cannot be a view of {base!r} (another dtype, or gradient attrs)", name)
        if not (type(offset) is int and offset >= 0 and isinstance(strides, list) and len(strides) == len(record.shape)
                and all(type(s) is int and s >= 0 for s in strides)):
            raise _corrupt(path, f"view offset {offset!r} and strides {str(strides)[:80]} are not non-negative integers, one per dimension", name)
        base_count = math.prod(of.shape)
        if math.prod(record.shape) and _extent(offset, record.shape, strides) > base_count:
            raise _corrupt(path, f"the view reads past the {base_count} elements of {base!r}", name)
        out[name] = (base, offset, tuple(strides))
    return out


def check_aliases(aliases: Any, stored: dict[str, TensorRecord], path: Any) -> dict[str, str]:
    """Validated ``aliases`` (alias -> stored tensor name) of a manifest whose payloads are ``stored``.

    An alias must name a stored tensor payload directly (no chains or cycles) and must
    not itself be a stored name: otherwise one key would silently get another tensor's
    bytes while every checksum still matches.  Checkpoint manifests use it too.
    """
    if aliases is None:
        return {}
    if not isinstance(aliases, dict):
        raise _corrupt(path, f"aliases must be an object mapping names to stored tensors, not {type(aliases).__name__}")
    for alias, target in aliases.items():
        if not isinstance(target, str):
            raise _corrupt(path, f"alias {alias!r} points to {target!r}, not to a tensor name")
        if alias in stored:
            raise _corrupt(path, f"alias {alias!r} has the name of a stored tensor; it would hide that tensor's bytes")
        record = stored.get(target)
        if record is None:
            what = "another alias" if target in aliases else "no stored tensor"
            raise _corrupt(path, f"alias {alias!r} points to {target!r}, which is {what}")
        if record.kind != "tensor":
            raise _corrupt(path, f"alias {alias!r} points to {target!r}, a {record.kind} payload, not a tensor")
    return aliases


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
