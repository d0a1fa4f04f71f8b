"""safetensors files, single or sharded through a ``*.index.json`` weight map.

Single files (modelsafe files included) are read with modelsafe's own validating
reader.  A sharded checkpoint's index names, for every tensor, the shard that holds
it; shards may be safetensors or torch files (``pytorch_model.bin.index.json``) and
each is read by the reader its format selects.  Shard names must be plain file names
beside the index: no directories, so an index cannot reach outside its folder.

>>> import numpy as np, tempfile, os, modelsafe as ms
>>> p = os.path.join(tempfile.mkdtemp(), "m.safetensors")
>>> ms.save({"w": np.ones(2)}, p)
>>> read(p, ReadOptions(framework="numpy")).tree
{'w': array([1., 1.])}
"""

from __future__ import annotations

import json
import os
from typing import Any

from ..errors import CorruptCheckpointError
from . import ForeignFile, ReadOptions

MAX_INDEX_BYTES = 100_000_000


def read(path: str | os.PathLike, options: ReadOptions) -> ForeignFile:
    path = os.fspath(path)
    if path.lower().endswith(".index.json"):
        return read_sharded(path, options)
    from ..api import load

    tree = load(path, framework=options.framework)
    return ForeignFile(path, "safetensors", tree, [])


def _index(path: str) -> dict[str, str]:
    if os.path.getsize(path) > MAX_INDEX_BYTES:
        raise CorruptCheckpointError(f"{path}: index larger than {MAX_INDEX_BYTES:,} bytes", path=path)
    try:
        with open(path, "rb") as f:
            index = json.loads(f.read())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise CorruptCheckpointError(f"{path}: the index is not valid JSON ({exc})", path=path) from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CorruptCheckpointError(f"{path}: the index has no weight_map object", path=path)
    for name, shard in weight_map.items():
        if not (isinstance(shard, str) and shard and os.path.basename(shard) == shard and shard not in (".", "..")):
            raise CorruptCheckpointError(
                f"{path}: weight_map sends {name!r} to {shard!r}, which is not a file name beside the index", path=path, key=name
            )
    return weight_map


def read_sharded(path: str, options: ReadOptions) -> ForeignFile:
    from . import read_foreign

    weight_map = _index(path)
    folder = os.path.dirname(path)
    shards: dict[str, Any] = {}
    formats: set[str] = set()
    for shard in dict.fromkeys(weight_map.values()):
        found = read_foreign(os.path.join(folder, shard), framework=options.framework)
        if not isinstance(found.tree, dict):
            raise CorruptCheckpointError(f"{path}: shard {shard} does not hold a dict of tensors", path=path, key=shard)
        shards[shard] = found.tree
        formats.add(found.format)
    tree: dict[str, Any] = {}
    for name, shard in weight_map.items():
        if name not in shards[shard]:
            raise CorruptCheckpointError(f"{path}: weight_map puts {name!r} in {shard}, which does not hold it", path=path, key=name)
        tree[name] = shards[shard][name]
    notes = [f"{len(tree)} tensors from {len(shards)} shards ({', '.join(sorted(formats))})"]
    extra = sum(len(s) for s in shards.values()) - len(tree)
    if extra > 0:
        notes.append(f"{extra} tensors in the shards are not in the weight_map and were left out")
    return ForeignFile(path, "sharded", tree, notes)
