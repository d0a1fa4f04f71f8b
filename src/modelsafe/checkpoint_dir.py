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
import errno as errno_mod
import json
import os
import re
import stat as stat_mod
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from . import sources
from .directory import RemoteDirectory, hash_fd, open_directory_of
from .errors import CheckpointNotFoundError, CheckpointRemovedError, CorruptCheckpointError, ModelsafeError, StorageError
from .format import checksum, manifest as manifest_mod
from .format.manifest import TensorRecord
from .format.plan import FlatState, Payload
from .format.reader import FileSource
from .format.writer import HashedFile, OnBytes, hash_payloads, write_file, write_hashed
from .loading import buffers_on_demand, fetch_records
from .run_file import MAX_TEXT, check_lineage
from .storage.commit import MAX_MANIFEST_BYTES
from .storage.local import open_directory

__all__ = [
    "MANIFEST",
    "FILES_DIR",
    "plan_shards",
    "ShardIndex",
    "write_shards",
    "hash_files",
    "disk_usage",
    "build_manifest",
    "write_manifest",
    "parse_manifest",
    "removed_error",
    "CheckpointSource",
    "is_checkpoint_dir",
    "open_remote_checkpoint",
    "copy_bound_files",
    "register_layout",
]

MANIFEST = "manifest.json"
FILES_DIR = "files"
MAX_SHARD_BYTES = 2 << 30
# Deduplicating saves: payloads of 4 MiB or more get a shard each; smaller ones share
# shards of up to 4 MiB.  A 7B-parameter model then has ~300 shards; a trained head packed
# with frozen neighbours rewrites at most 4 MiB of them per checkpoint.
STABLE_SHARD_BYTES = 4 << 20
_LINK_REFUSED = (errno_mod.EXDEV, errno_mod.EPERM, errno_mod.ENOTSUP, errno_mod.EMLINK, errno_mod.EACCES)
_SHARD_RE = re.compile(r"state-\d{5}-of-\d{5}\.safetensors\Z")


def shard_name(index: int, count: int) -> str:
    return f"state-{index + 1:05d}-of-{count:05d}.safetensors"


def plan_shards(payloads: Sequence[Payload], max_bytes: int = MAX_SHARD_BYTES) -> list[list[Payload]]:
    """Group payloads into shards: a payload of ``max_bytes`` or more alone, smaller ones (in
    order) together in shards of at most ``max_bytes``.

    With ``max_bytes`` = :data:`STABLE_SHARD_BYTES` (deduplicating saves) the boundaries
    are stable: a frozen tensor of that size or more lands in a shard of the same bytes in
    every checkpoint whatever its neighbours do; only small payloads share shards (a
    changed one rewrites at most ``max_bytes`` of unchanged neighbours).
    """
    shards: list[list[Payload]] = []
    current: list[Payload] = []
    size = 0
    for payload in payloads:
        nbytes = payload.nbytes
        if nbytes >= max_bytes:
            shards.append([payload])
            continue
        if current and size + nbytes > max_bytes:
            shards.append(current)
            current, size = [], 0
        current.append(payload)
        size += nbytes
    if current:
        shards.append(current)
    return shards


@dataclasses.dataclass
class ShardIndex:
    """Shards of a run's existing checkpoints by content identity, for deduplicating saves.

    ``shards``: identity -> (checkpoint directory, shard file, size).  An entry may be
    stale (its checkpoint pruned): linking it then fails and the shard is written.
    ``refused``: the errno of a file system that refused a hard link (dedup stops trying).
    ``linked``: the paths the last :func:`write_shards` linked (durable already).
    """

    shards: dict = dataclasses.field(default_factory=dict)
    linked: set = dataclasses.field(default_factory=set)
    refused: int | None = None
    warned: bool = False

    def add(self, checkpoint: str, manifest: dict) -> None:
        """Index the shards of committed ``checkpoint`` whose manifest records their identity."""
        for shard in manifest["shards"]:
            identity = shard.get("identity")
            if isinstance(identity, str):
                self.shards[identity] = (checkpoint, shard["file"], shard["size"])

    def forget(self, checkpoint: str) -> None:
        """Drop the entries of deleted ``checkpoint`` (a long run would otherwise grow the index forever)."""
        self.shards = {k: v for k, v in self.shards.items() if v[0] != checkpoint}


