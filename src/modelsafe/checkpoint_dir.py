"""The checkpoint directory format: ``manifest.json``, safetensors shards, ``files/``.

Writing (into a staging directory; committing is :mod:`.storage.commit`'s job):
:func:`write_shards` streams the flattened state into one or more shards, each a
complete modelsafe single file; :func:`hash_files` records the files a bound save
wrote under ``files/``; :func:`build_manifest` joins everything into the directory
manifest, written last by :func:`write_manifest`.

Reading: :class:`CheckpointSource` is a Source (see :mod:`.sources`) over a committed
checkpoint directory, registered so ``ms.load``, ``ms.open`` and ``ms.load_into``
accept one.  See docs/checkpoints.md for the layout.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from types import SimpleNamespace
from typing import Any

import numpy as np
import xxhash

from . import sources
from .errors import CheckpointNotFoundError, CorruptCheckpointError, StorageError
from .format import manifest as manifest_mod
from .format.manifest import TensorRecord
from .format.reader import FileSource
from .format.writer import write_file

__all__ = [
    "MANIFEST",
    "FILES_DIR",
    "plan_shards",
    "write_shards",
    "hash_files",
    "build_manifest",
    "write_manifest",
    "load_manifest",
    "parse_manifest",
    "verify_files",
    "CheckpointSource",
    "is_checkpoint_dir",
]

MANIFEST = "manifest.json"
FILES_DIR = "files"
MAX_SHARD_BYTES = 2 << 30
MAX_MANIFEST_BYTES = 512 << 20
HASH_CHUNK = 4 << 20
_SHARD_RE = re.compile(r"state-\d{5}-of-\d{5}\.safetensors\Z")


def shard_name(index: int, count: int) -> str:
    return f"state-{index + 1:05d}-of-{count:05d}.safetensors"


def plan_shards(leaves: list, max_bytes: int = MAX_SHARD_BYTES) -> list[list]:
    """Group leaves (in order) into shards of at most ``max_bytes`` (a bigger leaf gets its own)."""
    shards: list[list] = []
    current: list = []
    size = 0
    for leaf in leaves:
        nbytes = leaf.nbytes
        if current and size + nbytes > max_bytes:
            shards.append(current)
            current, size = [], 0
        current.append(leaf)
        size += nbytes
    if current:
        shards.append(current)
    return shards


def _ref(leaf: Any) -> dict:
    return {leaf.kind if leaf.kind != "tensor" else "tensor": leaf.name}


def write_shards(directory: str, fl: Any, *, max_shard_bytes: int = MAX_SHARD_BYTES) -> tuple[dict, dict, list]:
    """Write the leaves of flattened ``fl`` as shards in ``directory``.

    Returns (checksums: name -> xxh3, files: name -> shard file, shards: [{"file", "size"}]).
    Each shard is itself a valid modelsafe / safetensors file holding a flat dict of its
    tensors.  Files are flushed but not fsynced; the commit fsyncs the whole directory.
    """
    groups = plan_shards(fl.leaves, max_shard_bytes)
    checksums: dict[str, str] = {}
    placement: dict[str, str] = {}
    shards: list[dict] = []
    for index, group in enumerate(groups):
        name = shard_name(index, len(groups))
        path = os.path.join(directory, name)
        shard = SimpleNamespace(skeleton={"dict": [[leaf.name, _ref(leaf)] for leaf in group]}, leaves=group, aliases={})
        try:
            with open(path, "xb", buffering=4 << 20) as f:
                size = write_file(f, shard, checksums_out=checksums)
        except OSError as exc:
            raise _with_file(exc, path) from exc
        placement.update((leaf.name, name) for leaf in group)
        shards.append({"file": name, "size": size})
    return checksums, placement, shards


def _with_file(exc: OSError, path: str) -> OSError:
    """The same OS error, naming the file it happened to (plain writes do not)."""
    if exc.filename or isinstance(exc, StorageError):
        return exc
    return OSError(exc.errno, exc.strerror or str(exc), path)


def hash_file(path: str) -> tuple[int, str]:
    h = xxhash.xxh3_64()
    size = 0
    with open(path, "rb") as f:
        buf = bytearray(HASH_CHUNK)
        view = memoryview(buf)
        while n := f.readinto(buf):
            h.update(view[:n])
            size += n
    return size, h.hexdigest()


def hash_files(directory: str) -> dict[str, dict]:
    """``files/...`` relative path -> {"size", "xxh3"} for every file a bound save wrote."""
    root = os.path.join(directory, FILES_DIR)
    out: dict[str, dict] = {}
    for current, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files) + [d for d in dirs if os.path.islink(os.path.join(current, d))]:
            path = os.path.join(current, name)
            rel = os.path.relpath(path, directory).replace(os.sep, "/")
            if os.path.islink(path) or not os.path.isfile(path):
                raise StorageError(
                    f"{path}: the bound save function made {rel} a link or special file; write regular files only",
                    path=path,
                )
            size, digest = hash_file(path)
            out[rel] = {"size": size, "xxh3": digest}
    return out


def build_manifest(fl: Any, metadata_node: Any, checksums: dict, placement: dict, shards: list, files: dict, checkpoint: dict) -> dict:
    """The directory manifest: the single-file manifest schema plus shards, files and checkpoint info."""
    leaves = fl.leaves if fl is not None else []
    manifest = manifest_mod.build(
        fl.skeleton if fl is not None else None, leaves, fl.aliases if fl is not None else {}, metadata_node, checksums
    )
    for name, entry in manifest["tensors"].items():
        entry["file"] = placement[name]
    manifest["shards"] = shards
    manifest["files"] = files
    manifest["checkpoint"] = checkpoint
    return manifest


def write_manifest(directory: str, manifest: dict) -> int:
    """Write ``manifest.json`` (the last file of a checkpoint); returns its size."""
    data = json.dumps(manifest, separators=(",", ":"), allow_nan=False, sort_keys=False).encode()
    path = os.path.join(directory, MANIFEST)
    try:
        with open(path, "xb") as f:
            f.write(data)
    except OSError as exc:
        raise _with_file(exc, path) from exc
    return len(data)


# -- reading ------------------------------------------------------------------------

def _corrupt(path: str, what: str, key: str | None = None) -> CorruptCheckpointError:
    where = f"{path}: {key}: " if key else f"{path}: "
    return CorruptCheckpointError(
        f"{where}{what}; the checkpoint is damaged. Load an earlier checkpoint or restore it from a backup",
        path=path, key=key,
    )


def parse_manifest(data: bytes, path: str) -> dict:
    """Parse and validate the structure of a checkpoint ``manifest.json``."""
    try:
        manifest = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise _corrupt(path, f"manifest.json is not valid JSON ({exc})") from None
    manifest_mod.check_version(manifest, path)
    for key, kind in (("tensors", dict), ("shards", list), ("files", dict), ("checkpoint", dict)):
        if not isinstance(manifest.get(key), kind):
            raise _corrupt(path, f"manifest.json has no {key!r} {kind.__name__}")
    for shard in manifest["shards"]:
        if not (isinstance(shard, dict) and isinstance(shard.get("file"), str) and _SHARD_RE.match(shard["file"])
                and type(shard.get("size")) is int and shard["size"] >= 0):
            raise _corrupt(path, f"shard entry {str(shard)[:200]} is not {{'file': 'state-NNNNN-of-NNNNN.safetensors', 'size': N}}")
    for rel, entry in manifest["files"].items():
        parts = rel.split("/")
        if parts[0] != FILES_DIR or len(parts) < 2 or any(p in ("", ".", "..") for p in parts) or "\\" in rel or "\0" in rel:
            raise _corrupt(path, f"bound file {rel!r} lies outside files/")
        if not (isinstance(entry, dict) and isinstance(entry.get("xxh3"), str) and type(entry.get("size")) is int
                and entry["size"] >= 0):
            raise _corrupt(path, f"bound file {rel!r} has no size and xxh3")
    info = manifest["checkpoint"]
    if (type(info.get("step")) is not int or info["step"] < 0 or not isinstance(info.get("name"), str)
            or not isinstance(info.get("metrics"), dict) or not isinstance(info.get("lineage", []), list)
            or not isinstance(info.get("time", ""), str) or not isinstance(info.get("run_id", ""), (str, type(None)))):
        raise _corrupt(path, "manifest.json 'checkpoint' needs a non-negative integer step, a name, a metrics object, "
                             "a time string and a lineage list")
    return manifest


def load_manifest(directory: str) -> dict:
    path = os.path.join(directory, MANIFEST)
    try:
        size = os.stat(path).st_size
        if size > MAX_MANIFEST_BYTES:
            raise _corrupt(directory, f"manifest.json is {size} bytes, over the {MAX_MANIFEST_BYTES}-byte limit")
        with open(path, "rb") as f:
            data = f.read(MAX_MANIFEST_BYTES + 1)
    except FileNotFoundError:
        raise CheckpointNotFoundError(
            f"{directory}: no manifest.json, so this is not a committed checkpoint (an unfinished save is invisible)",
            path=directory,
        ) from None
    return parse_manifest(data, directory)


def verify_files(directory: str, manifest: dict) -> None:
    """Hash every bound file and compare with the manifest; CorruptCheckpointError on a mismatch."""
    for rel, entry in manifest["files"].items():
        path = os.path.join(directory, *rel.split("/"))
        try:
            if os.path.islink(path):
                raise _corrupt(path, "is a link, but the checkpoint recorded a regular file")
            size, digest = hash_file(path)
        except FileNotFoundError:
            raise _corrupt(directory, "the file is missing", rel) from None
        if size != entry["size"] or digest != entry["xxh3"]:
            raise _corrupt(
                path, f"fails its checksum (stored {entry['xxh3']}, {entry['size']} bytes; computed {digest}, {size} bytes)", rel
            )


class CheckpointSource:
    """A committed checkpoint directory as a Source: records span the shard files."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = os.fspath(path)
        self.manifest = load_manifest(self.path)
        self.aliases: dict[str, str] = self.manifest.get("aliases") or {}
        self._shards: dict[str, FileSource] = {}
        try:
            self.records = self._records()
        except BaseException:
            self.close()
            raise

    def _records(self) -> dict[str, TensorRecord]:
        tensors = self.manifest["tensors"]
        records: dict[str, TensorRecord] = {}
        for shard in self.manifest["shards"]:
            name = shard["file"]
            try:
                source = FileSource(os.path.join(self.path, name))
            except CheckpointNotFoundError:
                raise _corrupt(self.path, "the shard is missing", name) from None
            self._shards[name] = source
            for record in source.records.values():
                spec = tensors.get(record.name)
                if not isinstance(spec, dict) or spec.get("file") != name:
                    raise _corrupt(self.path, f"tensor {record.name!r} is in {name} but manifest.json does not place it there")
                if spec.get("xxh3") != record.checksum:
                    raise _corrupt(self.path, f"tensor {record.name!r}: manifest.json and {name} disagree on its checksum")
                framework = spec.get("framework", self.manifest.get("framework")) if record.kind == "tensor" else None
                if framework is not None and not isinstance(framework, str):
                    raise _corrupt(self.path, f"tensor {record.name!r}: framework {str(framework)[:50]} is not a name")
                records[record.name] = dataclasses.replace(record, file=name, framework=framework or record.framework)
        missing = sorted(set(tensors) - set(records))
        if missing:
            raise _corrupt(self.path, f"manifest.json lists tensors no shard holds (first: {missing[0]!r})")
        if not all(isinstance(t, str) and t in records for t in self.aliases.values()):
            raise _corrupt(self.path, "aliases must map names to stored tensors")
        return records

    def buffers(self, *, lazy: bool = False, mmap: bool = True) -> dict[str | None, np.ndarray]:
        return {name: s.buffers(lazy=lazy, mmap=mmap)[None] for name, s in self._shards.items()}

    def verify_record(self, record: TensorRecord, base: np.ndarray) -> None:
        self._shards[record.file].verify_record(record, base)

    def verify_files(self) -> None:
        verify_files(self.path, self.manifest)

    @property
    def checkpoint(self) -> dict:
        return self.manifest["checkpoint"]

    def close(self) -> None:
        for source in self._shards.values():
            source.close()
        self._shards = {}

    def __enter__(self) -> "CheckpointSource":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def is_checkpoint_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, MANIFEST))


sources.register_directory_opener(is_checkpoint_dir, lambda path, **_: CheckpointSource(path))
