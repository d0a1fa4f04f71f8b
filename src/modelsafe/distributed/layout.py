"""The ``distributed`` block of a sharded checkpoint's manifest.json: DCP's metadata as checked JSON.

A checkpoint written by :func:`modelsafe.distributed.save` is a checkpoint directory
whose ``manifest.json`` lists no shards of its own; its ``distributed`` block says,
for every entry of the flattened state, either

* a tensor: dtype, global shape, and its chunks (offsets, sizes, the rank file and
  the payload name holding it, the payload's xxh3), or
* an object (a non-tensor entry such as a learning rate): its modelsafe tree node,
  plain JSON, never a pickle,

and where each entry sits in the saved state (``paths``).  Every field is checked
here as if the file were hostile, before anything is allocated or opened; the
result is frozen records that the torch side turns back into DCP's ``Metadata``
and that :mod:`.source` assembles into whole tensors.  Importing this imports no framework.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from ..errors import CorruptCheckpointError
from ..format.dtypes import BY_NAME

__all__ = ["LAYOUT_VERSION", "Chunk", "TensorEntry", "Layout", "rank_file", "parse_layout", "layout_json"]

LAYOUT_VERSION = 1
RANK_FILE = re.compile(r"rank-\d{5}\.safetensors\Z")
_HEX16 = re.compile(r"[0-9a-f]{16}\Z")
MAX_DIMS = 64
MAX_NAME = 4096
MAX_PATH_DEPTH = 256
MAX_CHUNKS = 1 << 16  # per tensor; DCP writes one per rank holding a piece
MAX_ELEMENTS = 1 << 53


def rank_file(rank: int) -> str:
    """The file rank ``rank`` writes its shards to."""
    return f"rank-{rank:05d}.safetensors"


@dataclass(frozen=True)
class Chunk:
    """One rank's piece of a tensor: where it sits in the tensor and where it is stored."""

    offsets: tuple[int, ...]
    sizes: tuple[int, ...]
    file: str
    key: str
    xxh3: str


@dataclass(frozen=True)
class TensorEntry:
    dtype: str
    shape: tuple[int, ...]
    requires_grad: bool
    chunks: tuple[Chunk, ...]


@dataclass(frozen=True)
class Layout:
    """The checked ``distributed`` block: tensors, JSON objects and their places in the state."""

    world_size: int
    files: tuple[str, ...]
    tensors: dict[str, TensorEntry]
    objects: dict[str, Any]
    paths: dict[str, tuple]

    def path_of(self, fqn: str) -> tuple:
        return self.paths.get(fqn, (fqn,))


def layout_json(layout: Layout) -> dict:
    """``layout`` as the JSON of the manifest's ``distributed`` block."""
    return {
        "version": LAYOUT_VERSION,
        "world_size": layout.world_size,
        "files": list(layout.files),
        "tensors": {
            fqn: {
                "dtype": t.dtype, "shape": list(t.shape), "requires_grad": t.requires_grad,
                "chunks": [{"offsets": list(c.offsets), "sizes": list(c.sizes), "file": c.file, "key": c.key,
                            "xxh3": c.xxh3} for c in t.chunks],
            }
            for fqn, t in layout.tensors.items()
        },
        "objects": layout.objects,
        "paths": {fqn: list(path) for fqn, path in layout.paths.items()},
    }


# -- reading: every field checked ------------------------------------------------------

class _Bad(Exception):
    pass


def parse_layout(block: Any, path: str) -> Layout:
    """The checked :class:`Layout` of manifest block ``block``; CorruptCheckpointError naming ``path`` otherwise."""
    try:
        return _parse(block)
    except _Bad as exc:
        raise CorruptCheckpointError(
            f"{path}: manifest.json 'distributed' block: {exc}; the checkpoint is damaged. "
            "Load an earlier checkpoint or restore it from a backup",
            path=path,
        ) from None


def _need(ok: bool, why: str) -> None:
    if not ok:
        raise _Bad(why)


def _int(value: Any, what: str, low: int = 0, high: int = MAX_ELEMENTS) -> int:
    _need(type(value) is int and low <= value <= high, f"{what} is {str(value)[:40]!r}, not an integer in [{low}, {high}]")
    return value


def _name(value: Any, what: str) -> str:
    _need(isinstance(value, str) and 0 < len(value) <= MAX_NAME and "\0" not in value, f"{what} is not a short string")
    return value


def _ints(value: Any, what: str) -> tuple[int, ...]:
    _need(isinstance(value, list) and len(value) <= MAX_DIMS, f"{what} is not a list of at most {MAX_DIMS} integers")
    return tuple(_int(v, what) for v in value)


