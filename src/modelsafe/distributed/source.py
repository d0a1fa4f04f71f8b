"""A sharded (``ms.distributed``) checkpoint as a Source: whole tensors assembled from the ranks' chunks.

Registered ahead of the plain checkpoint opener, so ``ms.open``, ``ms.load``,
``modelsafe verify`` and ``export`` on one process see the saved state as whole
tensors, in the tree DCP flattened (``{"model": {...}, "optim": {...}}``).  Every
chunk is checked against manifest.json (dtype, shape, checksum) when the rank files
are opened and verified when it is read; a damaged one is an error naming the rank
file and the tensor.  Importing this imports no framework.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from typing import Any, Iterator

import numpy as np

from .. import sources
from ..checkpoint_dir import MANIFEST, parse_manifest, register_layout, removed_error
from ..directory import open_directory_of
from ..errors import CheckpointNotFoundError, CorruptCheckpointError, ModelsafeError
from ..format.dtypes import BY_NAME
from ..format.manifest import TensorRecord
from ..format.reader import FileSource
from ..loading import buffers_on_demand, fetch_records, materialize
from ..storage.commit import MAX_MANIFEST_BYTES
from ..storage.local import read_small_file
from .layout import Chunk, Layout, parse_layout

__all__ = ["DistributedSource", "is_distributed_dir"]


def _corrupt(path: str, fqn: str, what: str) -> CorruptCheckpointError:
    return CorruptCheckpointError(
        f"{path}: tensor {fqn!r}: {what}; the checkpoint is damaged. Load an earlier checkpoint or restore it from a backup",
        path=path, key=fqn,
    )


class DistributedSource:
    """A committed checkpoint of :func:`modelsafe.distributed.save`, read on one process."""

    def __init__(self, directory: Any) -> None:
        """``directory``: a local path, or a :class:`~modelsafe.directory.CheckpointDirectory` (remote: the
        rank files are read by byte ranges, only the chunks asked for)."""
        self._files: dict[str, FileSource] = {}
        self._directory = open_directory_of(directory)
        self.path = self._directory.path
        try:
            shown = self._directory.inside(MANIFEST)
            self.manifest_bytes = self._read(MANIFEST)
            manifest = parse_manifest(self.manifest_bytes, shown)
            self.layout: Layout = parse_layout(manifest.get("distributed"), shown)
            for name, opened in self._directory.open_shards(list(self.layout.files)):
                self._files[name] = self._rank_file(name, opened)
            self._check_chunks()
            self.records = self._whole_records()
            self.manifest = {**manifest, "tree": self._tree(), "tensors": {}}
            self.aliases: dict[str, str] = {}
        except BaseException:
            self.close()
            raise

    # -- opening -----------------------------------------------------------------------
    def _read(self, name: str) -> bytes:
        try:
            return self._directory.read_small(name, MAX_MANIFEST_BYTES, "a checkpoint manifest")
        except FileNotFoundError:
            if self.removed():
                raise removed_error(self.path) from None
            raise CheckpointNotFoundError(f"{self.path}: no manifest.json, so this is not a committed checkpoint",
                                          path=self.path) from None

    def _rank_file(self, name: str, opened: FileSource | Exception) -> FileSource:
        """Rank file ``name`` as the directory opened it; what opening it raised is raised here."""
        if isinstance(opened, FileNotFoundError):
            if self.removed():
                raise removed_error(self.path) from None
            shown = self._directory.inside(name)
            raise CorruptCheckpointError(f"{shown}: the rank file is missing; the checkpoint is damaged. Load an "
                                         "earlier checkpoint or restore it from a backup", path=shown) from None
        if isinstance(opened, Exception):
            raise opened
        return opened

    def removed(self) -> bool:
        return self._directory.removed()

    def _check_chunks(self) -> None:
        """Each chunk is a tensor of its rank file with the dtype, shape and checksum manifest.json says."""
        for fqn, entry in self.layout.tensors.items():
            for chunk in entry.chunks:
                source = self._files[chunk.file]
                record = source.records.get(chunk.key)
                if record is None or record.kind != "tensor":
                    raise _corrupt(source.path, fqn, f"the rank file does not hold its chunk {chunk.key!r}")
                if record.dtype.name != entry.dtype or tuple(record.shape) != chunk.sizes:
                    raise _corrupt(source.path, fqn, f"chunk {chunk.key!r} is {record.dtype.name} {list(record.shape)}, "
                                                     f"manifest.json says {entry.dtype} {list(chunk.sizes)}")
                if record.checksum != chunk.xxh3:
                    raise _corrupt(source.path, fqn, f"manifest.json and the rank file disagree on the checksum of chunk "
                                                     f"{chunk.key!r} ({chunk.xxh3} and {record.checksum})")

    def _whole_records(self) -> dict[str, TensorRecord]:
        records = {}
        for fqn, entry in self.layout.tensors.items():
            dtype = BY_NAME[entry.dtype]
            nbytes = math.prod(entry.shape) * dtype.itemsize
            framework = next((self._files[c.file].records[c.key].framework for c in entry.chunks), None)
            # the checksum of a whole tensor is that of its chunks (verify_record checks each one)
            digest = "+".join(c.xxh3 for c in entry.chunks)
            records[fqn] = TensorRecord(fqn, "tensor", dtype, entry.shape, 0, nbytes, digest, framework or "torch", {}, fqn)
        return records

    def _tree(self) -> Any:
        """The saved state's tree: nested dicts (lists where DCP flattened a list) of tensor refs and objects."""
        root: dict = {}
        for fqn in [*self.layout.tensors, *self.layout.objects]:
            node = root
            path = self.layout.path_of(fqn)
            for part in path[:-1]:
                node = node.setdefault(part, {})
                if not isinstance(node, dict):
                    raise _corrupt(self.path, fqn, f"its place {list(path)[:20]} runs through another entry")
            if path[-1] in node:
                raise _corrupt(self.path, fqn, f"its place {list(path)[:20]} is taken by another entry")
            node[path[-1]] = _Object({"tensor": fqn} if fqn in self.layout.tensors else self.layout.objects[fqn])
        return _encode(root)

    # -- bytes -------------------------------------------------------------------------
    def chunk_at(self, fqn: str, offsets: tuple) -> Chunk:
        entry = self.layout.tensors.get(fqn)
        chunk = next((c for c in entry.chunks if c.offsets == offsets), None) if entry is not None else None
        if chunk is None:
            raise _corrupt(self.path, fqn, f"no chunk at offsets {list(offsets)}")
        return chunk

    def _base(self, chunk: Chunk) -> tuple[FileSource, TensorRecord, np.ndarray]:
        """(rank file, record, data section) of ``chunk``: mapped, or (remote) its byte range fetched first."""
        source = self._files[chunk.file]
        record = source.records[chunk.key]
        try:
            fetch_records(source, [record])
        except ModelsafeError as exc:  # gone or replaced under the reader: retention, not damage
            raise (removed_error(self.path) if self.removed() else exc) from None
        return source, record, buffers_on_demand(source)[None]

    def chunk_tensor(self, fqn: str, chunk: Chunk, *, framework: str | None = None) -> Any:
        """The chunk as a tensor of ``framework``, verified against its checksum."""
        source, record, base = self._base(chunk)
        try:
            return materialize(source, {None: base}, [record], framework=framework)[chunk.key]
        except CorruptCheckpointError as exc:
            raise _corrupt(source.path, fqn, f"its chunk at offsets {list(chunk.offsets)} is damaged ({exc.message})") from None

    def chunk_bytes(self, fqn: str, chunk: Chunk) -> np.ndarray:
        """The chunk's bytes (uint8), verified against its checksum."""
        source, record, base = self._base(chunk)
        try:
            source.verify_record(record, base)
        except CorruptCheckpointError:
            raise _corrupt(source.path, fqn, f"its chunk at offsets {list(chunk.offsets)} fails its checksum "
                                             f"(chunk {chunk.key!r})") from None
        return base[record.begin:record.end]

    def assemble(self, fqn: str) -> np.ndarray:
        """The whole tensor ``fqn`` as C-order bytes (uint8); :meth:`verify_record` checks its chunks."""
        entry = self.layout.tensors[fqn]
        itemsize = BY_NAME[entry.dtype].itemsize
        out = np.empty(math.prod(entry.shape) * itemsize, np.uint8)
        grid = out.reshape(*entry.shape, itemsize)
        for chunk in entry.chunks:
            if math.prod(chunk.sizes) == 0:
                continue
            _source, record, base = self._base(chunk)
            piece = base[record.begin:record.end].reshape(*chunk.sizes, itemsize)
            grid[tuple(slice(o, o + s) for o, s in zip(chunk.offsets, chunk.sizes))] = piece
        return out

    def buffers(self, *, lazy: bool = False, mmap: bool = True) -> Mapping:
        return _Assembled(self)

    def verify_record(self, record: TensorRecord, base: np.ndarray) -> None:
        """Check every chunk of ``record``'s tensor against its checksum (the error names rank file and tensor)."""
        for chunk in self.layout.tensors[record.name].chunks:
            self.chunk_bytes(record.name, chunk)

    def release(self) -> None:
        """Drop the chunk bytes fetched so far from remote rank files (a verifier's bounded memory)."""
        for source in self._files.values():
            if hasattr(source, "release"):
                source.release()

    def close(self) -> None:
        for source in self._files.values():
            source.close()
        self._files = {}
        self._directory.close()

    def __enter__(self) -> "DistributedSource":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class _Object:
    """A finished tree node (a tensor reference or a stored object), kept apart from the containers built around it."""

    def __init__(self, node: Any) -> None:
        self.node = node