def write_shards(directory: str, state: FlatState, *, max_shard_bytes: int = MAX_SHARD_BYTES,
                 index: ShardIndex | None = None, on_bytes: OnBytes = None) -> tuple[dict, dict, list]:
    """Write the payloads of flattened ``state`` as shards in ``directory``.

    Returns (checksums: name -> xxh3, files: name -> shard file, shards: [{"file", "size"}]).
    Each shard is itself a valid modelsafe / safetensors file holding a flat dict of its
    tensors.  Files are flushed but not fsynced; the commit fsyncs the whole directory.

    With an ``index`` (deduplication) the boundaries are stable, every shard's payloads
    are hashed first, and a shard equal to one of an existing checkpoint is hard-linked
    instead of written; each shard entry then records its ``identity`` (the xxh3 of its
    header, which holds every name, dtype, shape and payload checksum).  ``on_bytes`` hears
    of every payload written or linked (progress bars).
    """
    groups = plan_shards(state.payloads, STABLE_SHARD_BYTES if index is not None else max_shard_bytes)
    if index is not None:
        index.linked = set()
    checksums: dict[str, str] = {}
    placement: dict[str, str] = {}
    shards: list[dict] = []
    for position, group in enumerate(groups):
        name = shard_name(position, len(groups))
        path = os.path.join(directory, name)
        shard = FlatState.of_payloads(group)
        try:
            if index is None:
                with open(path, "xb", buffering=4 << 20) as f:
                    entry = {"file": name, "size": write_file(f, shard, checksums_out=checksums, on_bytes=on_bytes)}
            else:
                entry = _write_or_link(path, shard, index, checksums, on_bytes)
        except OSError as exc:
            raise _with_file(exc, path) from exc
        placement.update((p.name, name) for p in group)
        shards.append(entry)
    return checksums, placement, shards


def _write_or_link(path: str, shard: FlatState, index: ShardIndex, checksums: dict, on_bytes: OnBytes) -> dict:
    """Hard-link an equal shard of an earlier checkpoint to ``path``, else write ``shard`` there.

    With nothing to link from (a run's first checkpoint, a file system without hard
    links) each payload is hashed while it is written, in cache: one pass over memory.
    Measured on a 1 GiB first save: hashing all first, then writing, took 1.36x as long.
    """
    if not index.shards or index.refused is not None:
        headers: list[bytes] = []
        with open(path, "xb", buffering=4 << 20) as f:
            size = write_file(f, shard, checksums_out=checksums, header_out=headers, on_bytes=on_bytes)
        return {"file": os.path.basename(path), "size": size, "identity": checksum.digest(headers[0])}
    hashed = hash_payloads(shard)
    checksums.update(hashed.checksums)
    entry = {"file": os.path.basename(path), "size": hashed.size, "identity": hashed.identity}
    earlier = index.shards.get(hashed.identity)
    if earlier is not None and index.refused is None and _link_equal(earlier, path, hashed, index):
        index.linked.add(path)
        if on_bytes is not None:
            on_bytes(shard.nbytes)
        return entry
    with open(path, "xb", buffering=4 << 20) as f:
        write_hashed(f, hashed, on_bytes=on_bytes)
    return entry


