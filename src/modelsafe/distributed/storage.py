"""A StorageWriter / StorageReader pair (and planners) that put DCP checkpoints in modelsafe's format.

``torch.distributed.checkpoint`` plans who writes and reads what (chunks, offsets,
resharding); these classes decide how it is stored, with no pickle anywhere:

* every rank writes its chunks into ``rank-NNNNN.safetensors`` through modelsafe's one
  writer (a checksum per payload), inside a staging directory the coordinator made — or,
  for a URL, into a local temporary file it uploads under the prefix the coordinator began;
* non-tensor entries (a learning rate, betas) are encoded by modelsafe's tree encoder
  as JSON (the planners replace DCP's ``torch.save``/``torch.load`` of them);
* the coordinator writes DCP's ``Metadata`` as the checked JSON block of
  ``manifest.json`` (:mod:`.layout`) and commits the directory with
  :mod:`modelsafe.storage.commit` (staging, fsync, one atomic rename, run lock), once,
  after every rank has written.

DCP's call order (see torch/distributed/checkpoint/storage.py): all ranks
``set_up_storage_writer`` and ``prepare_local_plan``; the coordinator
``prepare_global_plan`` (here: lock, stage, tell each rank its file); all ranks
``write_data``; the coordinator ``finish`` (manifest, commit).
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import tempfile
import threading
from datetime import datetime, timezone
from typing import Any

import torch
from torch.distributed.checkpoint import StorageReader, StorageWriter
from torch.distributed.checkpoint._traverse import set_element
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner, DefaultSavePlanner
from torch.distributed.checkpoint.metadata import (
    BytesStorageMetadata,
    ChunkStorageMetadata,
    Metadata,
    MetadataIndex,
    StorageMeta,
    TensorProperties,
    TensorStorageMetadata,
)
from torch.distributed.checkpoint.planner import LoadItemType, WriteItemType
from torch.distributed.checkpoint.storage import WriteResult
from torch.futures import Future

from ..checkpoint_dir import build_manifest, write_manifest
from ..checkpoints import _storage_for
from ..directory import open_directory_of
from ..errors import CorruptCheckpointError, InvalidArgumentError, ModelsafeError, UnsupportedObjectError
from ..format.dtypes import BY_NAME
from ..format.writer import write_file
from ..gc_pause import gc_paused
from ..storage import is_url
from ..storage.remote import filesystem, remote_error, upload_file
from ..tree import Unflattener, flatten
from .layout import Chunk, Layout, TensorEntry, layout_json, rank_file
from .source import DistributedSource

__all__ = ["ModelsafeWriter", "ModelsafeReader", "JsonSavePlanner", "JsonLoadPlanner"]



def _dtype_name(dtype: torch.dtype) -> str:
    name = str(dtype).removeprefix("torch.")
    if name not in BY_NAME:
        raise UnsupportedObjectError(f"ms.distributed.save: dtype {dtype} has no safetensors form", key=name)
    return name


def _torch_dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, name, None)  # name is one of BY_NAME's (checked by parse_layout)
    if not isinstance(dtype, torch.dtype):
        raise CorruptCheckpointError(f"dtype {name!r} is not one this torch has; upgrade torch to read it", key=name)
    return dtype


def chunk_key(fqn: str, offsets: Any) -> str:
    """The payload name of the chunk of ``fqn`` at ``offsets`` in its rank file."""
    return f"{fqn}@{','.join(map(str, offsets))}"


# -- planners: DCP's, with JSON instead of pickle for non-tensor entries -------------------

class JsonSavePlanner(DefaultSavePlanner):
    """DCP's default save planner; non-tensor entries become modelsafe tree JSON, not pickles."""

    def transform_object(self, write_item: Any, object: Any) -> Any:
        if write_item.type != WriteItemType.BYTE_IO:
            return object
        fl = flatten(object)
        if fl.payloads:
            raise UnsupportedObjectError(
                f"ms.distributed.save: entry {write_item.index.fqn!r} is neither a tensor nor plain data "
                "(it holds bytes or tensors inside another object); store tensors as entries of the state dict",
                key=write_item.index.fqn,
            )
        return io.BytesIO(json.dumps(fl.skeleton, allow_nan=False).encode())


