"""Copying checkpoints out of a run: files for ``fork`` (hard links), the model for ``export``.

Both work on the stored form: nothing is decoded, rebuilt or imported, and every
payload ``export`` copies is verified against its checksum on the way.
"""

from __future__ import annotations

import errno as errno_mod
import os
import shutil
from typing import Any

from .api import encode_metadata
from .checkpoint_dir import CheckpointSource
from .errors import InvalidArgumentError
from .format import checksum
from .format.plan import NO_ATTRS, FlatState, Payload
from .format.writer import write_file
from .loading import decode_metadata
from .progress import progress_bar
from .sources import directory_opener
from .storage.local import atomic_file, open_directory, open_regular
from .tree import walk_refs

__all__ = ["link_payloads", "export_checkpoint"]


def link_payloads(source: CheckpointSource, staging: str, *, progress: bool = False) -> None:
    """Give ``staging`` the shards and bound files of open checkpoint ``source`` (hard links where possible).

    Every name is resolved relative to the checkpoint's open directory and no link is
    followed, so nothing outside the checkpoint can be linked or copied in (the caller
    has checked ``files/`` holds no link: :meth:`CheckpointSource.bound_file_checks`).
    ``progress``: a bar of the bytes linked or copied (copies across devices take long).
    """
    manifest = source.manifest
    files = [(shard["file"], shard["size"]) for shard in manifest["shards"]]
    files += [(rel, entry["size"]) for rel, entry in manifest["files"].items()]
    with progress_bar(progress, f"forking {os.path.basename(source.path)}", sum(size for _, size in files)) as on_bytes:
        for rel, size in files:
            parts = rel.split("/")
            os.makedirs(os.path.join(staging, *parts[:-1]), exist_ok=True)
            _link_or_copy(source, rel, os.path.join(staging, *parts))
            if on_bytes is not None:
                on_bytes(size)


def export_checkpoint(checkpoint: str, path: str, *, key: str | None = None, origin: dict | None = None,
                      progress: bool = False) -> None:
    """Write entry ``key`` of the saved dict of ``checkpoint`` as one file; by default its
    ``"model"`` entry, or the whole state when it has none.  A ``key`` the state lacks is an error.

    The subtree is copied as stored, recipe included; tensor names lose the ``key.``
    prefix, so an exported state_dict keeps its keys.  ``origin`` is recorded in the
    metadata as ``exported_from``.  Only the default ``"model"`` falls back to the whole
    state; another ``key`` the saved dict lacks is an error (a typo never exports everything).
    """
    opener = directory_opener(checkpoint) or CheckpointSource  # a sharded checkpoint is read as whole tensors
    with opener(checkpoint) as source:
        node, prefix = _subtree(source.manifest.get("tree"), key or "model")
        if key is not None and not prefix:
            raise InvalidArgumentError(
                f"{checkpoint}: the saved state has no entry {key!r} to export; its entries: "
                f"{', '.join(map(repr, _entry_names(source.manifest.get('tree')))) or 'none (it is not a dict)'}",
                path=checkpoint, key=key,
            )
        fl = _copy_subtree(source, node, prefix)
        metadata = decode_metadata(source)
        metadata = dict(metadata) if isinstance(metadata, dict) else {}
        if origin is not None:
            metadata["exported_from"] = origin
        with progress_bar(progress, f"exporting {os.path.basename(path)}", fl.nbytes) as on_bytes, atomic_file(path) as f:
            write_file(f, fl, metadata_node=encode_metadata(metadata), user_metadata=metadata, on_bytes=on_bytes)


def _link_or_copy(source: CheckpointSource, rel: str, dst: str) -> None:
    """Hard-link ``rel`` of the checkpoint to ``dst`` (the link itself, never a target); copy across devices."""
    try:
        os.link(rel, dst, src_dir_fd=source.dir_fd, follow_symlinks=False)
    except OSError as exc:
        if exc.errno not in (errno_mod.EXDEV, errno_mod.EPERM, errno_mod.ENOTSUP, errno_mod.EMLINK, errno_mod.EACCES):
            raise
        parts = rel.split("/")
        fds = [source.dir_fd]
        try:
            for part in parts[:-1]:
                fds.append(open_directory(part, dir_fd=fds[-1], shown=os.path.join(source.path, part)))
            fd = open_regular(parts[-1], dir_fd=fds[-1], shown=os.path.join(source.path, rel))
        finally:
            for opened in fds[1:]:
                os.close(opened)
        with os.fdopen(fd, "rb") as src, open(dst, "xb") as out:
            shutil.copyfileobj(src, out)


def _subtree(tree: Any, key: str) -> tuple[Any, str]:
    """The node under ``key`` of a saved dict, and the leaf-name prefix of its tensors."""
    if isinstance(tree, dict) and isinstance(tree.get("dict"), list):
        for item in tree["dict"]:
            if isinstance(item, list) and len(item) == 2 and item[0] == key:
                return item[1], f"{key}."
    return tree, ""


def _entry_names(tree: Any) -> list:
    """The keys of a saved dict's entries (none for any other tree)."""
    if isinstance(tree, dict) and isinstance(tree.get("dict"), list):
        return [item[0] for item in tree["dict"] if isinstance(item, list) and len(item) == 2]
    return []


def _rename_refs(node: Any, mapping: dict[str, str]) -> Any:
    if isinstance(node, list):
        return [_rename_refs(v, mapping) for v in node]
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            if k in ("tensor", "bytes", "pickle") and isinstance(v, str):
                out[k] = mapping.get(v, v)
            else:
                out[k] = _rename_refs(v, mapping)
        return out
    return node


def _copy_subtree(source: CheckpointSource, node: Any, prefix: str) -> FlatState:
    """The payloads under ``node``, verified, renamed relative to ``prefix``; their checksums travel along."""
    names = list(dict.fromkeys(name for _, name in walk_refs(node)))
    aliases = {a: t for a, t in source.aliases.items() if t in names and a.startswith(prefix)}
    mapping = {n: (n[len(prefix):] if n.startswith(prefix) and n != prefix else n) for n in [*names, *aliases]}
    if len(set(mapping.values())) != len(mapping):
        mapping = {n: n for n in mapping}
    buffers = source.buffers(lazy=True)
    payloads = []
    for name in names:
        record = source.records[name]
        base = buffers[record.file]
        source.verify_record(record, base)
        tensor = record.kind == "tensor"
        payloads.append(Payload(
            mapping[name], record.kind, record.dtype.name, tuple(record.shape), record.framework if tensor else None,
            base[record.begin:record.end], memoryview, dict(record.attrs) if tensor and record.attrs else NO_ATTRS,
            # a sharded tensor's record holds its chunks' checksums: the copy is hashed as it is written
            checksum=record.checksum if checksum.is_digest(record.checksum) else None, where=mapping[name],
        ))
    aliases = {mapping[a]: mapping[t] for a, t in aliases.items()}
    return FlatState(_rename_refs(node, mapping), tuple(payloads), aliases)