def _encode(node: Any) -> Any:
    if isinstance(node, _Object):
        return node.node
    keys = list(node)
    if keys and all(type(k) is int for k in keys) and sorted(keys) == list(range(len(keys))):
        return [_encode(node[i]) for i in range(len(keys))]
    return {"dict": [[k, _encode(v)] for k, v in node.items()]}


class _Assembled(Mapping):
    """fqn -> whole tensor bytes, assembled on first access, kept after."""

    def __init__(self, source: DistributedSource) -> None:
        self._source = source
        self._done: dict[str, np.ndarray] = {}

    def __getitem__(self, fqn: Any) -> np.ndarray:
        if fqn not in self._done:
            if fqn not in self._source.layout.tensors:
                raise KeyError(fqn)
            self._done[fqn] = self._source.assemble(fqn)
        return self._done[fqn]

    def __iter__(self) -> Iterator[str]:
        return iter(self._source.layout.tensors)

    def __len__(self) -> int:
        return len(self._source.layout.tensors)


def is_distributed_dir(path: str) -> bool:
    """True for a directory whose manifest.json has a ``distributed`` block (anything unreadable: False)."""
    try:
        data = read_small_file(os.path.join(path, MANIFEST), MAX_MANIFEST_BYTES, "a checkpoint manifest")
        return _is_distributed(json.loads(data))
    except (OSError, ValueError, ModelsafeError, AttributeError, RecursionError):
        return False


def open_distributed(path: str, **_: Any) -> DistributedSource:
    return DistributedSource(path)


def _is_distributed(manifest: dict) -> bool:
    return isinstance(manifest.get("distributed"), dict)


sources.register_directory_opener(is_distributed_dir, open_distributed, first=True)
register_layout(_is_distributed, DistributedSource)