class JsonLoadPlanner(DefaultLoadPlanner):
    """DCP's default load planner; non-tensor entries are decoded from checked JSON, never unpickled."""

    def __init__(self, *args: Any, source_path: str = "", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._source_path = source_path

    def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
        # DefaultLoadPlanner.load_bytes would torch.load (unpickle) the bytes; this is its
        # logic with modelsafe's JSON tree decoder in place of the unpickler
        fqn = read_item.dest_index.fqn
        try:
            node = json.loads(value.read())
        except (ValueError, RecursionError):
            raise CorruptCheckpointError(f"{self._source_path}: entry {fqn!r} is not valid JSON; the checkpoint is "
                                         "damaged", path=self._source_path, key=fqn) from None
        obj = Unflattener({}, source=self._source_path).decode(node)
        if self.flatten_state_dict:
            set_element(self.original_state_dict, self.mappings[fqn], obj)
        else:
            self.state_dict[fqn] = obj


# -- writing -----------------------------------------------------------------------

class ModelsafeWriter(StorageWriter):
    """Write a DCP checkpoint as a modelsafe checkpoint directory ``path`` (committed once, by the coordinator).

    ``path`` may be an fsspec URL (``s3://bucket/run/ckpt``, with ``storage_options``):
    each rank then writes its rank file to a local temporary file and uploads it
    (multipart, streamed) where the coordinator's plan says, and the coordinator uploads
    ``manifest.json`` last (see :class:`modelsafe.storage.remote_run.RemoteRunStorage`).
    ``storage``/``checkpoint``: the run storage to commit through (locked by its owner)
    and the manifest's checkpoint block, when a :class:`modelsafe.Checkpoints` run
    drives the save; by default ``path``'s parent is the run and is locked for the save.
    """

    def __init__(self, path: str | os.PathLike, *, storage: Any = None, checkpoint: dict | None = None,
                 storage_options: dict | None = None) -> None:
        super().__init__()
        self.path = _checkpoint_id(path)
        if storage_options is not None and not is_url(self.path):  # refused on every rank, before DCP starts
            raise InvalidArgumentError(
                f"{self.path}: storage_options= apply to remote (fsspec) URLs such as s3://, and this is a local "
                "path; drop storage_options", path=self.path, key="storage_options",
            )
        self._storage = storage
        self._own_storage = storage is None
        self._checkpoint = checkpoint
        self._storage_options = storage_options
        self._staging: str | None = None
        self._upload: Any = None  # the remote upload the coordinator began (object stores)
        self.committed: str | None = None
        self.is_coordinator = False
        self._closing = threading.Lock()

    def reset(self, checkpoint_id: str | os.PathLike | None = None) -> None:
        if checkpoint_id is not None:
            self.path = _checkpoint_id(checkpoint_id)

    def set_up_storage_writer(self, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
        self.is_coordinator = is_coordinator

    def prepare_local_plan(self, plan: Any) -> Any:
        return plan

    def prepare_global_plan(self, plans: list) -> list:
        """Coordinator: take the run lock, make the staging directory, give each rank its file."""
        parent, name = _split(self.path)
        if self._storage is None:
            self._storage = _storage_for(parent, self._storage_options)  # the run storage Checkpoints would use
            self._storage.lock()
            self._storage.clean_leftovers()
        self._staging = self._storage.stage(name)
        if not is_url(self.path):
            where = {"staging": self._staging}
        else:  # ranks upload into the prefix begun here: the marker first, so a killed save is cleaned up
            self._upload = self._storage.begin(name)
            where = {"upload": self._storage.upload_url(self._upload)}
        return [dataclasses.replace(p, storage_data={**where, "file": rank_file(i)}) for i, p in enumerate(plans)]

    def write_data(self, plan: Any, planner: Any) -> Future:
        name = plan.storage_data["file"]
        chunks: dict[str, Any] = {}
        results: list[WriteResult] = []
        objects: list[tuple[Any, Any]] = []
        for item in plan.items:
            data = planner.resolve_data(item)
            if item.type == WriteItemType.BYTE_IO:
                objects.append((item, data))
                continue
            key = chunk_key(item.index.fqn, item.index.offset or ())
            chunks[key] = data.detach()
            results.append(WriteResult(item.index, data.numel() * data.element_size(), {"file": name, "key": key}))
        checksums: dict[str, str] = {}
        with gc_paused():
            fl = flatten(chunks)
        if "upload" in plan.storage_data:
            self._write_remote(fl, f"{plan.storage_data['upload']}/{name}", checksums)
        else:
            with open(os.path.join(plan.storage_data["staging"], name), "xb", buffering=4 << 20) as f:
                write_file(f, fl, checksums_out=checksums)
        for result in results:
            result.storage_data["xxh3"] = checksums[result.storage_data["key"]]
        for item, data in objects:
            node = _json_object(item.index.fqn, data)
            results.append(WriteResult(item.index, 0, {"object": node}))
        future: Future = Future()
        future.set_result(results)
        return future

    def _write_remote(self, fl: Any, url: str, checksums: dict) -> None:
        """This rank's file: written to a local temporary file (its header is patched in place), then uploaded."""
        fs, key = filesystem(url, self._storage_options)
        fd, local = tempfile.mkstemp(prefix="modelsafe-rank-", suffix=".safetensors")
        try:
            with os.fdopen(fd, "wb", buffering=4 << 20) as f:
                write_file(f, fl, checksums_out=checksums)
            upload_file(fs, local, key)
        except OSError as exc:
            if isinstance(exc, ModelsafeError):
                raise
            raise remote_error(url, "uploading the rank file", exc) from exc
        finally:
            os.unlink(local)

    def finish(self, metadata: Metadata, results: list[list[WriteResult]]) -> None:
        """Coordinator, after every rank wrote: manifest.json into the staging directory, then commit."""
        layout = metadata_layout(metadata, results)
        name = _split(self.path)[1]
        checkpoint = self._checkpoint or {"name": name, "step": 0, "time": datetime.now(timezone.utc).isoformat(),
                                          "metrics": {}, "run_id": None}
        manifest = build_manifest(None, None, {}, {}, [], {}, checkpoint)
        manifest["framework"] = "torch"
        manifest["distributed"] = layout_json(layout)
        write_manifest(self._staging, manifest)
        if self._upload is None:
            self.committed = self._storage.commit(self._staging, name)
        else:
            self.committed = self._storage.commit(self._staging, name, upload=self._upload)
            self._upload = None
        self._staging = None

    def close(self) -> None:
        """Drop an uncommitted staging directory (and uploads) and the run lock this writer took."""
        with self._closing:  # a background save's callback and wait() may both close
            if self._staging is not None and self._storage is not None:
                self._storage.discard(self._staging)
                self._staging = None
            if self._upload is not None and self._storage is not None:
                upload, self._upload = self._upload, None
                try:
                    self._storage.abandon(upload)
                except Exception:  # noqa: BLE001 - the next writer cleans up what is left (the marker says what)
                    pass
            if self._own_storage and self._storage is not None:
                self._storage.unlock()
                self._storage = None

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: str | os.PathLike) -> bool:
        return True  # a local path or an fsspec URL

    def storage_meta(self) -> StorageMeta | None:
        return StorageMeta(checkpoint_id=self.path)


def _checkpoint_id(path: str | os.PathLike) -> str:
    text = os.fspath(path)
    return text.rstrip("/") if is_url(text) else os.path.abspath(text)


def _split(path: str) -> tuple[str, str]:
    """(run, checkpoint name) of a checkpoint path or URL."""
    if is_url(path):
        parent, _, name = path.rpartition("/")
        return parent, name
    return os.path.dirname(path), os.path.basename(path)


def _json_object(fqn: str, data: Any) -> Any:
    """The tree node a JsonSavePlanner encoded; anything else (a pickle from another planner) is refused."""
    raw = data.getvalue() if isinstance(data, io.BytesIO) else b""
    try:
        return json.loads(raw)
    except ValueError:
        raise UnsupportedObjectError(
            f"ms.distributed.save: entry {fqn!r} was not encoded as JSON (another planner pickled it?); "
            "use modelsafe.distributed's planner", key=fqn,
        ) from None


def metadata_layout(metadata: Metadata, results: list[list[WriteResult]]) -> Layout:
    """DCP's ``Metadata`` and every rank's write results as a :class:`Layout`."""
    stored = {(r.index.fqn, tuple(r.index.offset or ())): r.storage_data for rank in results for r in rank}
    tensors: dict[str, TensorEntry] = {}
    objects: dict[str, Any] = {}
    for fqn, md in metadata.state_dict_metadata.items():
        if isinstance(md, BytesStorageMetadata):
            objects[fqn] = stored[(fqn, ())]["object"]
            continue
        chunks = []
        for c in md.chunks:
            info = stored[(fqn, tuple(c.offsets))]
            chunks.append(Chunk(tuple(c.offsets), tuple(c.sizes), info["file"], info["key"], info["xxh3"]))
        tensors[fqn] = TensorEntry(_dtype_name(md.properties.dtype), tuple(md.size),
                                   bool(md.properties.requires_grad), tuple(chunks))
    files = sorted({c.file for t in tensors.values() for c in t.chunks})
    paths = {fqn: list(p) for fqn, p in (metadata.planner_data or {}).items() if fqn in tensors or fqn in objects}
    return Layout(len(results), tuple(files), tensors, objects, paths)


# -- reading -----------------------------------------------------------------------

class ModelsafeReader(StorageReader):
    """Read a checkpoint of :class:`ModelsafeWriter`: metadata from manifest.json, chunks verified."""

    def __init__(self, path: str | os.PathLike, *, storage_options: dict | None = None) -> None:
        """``path``: a local directory or a URL (``s3://``, with ``storage_options``): then every rank
        reads only the byte ranges of the chunks it loads."""
        super().__init__()
        self.path = os.fspath(path)
        self.storage_options = storage_options
        self._source: DistributedSource | None = None

    def reset(self, checkpoint_id: str | os.PathLike | None = None) -> None:
        if checkpoint_id is not None:
            self.path = os.fspath(checkpoint_id)

    def source(self) -> DistributedSource:
        if self._source is None:
            self._source = DistributedSource(open_directory_of(self.path, self.storage_options))
        return self._source

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        return layout_metadata(self.source().layout, self.path)

    def set_up_storage_reader(self, metadata: Metadata, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
        self.is_coordinator = is_coordinator

    def prepare_local_plan(self, plan: Any) -> Any:
        return plan

    def prepare_global_plan(self, plans: list) -> list:
        return plans

    def read_data(self, plan: Any, planner: Any) -> Future:
        source = self.source()
        cache: dict[tuple, torch.Tensor] = {}
        for req in plan.items:
            fqn = req.storage_index.fqn
            if req.type == LoadItemType.BYTE_IO:
                planner.load_bytes(req, io.BytesIO(json.dumps(source.layout.objects[fqn]).encode()))
                continue
            chunk = source.chunk_at(fqn, tuple(req.storage_index.offset))
            where = (fqn, chunk.offsets)
            if where not in cache:
                cache[where] = source.chunk_tensor(fqn, chunk, framework="torch")
            piece = cache[where]
            for dim, (start, length) in enumerate(zip(req.storage_offsets, req.lengths)):
                piece = piece.narrow(dim, start, length)
            target = planner.resolve_tensor(req).detach()
            if target.size() != piece.size():
                raise CorruptCheckpointError(
                    f"{self.path}: tensor {fqn!r}: a stored piece of shape {list(piece.size())} does not fit the "
                    f"{list(target.size())} asked for", path=self.path, key=fqn)
            target.copy_(piece)
            planner.commit_tensor(req, target)
        future: Future = Future()
        future.set_result(None)
        return future

    def close(self) -> None:
        if self._source is not None:
            self._source.close()
            self._source = None

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: str | os.PathLike) -> bool:
        return True  # a local path or any fsspec URL


def layout_metadata(layout: Layout, path: str) -> Metadata:
    """DCP's ``Metadata`` rebuilt from a checked :class:`Layout` (no field taken unchecked from the file)."""
    entries: dict[str, Any] = {}
    storage: dict[MetadataIndex, Any] = {}
    for fqn, t in layout.tensors.items():
        props = TensorProperties(dtype=_torch_dtype(t.dtype), requires_grad=t.requires_grad)
        chunks = [ChunkStorageMetadata(offsets=torch.Size(c.offsets), sizes=torch.Size(c.sizes)) for c in t.chunks]
        entries[fqn] = TensorStorageMetadata(properties=props, size=torch.Size(t.shape), chunks=chunks)
        storage.update((MetadataIndex(fqn, torch.Size(c.offsets)), c) for c in t.chunks)
    for fqn in layout.objects:
        entries[fqn] = BytesStorageMetadata()
        storage[MetadataIndex(fqn)] = fqn
    return Metadata(
        state_dict_metadata=entries,
        planner_data={fqn: tuple(p) for fqn, p in layout.paths.items()},
        storage_data=storage,
        storage_meta=StorageMeta(checkpoint_id=path),
    )
