"""Hugging Face ``save_pretrained`` directories as a Source: ``ms.load``, ``ms.open`` and ``ms.load_into`` take them.

A directory without a modelsafe ``manifest.json`` that holds one ``*.safetensors.index.json``
(a sharded save: the index's ``weight_map`` names the shard of every tensor) or exactly
one ``*.safetensors`` file (``model.safetensors``) opens as a flat dict of its tensors,
lazily: ``ms.open`` maps the shards and reads only the tensors asked for.

The index is hostile input like any file: its size is bounded, keys are unique, every
shard is a plain file name inside the directory (no path, no link leading out), every
shard it lists exists, and every tensor it places in a shard is in that shard.

>>> import numpy as np, tempfile, os, modelsafe as ms
>>> d = tempfile.mkdtemp()
>>> ms.save({"w": np.ones(2, np.float32)}, os.path.join(d, "model.safetensors"))
>>> ms.load(d)["w"]
array([1., 1.], dtype=float32)
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np

from . import sources
from .errors import CorruptCheckpointError
from .foreign import open_file
from .format.manifest import FORMAT_VERSION, TensorRecord
from .legacy.safetensors import read_index, shard_reader

__all__ = ["PretrainedSource", "is_pretrained_dir", "pretrained_file"]

INDEX_SUFFIX = ".safetensors.index.json"
WEIGHTS_SUFFIX = ".safetensors"


def pretrained_file(path: str) -> str | None:
    """The index (preferred) or single weights file that makes ``path`` a save_pretrained directory, else None.

    A directory with two indexes, or two weight files and no index, is ambiguous: None.
    """
    try:
        names = [e.name for e in os.scandir(path) if e.is_file()]
    except OSError:
        return None
    for suffix in (INDEX_SUFFIX, WEIGHTS_SUFFIX):
        found = [n for n in names if n.endswith(suffix) and n != suffix]
        if found:
            return os.path.join(path, found[0]) if len(found) == 1 else None
    return None


def is_pretrained_dir(path: str) -> bool:
    return pretrained_file(path) is not None


class PretrainedSource:
    """The shards of a sharded save_pretrained directory, records named as in the weight_map."""

    def __init__(self, path: str, index: str) -> None:
        self.path = path
        self._shards: dict[str, Any] = {}
        try:
            self.records = self._open(index)
        except BaseException:
            self.close()
            raise
        self.aliases: dict[str, str] = {}
        self.views: dict = {}
        self.manifest = {
            "format_version": list(FORMAT_VERSION),
            "writer": None,
            "tree": {"dict": [[name, {"tensor": name}] for name in self.records]},
            "tensors": {},
            "metadata": None,
        }

    def _open(self, index: str) -> dict[str, TensorRecord]:
        weight_map = read_index(index)
        for shard in dict.fromkeys(weight_map.values()):
            full, _ = shard_reader(index, self.path, shard)  # a plain, existing file inside the directory
            self._shards[shard] = open_file(full)
        records: dict[str, TensorRecord] = {}
        for name, shard in weight_map.items():
            record = self._shards[shard].records.get(name)
            if record is None:
                raise CorruptCheckpointError(
                    f"{index}: the weight_map places tensor {name!r:.200} in {shard}, which does not hold it; the "
                    "directory is incomplete or damaged. Save it again with save_pretrained", path=index, key=name,
                )
            records[name] = dataclasses.replace(record, file=shard)
        return records

    def buffers(self, *, lazy: bool = False, mmap: bool = True) -> dict[str | None, np.ndarray]:
        return {name: s.buffers(lazy=lazy, mmap=mmap)[None] for name, s in self._shards.items()}

    def verify_record(self, record: TensorRecord, base: np.ndarray) -> None:
        self._shards[record.file].verify_record(record, base)

    def close(self) -> None:
        shards, self._shards = self._shards, {}
        for source in shards.values():
            source.close()

    def __enter__(self) -> "PretrainedSource":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def open_pretrained(path: str, **_: Any) -> Any:
    """The opener of save_pretrained directories in :mod:`.sources`' registry."""
    found = pretrained_file(path)
    if found is None or not found.endswith(INDEX_SUFFIX):
        return open_file(found or path)
    return PretrainedSource(path, found)


sources.register_directory_opener(is_pretrained_dir, open_pretrained)