def _link_equal(earlier: tuple, path: str, hashed: HashedFile, index: ShardIndex) -> bool:
    """Link shard ``earlier`` (checkpoint, file, size) to ``path`` if it holds exactly ``hashed``'s header and size.

    The earlier shard is opened relative to its checkpoint without following links, and
    what was linked is checked (size, regular file, header bytes) before it is kept: a
    stale index entry, a pruned checkpoint or a tampered manifest costs a write, never
    a wrong shard.
    """
    checkpoint, file, size = earlier
    if size != hashed.size:
        return False
    try:
        dir_fd = open_directory(checkpoint, shown=checkpoint)
    except (OSError, ModelsafeError):
        return False
    try:
        os.link(file, path, src_dir_fd=dir_fd, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in _LINK_REFUSED:
            index.refused = exc.errno  # the file system has no hard links here: write from now on
        return False
    finally:
        os.close(dir_fd)
    if _holds(path, hashed):
        return True
    os.unlink(path)
    return False


def _holds(path: str, hashed: HashedFile) -> bool:
    """True when the file at ``path`` is a regular file of ``hashed``'s size starting with its header."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return False
    try:
        st = os.fstat(fd)
        return stat_mod.S_ISREG(st.st_mode) and st.st_size == hashed.size and \
            os.pread(fd, len(hashed.header), 0) == hashed.header
    finally:
        os.close(fd)


def _with_file(exc: OSError, path: str) -> OSError:
    """The same OS error, naming the file it happened to (plain writes do not)."""
    if exc.filename or isinstance(exc, StorageError):
        return exc
    return OSError(exc.errno, exc.strerror or str(exc), path)


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


def disk_usage(paths: list[str]) -> tuple[list[int], int]:
    """(new bytes of each checkpoint directory in ``paths``, oldest first; the bytes all of them take on disk).

    A file hard-linked into several checkpoints (deduplication, fork) is one file on
    disk: it counts once, as new bytes of the oldest checkpoint that holds it.  Links
    and special files are not followed or counted; a checkpoint that vanishes meanwhile
    counts what was seen.
    """
    seen: set[tuple[int, int]] = set()
    new: list[int] = []
    for path in paths:
        total = 0
        for st in _regular_files(path):
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
        new.append(total)
    return new, sum(new)


def _regular_files(path: str) -> Iterator[os.stat_result]:
    for current, _dirs, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(current, name))
            except OSError:
                continue
            if stat_mod.S_ISREG(st.st_mode):
                yield st


def build_manifest(state: FlatState | None, metadata_node: Any, checksums: dict, placement: dict, shards: list,
                   files: dict, checkpoint: dict) -> dict:
    """The directory manifest: the single-file manifest schema plus shards, files and checkpoint info."""
    manifest = manifest_mod.build(state, state.payloads if state is not None else (), metadata_node, checksums)
    for name, entry in manifest["tensors"].items():
        entry["file"] = placement[name]
    manifest["shards"] = shards
    manifest["files"] = files
    manifest["checkpoint"] = checkpoint
    return manifest


def write_manifest(directory: str, manifest: dict) -> int:
    """Write ``manifest.json`` (the last file of a checkpoint); returns its size.

    The checkpoint block (which carries the run's id and lineage) is checked first, as a
    reader will check it, so a bad one fails the save before anything is committed.
    """
    _check_info(manifest["checkpoint"], directory)
    data = json.dumps(manifest, separators=(",", ":"), allow_nan=False, sort_keys=False).encode()
    path = os.path.join(directory, MANIFEST)
    try:
        with open(path, "xb") as f:
            f.write(data)
    except OSError as exc:
        raise _with_file(exc, path) from exc
    return len(data)


# -- reading ------------------------------------------------------------------------
#
# Every file of a checkpoint is read through a CheckpointDirectory (see .directory): a
# local one opens each file relative to a descriptor of the directory, refusing links and
# special files on the opened descriptor; a remote one reads objects by bounded byte
# ranges.  Nothing is followed out of the checkpoint, nothing blocks, and no read is
# larger than the file really is (the manifest: MAX_MANIFEST_BYTES).

def _corrupt(path: str, what: str, key: str | None = None) -> CorruptCheckpointError:
    where = f"{path}: tensor {key!r}: " if key is not None else f"{path}: "
    return CorruptCheckpointError(
        f"{where}{what}; the checkpoint is damaged. Load an earlier checkpoint or restore it from a backup",
        path=path, key=key,
    )


def removed_error(path: str) -> CheckpointRemovedError:
    """The error for a checkpoint that vanished while being read: retention, not damage."""
    return CheckpointRemovedError(
        f"{path}: the checkpoint was removed while it was being read (by the run's retention, keep_last/keep_best, "
        "or a delete); it is not damaged. Load one the run keeps, such as RUN@latest",
        path=path,
    )


_INFO_TYPES = {"name": (str,), "step": (int,), "time": (str,), "metrics": (dict,), "run_id": (str, type(None))}
_METRIC_STRINGS = ("nan", "inf", "-inf")  # non-finite floats, as the writer stores them


def _check_tensors(manifest: dict, path: str) -> None:
    shard_files = {shard["file"] for shard in manifest["shards"]}
    for name, spec in manifest["tensors"].items():
        if not isinstance(spec, dict):
            raise _corrupt(path, "manifest.json entry is not an object", name)
        if not (isinstance(spec.get("xxh3"), str) and re.fullmatch(r"[0-9a-f]{16}", spec["xxh3"])):
            raise _corrupt(path, f"checksum {str(spec.get('xxh3'))[:50]!r} is not 16 hex digits", name)
        if not isinstance(spec.get("file"), str) or spec["file"] not in shard_files:
            raise _corrupt(path, f"placed in {str(spec.get('file'))[:80]!r}, which is not one of the shards", name)
        for key, kind in (("kind", str), ("framework", str), ("attrs", dict)):
            if key in spec and not isinstance(spec[key], kind):
                raise _corrupt(path, f"{key!r} is not a {kind.__name__}", name)
    aliases = manifest.get("aliases", {})
    if not isinstance(aliases, dict) or not all(
        isinstance(a, str) and isinstance(t, str) and t in manifest["tensors"] and a not in manifest["tensors"]
        for a, t in aliases.items()
    ):
        raise _corrupt(path, "manifest.json 'aliases' must map new names to stored tensors")
    if not isinstance(manifest.get("framework"), (str, type(None))):
        raise _corrupt(path, "manifest.json 'framework' is not a name")


def _check_info(info: dict, path: str) -> None:
    for key, kinds in _INFO_TYPES.items():
        if type(info.get(key, "" if key in ("time", "run_id") else None)) not in kinds:
            raise _corrupt(path, f"manifest.json 'checkpoint' {key!r} is {str(info.get(key))[:50]!r}, not "
                                 f"a {' or '.join('null' if k is type(None) else k.__name__ for k in kinds)}")
    if info["step"] < 0 or len(info["name"]) > MAX_TEXT or len(info.get("time", "")) > 64:
        raise _corrupt(path, "manifest.json 'checkpoint' needs a non-negative step and a short name and time")
    for metric, value in info["metrics"].items():
        if len(metric) > MAX_TEXT or not (type(value) in (int, float) or value in _METRIC_STRINGS):
            raise _corrupt(path, f"manifest.json metric {metric[:80]!r} is {str(value)[:50]!r}, not a number")
    check_lineage(info.get("lineage", []), path, "manifest.json 'checkpoint' 'lineage'")


def parse_manifest(data: bytes, path: str) -> dict:
    """Parse a checkpoint ``manifest.json`` and check every field the checkpoint layer uses.

    The same parser serves loading, listing, verifying and the writer's read-back
    before retention, so all of them agree on what is damaged.  (The tree, metadata
    and per-tensor dtype/shape/attrs are checked where they are decoded.)
    """
    try:
        manifest = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise _corrupt(path, f"manifest.json is not valid JSON ({str(exc)[:100]})") from None
    manifest_mod.check_version(manifest, path)
    for key, kind in (("tensors", dict), ("shards", list), ("files", dict), ("checkpoint", dict)):
        if not isinstance(manifest.get(key), kind):
            raise _corrupt(path, f"manifest.json has no {key!r} {kind.__name__}")
    for shard in manifest["shards"]:
        if not (isinstance(shard, dict) and isinstance(shard.get("file"), str) and _SHARD_RE.match(shard["file"])
                and type(shard.get("size")) is int and shard["size"] >= 0):
            raise _corrupt(path, f"shard entry {str(shard)[:200]} is not {{'file': 'state-NNNNN-of-NNNNN.safetensors', 'size': N}}")
    if len({shard["file"] for shard in manifest["shards"]}) != len(manifest["shards"]):
        raise _corrupt(path, "manifest.json lists a shard twice")
    for rel, entry in manifest["files"].items():
        parts = rel.split("/")
        if parts[0] != FILES_DIR or len(parts) < 2 or any(p in ("", ".", "..") for p in parts) or "\\" in rel or "\0" in rel:
            raise _corrupt(path, f"bound file {rel[:200]!r} lies outside files/")
        if not (isinstance(entry, dict) and isinstance(entry.get("xxh3"), str) and type(entry.get("size")) is int
                and entry["size"] >= 0):
            raise _corrupt(path, f"bound file {rel[:200]!r} has no size and xxh3")
    _check_tensors(manifest, path)
    _check_info(manifest["checkpoint"], path)
    return manifest


def hash_file(path: str) -> tuple[int, str]:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        return hash_fd(fd)
    finally:
        os.close(fd)


class CheckpointSource:
    """A committed checkpoint directory as a Source: records span the shard files.

    ``directory``: a local path, or a :class:`~.directory.CheckpointDirectory` (a
    :class:`~.directory.RemoteDirectory` for a checkpoint on an object store: its shards
    are read by byte ranges, see :meth:`fetch`).  ``problems``: a list to collect every
    problem into (verify) instead of raising the first one (load); a manifest that cannot
    be read is raised either way.  ``shards``: False reads the manifest only.  A
    checkpoint that disappears while it is being opened or read raises
    CheckpointRemovedError: removed by retention, not damaged.
    """

    def __init__(self, directory: Any, *, problems: list | None = None, shards: bool = True) -> None:
        self._problems = problems
        self._shards: dict[str, FileSource] = {}
        self._directory = open_directory_of(directory)
        self.path = self._directory.path
        try:
            self.manifest_bytes = self._read_manifest()
            self.manifest = parse_manifest(self.manifest_bytes, self._inside(MANIFEST))
            self.aliases: dict[str, str] = self.manifest.get("aliases") or {}
            self.records = self._records() if shards else {}
        except BaseException:
            self.close()
            raise

    # -- opening ---------------------------------------------------------------------
    def _inside(self, *parts: str) -> str:
        return self._directory.inside(*parts)

    def removed(self) -> bool:
        """True when the checkpoint opened is no longer at its path (retention removed it)."""
        return self._directory.removed()

    def _missing(self, error: ModelsafeError) -> ModelsafeError:
        """``error`` about a missing file, unless the whole checkpoint was removed meanwhile."""
        return removed_error(self.path) if self.removed() else error

    def _read_manifest(self) -> bytes:
        try:
            return self._directory.read_small(MANIFEST, MAX_MANIFEST_BYTES, "a checkpoint manifest")
        except FileNotFoundError:
            raise self._missing(CheckpointNotFoundError(
                f"{self.path}: no manifest.json, so this is not a committed checkpoint (an unfinished save is invisible)",
                path=self.path,
            )) from None

    def _report(self, error: ModelsafeError) -> None:
        if self._problems is None:
            raise error
        self._problems.append(error)

    def _opened_shard(self, name: str, size: int, source: FileSource | Exception) -> FileSource | None:
        """``source`` as the directory opened it, or None with the problem reported."""
        shown = self._inside(name)
        if isinstance(source, FileNotFoundError):
            self._report(self._missing(_corrupt(shown, "the shard is missing")))
            return None
        if isinstance(source, ModelsafeError):
            self._report(self._missing(source) if isinstance(source, StorageError) else source)
            return None
        if source.file_size != size:  # a header that fits a file of another size still places its tensors
            source.close()
            self._report(_corrupt(shown, f"the shard is {source.file_size:,} bytes, manifest.json says {size:,}: it "
                                         "was truncated or replaced"))
            return None
        return source

    def _records(self) -> dict[str, TensorRecord]:
        tensors = self.manifest["tensors"]
        records: dict[str, TensorRecord] = {}
        sizes = {shard["file"]: shard["size"] for shard in self.manifest["shards"]}
        for name, opened in self._directory.open_shards(list(sizes)):
            source = self._opened_shard(name, sizes[name], opened)
            if source is None:
                continue
            self._shards[name] = source
            for record in source.records.values():
                for problem in _placement_problems(self._inside(name), name, record, tensors.get(record.name)):
                    self._report(problem)
                framework = tensors.get(record.name, {}).get("framework", self.manifest.get("framework"))
                framework = framework if record.kind == "tensor" else None
                records[record.name] = dataclasses.replace(record, file=name, framework=framework or record.framework)
        for name in tensors.keys() - records.keys():
            if tensors[name]["file"] in self._shards:  # a shard that is unreadable is reported once
                self._report(_corrupt(self._inside(tensors[name]["file"]), "manifest.json places it in this shard, "
                                      "which does not hold it", name))
        return records

    # -- bytes -----------------------------------------------------------------------
    def buffers(self, *, lazy: bool = False, mmap: bool = True) -> dict[str | None, np.ndarray]:
        return {name: s.buffers(lazy=lazy, mmap=mmap)[None] for name, s in self._shards.items()}

    def sparse_buffers(self) -> dict[str | None, np.ndarray]:
        """Shard -> data section that :meth:`fetch` fills (remote shards), or maps (local ones): ms.open's reader."""
        return {name: buffers_on_demand(s)[None] for name, s in self._shards.items()}

    def fetch(self, records: Any) -> None:
        """Read the bytes of ``records`` where the shards are read on demand (byte ranges of a remote object)."""
        by_shard: dict[str, list] = {}
        for record in records:
            by_shard.setdefault(record.file, []).append(record)
        for name, wanted in by_shard.items():
            try:
                fetch_records(self._shards[name], wanted)
            except ModelsafeError as exc:  # gone or replaced under the reader: retention, not damage
                raise self._missing(exc) from None

    def release(self) -> None:
        """Drop the bytes :meth:`fetch` read so far (see RangeFileSource.release)."""
        for shard in self._shards.values():
            if hasattr(shard, "release"):
                shard.release()

    def verify_record(self, record: TensorRecord, base: np.ndarray) -> None:
        self._shards[record.file].verify_record(record, base)

    def shard_id(self, name: str) -> tuple[int, int]:
        """(st_dev, st_ino) of open shard ``name``: checkpoints sharing it (dedup) share its bytes."""
        return self._shards[name].file_id()

    def bound_file_checks(self) -> Iterator[tuple[str, int, ModelsafeError | None]]:
        """(path, bytes hashed, problem or None) for ``files/``: its tree holds only regular
        files and directories, and every file the manifest records matches its checksum."""
        for problem in self.bound_tree_problems():
            yield problem.path or self._inside(FILES_DIR), 0, problem
        for rel, entry in self.manifest["files"].items():
            shown = self._inside(*rel.split("/"))
            try:
                size, digest = self._directory.hash_file(rel.split("/"))
            except FileNotFoundError:
                yield shown, 0, self._missing(_corrupt(shown, "the bound file is missing"))
                continue
            except ModelsafeError as exc:
                yield shown, 0, exc
                continue
            problem = None
            if size != entry["size"] or digest != entry["xxh3"]:
                problem = _corrupt(shown, f"fails its checksum (stored {entry['xxh3']}, {entry['size']} bytes; "
                                          f"computed {digest}, {size} bytes)")
            yield shown, size, problem

    def verify_files(self) -> None:
        """Raise the first problem of :meth:`bound_file_checks` (links, special files, checksums)."""
        for _path, _size, problem in self.bound_file_checks():
            if problem is not None:
                raise problem

    def bound_tree_problems(self) -> Iterator[ModelsafeError]:
        """Every link or special file in ``files/`` (a bound ``load`` would follow it out)."""
        return self._directory.tree_problems(FILES_DIR)

    @property
    def checkpoint(self) -> dict:
        return self.manifest["checkpoint"]

    @property
    def directory(self) -> Any:
        """Where the checkpoint's files are read from (a local one's ``dir_fd`` keeps opens inside it)."""
        return self._directory

    @property
    def dir_fd(self) -> int:
        """The open local checkpoint directory (files opened relative to it stay inside it)."""
        return self._directory.dir_fd

    def close(self) -> None:
        for source in self._shards.values():
            source.close()
        self._shards = {}
        self._directory.close()

    def __enter__(self) -> "CheckpointSource":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _placement_problems(shown: str, shard: str, record: TensorRecord, spec: dict | None) -> Iterator[CorruptCheckpointError]:
    """A shard's tensor that manifest.json does not place there, or records with another checksum."""
    if spec is None or spec["file"] != shard:
        yield _corrupt(shown, f"the shard holds tensor {record.name!r}, but manifest.json does not place it there", record.name)
    elif spec["xxh3"] != record.checksum:
        yield _corrupt(shown, f"manifest.json and the shard disagree on its checksum ({spec['xxh3']} and {record.checksum})", record.name)


def is_checkpoint_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, MANIFEST))