def _parse(block: Any) -> Layout:
    _need(isinstance(block, dict), "it is not an object")
    version = block.get("version")
    _need(version == LAYOUT_VERSION, f"version {str(version)[:20]!r} is not {LAYOUT_VERSION}; a newer modelsafe wrote it")
    world = _int(block.get("world_size"), "world_size", 1, 1 << 20)
    files = block.get("files")
    _need(isinstance(files, list) and len(files) <= world and len(set(map(str, files))) == len(files),
          "'files' is not a list of distinct rank files")
    for f in files:
        _need(isinstance(f, str) and RANK_FILE.match(f) is not None, f"rank file {str(f)[:80]!r} is not rank-NNNNN.safetensors")
    tensors, objects, paths = block.get("tensors"), block.get("objects"), block.get("paths")
    _need(isinstance(tensors, dict) and isinstance(objects, dict) and isinstance(paths, dict),
          "'tensors', 'objects' and 'paths' must be objects")
    _need(not (tensors.keys() & objects.keys()), "an entry is both a tensor and an object")
    parsed = {_name(fqn, "a tensor name"): _tensor(fqn, spec, set(files)) for fqn, spec in tensors.items()}
    for fqn in objects:
        _name(fqn, "an object name")
    checked_paths = {_name(fqn, "a path name"): _path(fqn, p) for fqn, p in paths.items()}
    _need(checked_paths.keys() <= (tensors.keys() | objects.keys()), "'paths' names an entry that is not stored")
    return Layout(world, tuple(files), parsed, dict(objects), checked_paths)


def _path(fqn: str, value: Any) -> tuple:
    _need(isinstance(value, list) and 0 < len(value) <= MAX_PATH_DEPTH, f"path of {fqn[:80]!r} is not a non-empty list")
    for part in value:
        _need((isinstance(part, str) and len(part) <= MAX_NAME) or (type(part) is int and 0 <= part < MAX_ELEMENTS),
              f"path of {fqn[:80]!r} holds {str(part)[:40]!r}, not a key or index")
    return tuple(value)


def _tensor(fqn: str, spec: Any, files: set) -> TensorEntry:
    where = f"tensor {fqn[:200]!r}"
    _need(isinstance(spec, dict), f"{where} is not an object")
    dtype = spec.get("dtype")
    _need(dtype in BY_NAME, f"{where} has unknown dtype {str(dtype)[:40]!r}")
    shape = _ints(spec.get("shape"), f"{where} shape")
    _need(math.prod(shape) <= MAX_ELEMENTS, f"{where} is too large")
    _need(type(spec.get("requires_grad", False)) is bool, f"{where} requires_grad is not a bool")
    raw = spec.get("chunks")
    _need(isinstance(raw, list) and len(raw) <= MAX_CHUNKS, f"{where} chunks is not a list")
    chunks = tuple(_chunk(where, c, shape, files) for c in raw)
    _check_cover(where, shape, chunks)
    return TensorEntry(dtype, shape, spec.get("requires_grad", False), chunks)


def _chunk(where: str, c: Any, shape: tuple, files: set) -> Chunk:
    _need(isinstance(c, dict), f"{where}: a chunk is not an object")
    offsets, sizes = _ints(c.get("offsets"), f"{where} chunk offsets"), _ints(c.get("sizes"), f"{where} chunk sizes")
    _need(len(offsets) == len(sizes) == len(shape), f"{where}: a chunk has {len(offsets)} offsets and {len(sizes)} sizes "
                                                     f"for {len(shape)} dimensions")
    _need(all(o + s <= d for o, s, d in zip(offsets, sizes, shape)), f"{where}: chunk at {list(offsets)} lies outside {list(shape)}")
    _need(c.get("file") in files, f"{where}: chunk file {str(c.get('file'))[:80]!r} is not one of the rank files")
    _need(isinstance(c.get("xxh3"), str) and _HEX16.match(c["xxh3"]) is not None, f"{where}: chunk checksum is not 16 hex digits")
    return Chunk(offsets, sizes, c["file"], _name(c.get("key"), f"{where} chunk key"), c["xxh3"])


def _check_cover(where: str, shape: tuple, chunks: tuple[Chunk, ...]) -> None:
    """The chunks tile the tensor exactly: their volumes add up to it and no two overlap."""
    volume = sum(math.prod(c.sizes) for c in chunks)
    _need(volume == math.prod(shape), f"{where}: its chunks hold {volume} elements, the tensor {math.prod(shape)}")
    solid = [c for c in chunks if math.prod(c.sizes)]
    _need(len(solid) <= 4096, f"{where}: more than 4096 non-empty chunks")
    for i, a in enumerate(solid):
        for b in solid[i + 1:]:
            overlap = all(ao < bo + bs and bo < ao + as_ for ao, as_, bo, bs in zip(a.offsets, a.sizes, b.offsets, b.sizes))
            _need(not overlap, f"{where}: chunks at {list(a.offsets)} and {list(b.offsets)} overlap")
