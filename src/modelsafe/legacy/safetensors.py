"""safetensors files, single or sharded through a ``*.index.json`` weight map.

Single files (modelsafe files included) are read with modelsafe's own validating
reader.  A sharded checkpoint's index names, for every tensor, the shard that holds
it; shards may be safetensors or torch files (``pytorch_model.bin.index.json``) and
each is read by the reader its format selects.  Shard names must be plain file names
beside the index: no directories, no links leading out of its folder, no pipes or devices,
and never another index (an index naming itself or a cycle of indexes is refused, not followed).

>>> import numpy as np, tempfile, os, modelsafe as ms
>>> p = os.path.join(tempfile.mkdtemp(), "m.safetensors")
>>> ms.save({"w": np.ones(2)}, p)
>>> read(p, ReadOptions(framework="numpy")).tree
{'w': array([1., 1.])}
"""

from __future__ import annotations

import importlib
import json
import os
from typing import Any

from ..errors import CheckpointNotFoundError, CorruptCheckpointError
from . import ForeignFile, ReadOptions, reader_for, regular_file_size

MAX_INDEX_BYTES = 16 << 20          # the largest Hugging Face indexes are a few MB
MAX_SHARD_NAME = 255                # one path component
SHARD_FORMATS = ("safetensors", "torch")


def read(path: str | os.PathLike, options: ReadOptions) -> ForeignFile:
    path = os.fspath(path)
    if path.lower().endswith(".index.json"):
        return read_sharded(path, options)
    from ..api import load

    tree = load(path, framework=options.framework)
    return ForeignFile(path, "safetensors", tree, [])


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object's pairs as a dict; a key given twice (the last would silently win) is refused."""
    found = dict(pairs)
    if len(found) != len(pairs):
        seen: set[str] = set()
        twice = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise ValueError(f"key {twice!r:.200} appears twice in one object")
    return found


def read_index(path: str) -> dict[str, str]:
    """The validated weight_map of a ``*.index.json`` (size bounded, unique keys, plain shard names)."""
    if regular_file_size(path) > MAX_INDEX_BYTES:
        raise CorruptCheckpointError(f"{path}: index larger than {MAX_INDEX_BYTES:,} bytes", path=path)
    try:
        with open(path, "rb") as f:
            index = json.loads(f.read(MAX_INDEX_BYTES + 1), object_pairs_hook=_unique_keys)
    except (ValueError, RecursionError) as exc:  # bad JSON or UTF-8, a duplicate key
        raise CorruptCheckpointError(f"{path}: the index is not valid JSON ({exc})", path=path) from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CorruptCheckpointError(f"{path}: the index has no weight_map object", path=path)
    for name, shard in weight_map.items():
        if not _plain_shard_name(shard):
            raise CorruptCheckpointError(
                f"{path}: weight_map sends {name!r:.200} to {shard!r:.200}, which is not a file name beside the index",
                path=path, key=name,
            )
        if shard.lower().endswith(".index.json"):
            raise CorruptCheckpointError(
                f"{path}: weight_map sends {name!r:.200} to {shard}, another index (or this one); shards are "
                "safetensors or torch files, never an index, so indexes are not followed", path=path, key=name,
            )
    return weight_map


def _plain_shard_name(shard: Any) -> bool:
    return (isinstance(shard, str) and 0 < len(shard) <= MAX_SHARD_NAME and os.path.basename(shard) == shard
            and shard not in (".", "..") and "\0" not in shard and "\\" not in shard)


def shard_reader(index: str, folder: str, shard: str) -> tuple[str, Any]:
    """(path, reader module) of one shard: a regular file inside the index's folder (a symlink may not
    lead out of it), read by the safetensors or torch reader only — never an index, so no recursion."""
    full = os.path.join(folder, shard)
    if not os.path.lexists(full):
        raise CheckpointNotFoundError(f"{index}: shard {shard} named by the weight_map is missing", path=full, key=shard)
    real_folder = os.path.realpath(folder)
    if os.path.commonpath([real_folder, os.path.realpath(full)]) != real_folder:
        raise CorruptCheckpointError(
            f"{index}: shard {shard} is a link that leads out of the index's folder; refused", path=index, key=shard
        )
    regular_file_size(full)
    entry = reader_for(full)
    if entry.name not in SHARD_FORMATS:
        raise CorruptCheckpointError(
            f"{index}: shard {shard} is a {entry.name} file; shards are {' or '.join(SHARD_FORMATS)} files",
            path=index, key=shard,
        )
    return full, importlib.import_module(entry.module)


def read_sharded(path: str, options: ReadOptions) -> ForeignFile:
    weight_map = read_index(path)
    folder = os.path.dirname(path)
    shards: dict[str, Any] = {}
    formats: set[str] = set()
    for shard in dict.fromkeys(weight_map.values()):
        full, module = shard_reader(path, folder, shard)
        found = module.read(full, options)
        if not isinstance(found.tree, dict):
            raise CorruptCheckpointError(f"{path}: shard {shard} does not hold a dict of tensors", path=path, key=shard)
        shards[shard] = found.tree
        formats.add(found.format)
    tree: dict[str, Any] = {}
    for name, shard in weight_map.items():
        if name not in shards[shard]:
            raise CorruptCheckpointError(f"{path}: weight_map puts {name!r:.200} in {shard}, which does not hold it",
                                         path=path, key=name)
        tree[name] = shards[shard][name]
    notes = [f"{len(tree)} tensors from {len(shards)} shards ({', '.join(sorted(formats))})"]
    extra = sum(len(s) for s in shards.values()) - len(tree)
    if extra > 0:
        notes.append(f"{extra} tensors in the shards are not in the weight_map and were left out")
    return ForeignFile(path, "sharded", tree, notes)