def open_checkpoint(path: str, **_: Any) -> CheckpointSource:
    """The opener of checkpoint directories in :mod:`.sources`' registry."""
    return CheckpointSource(path)


# (predicate on a checkpoint's parsed manifest.json, Source class taking a CheckpointDirectory):
# layouts refining the plain one (ms.distributed's) register here; tried newest first
_LAYOUTS: list[tuple[Callable[[dict], bool], Callable[[Any], Any]]] = []


def register_layout(matches: Callable[[dict], bool], source: Callable[[Any], Any]) -> None:
    """Read checkpoints whose manifest ``matches`` with ``source(directory)`` (remote checkpoints are opened so)."""
    _LAYOUTS.insert(0, (matches, source))


def open_remote_checkpoint(url: str, storage_options: dict | None = None, *, problems: list | None = None) -> Any:
    """The checkpoint directory at ``url`` on an object store as a Source read by byte ranges.

    Only the manifest and the shard headers are read here; tensors are read when asked
    for (``ms.open``), or shard by shard in ranges (``ms.load``).  Nothing is downloaded.
    ``problems``: collect the problems of a plain checkpoint (verify), see CheckpointSource.
    """
    directory = RemoteDirectory(url, storage_options)
    try:
        data = directory.read_small(MANIFEST, MAX_MANIFEST_BYTES, "a checkpoint manifest")
    except FileNotFoundError:
        raise CheckpointNotFoundError(f"{url}: no manifest.json, so this is not a committed checkpoint (an unfinished "
                                      "save is invisible)", path=url) from None
    try:
        manifest = json.loads(data)
    except (ValueError, RecursionError):
        manifest = None  # the Source's parser says what is wrong with it
    source = next((s for matches, s in _LAYOUTS if isinstance(manifest, dict) and matches(manifest)), None)
    return source(directory) if source is not None else CheckpointSource(directory, problems=problems)


def copy_bound_files(url: str, target: str, storage_options: dict | None = None) -> str:
    """Copy the manifest and the ``files/`` a bound save wrote of remote checkpoint ``url`` into new directory ``target``.

    Only names the checked manifest lists are copied (inside ``files/``, no ``..``), each
    bounded by its object's size; the copy is then read and verified as a local checkpoint.
    """
    directory = RemoteDirectory(url, storage_options)
    try:
        data = directory.read_small(MANIFEST, MAX_MANIFEST_BYTES, "a checkpoint manifest")
    except FileNotFoundError:
        raise CheckpointNotFoundError(f"{url}: no manifest.json, so this is not a committed checkpoint", path=url) from None
    manifest = parse_manifest(data, directory.inside(MANIFEST))
    os.makedirs(target)
    with open(os.path.join(target, MANIFEST), "xb") as f:
        f.write(data)
    for rel in manifest["files"]:
        parts = rel.split("/")
        os.makedirs(os.path.join(target, *parts[:-1]), exist_ok=True)
        try:
            directory.download(parts, os.path.join(target, *parts))
        except FileNotFoundError:
            pass  # the local check reports it missing
    return target


sources.register_directory_opener(is_checkpoint_dir, open_checkpoint)
sources.register_remote_checkpoint_opener(open_remote_checkpoint)
