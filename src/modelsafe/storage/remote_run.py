"""A run of checkpoints on an object store (fsspec): the manifest, written last, is the commit.

Object stores have no rename and no directories, so :class:`RemoteRunStorage` commits
the way the format allows: a checkpoint ``NAME`` is the prefix ``RUN/NAME/``, and it is
committed when ``RUN/NAME/manifest.json`` exists — readers list only prefixes holding one.

* ``stage(name)`` gives a local temporary directory: the checkpoint is written there by
  the same code as a local one (shards, bound ``files/``, manifest);
* ``commit(staging, name)`` first writes a staging marker ``RUN/.NAME.modelsafe-tmp-TOKEN``,
  uploads every payload (streamed, multipart: never a whole file in memory), then
  ``manifest.json`` — the commit — and removes the marker;
* ``delete(name)`` writes a deleting marker, removes the manifest first (the checkpoint
  vanishes in one request), then the payloads, then the marker;
* ``clean_leftovers()`` (the next writer) finishes what a killed writer's markers name:
  the prefix of an uncommitted checkpoint or of one being deleted is removed.

A save killed at any point therefore leaves the previous checkpoints listed and
loadable, and the new one either committed or invisible.  Object stores have no lock:
one writer per run is the caller's job (``lock()`` records the writer, it cannot refuse a
second one), and deduplication by hard links does not apply (payloads are uploaded).
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile

from ..errors import CorruptCheckpointError, ModelsafeError
from .commit import (
    DELETING_MARK,
    LOCK_NAME,
    MANIFEST,
    MAX_MANIFEST_BYTES,
    MAX_RUN_FILE,
    RUN_FILE,
    STAGING_MARK,
    _hidden,
    _split_hidden,
)
from .remote import filesystem, remote_error

# Uploads from the staging directory: parts of UPLOAD_CHUNK, UPLOAD_PARALLEL at a time.  A save
# then holds ~33 MiB of file data in memory whatever the checkpoint's size (measured with
# tracemalloc on a 64 MiB checkpoint; s3fs's default, 10 parallel parts, took 130 MiB).
UPLOAD_CHUNK = 8 << 20
UPLOAD_PARALLEL = 2


class RemoteRunStorage:
    """A run directory at an fsspec URL (``s3://bucket/runs/exp1``)."""

    links = False  # payloads cannot be hard-linked between checkpoints: no deduplication

    def __init__(self, url: str, storage_options: dict | None = None) -> None:
        self.location = url.rstrip("/")
        self.fs, self.root = filesystem(self.location, storage_options)
        self.root = self.root.rstrip("/")
        self.storage_options = storage_options
        self.locked = False

    def path(self, name: str) -> str:
        return f"{self.location}/{name}"

    checkpoint_path = path

    def _key(self, *parts: str) -> str:
        return "/".join((self.root, *parts))

    # -- reading -------------------------------------------------------------------
    def entries(self) -> list[str]:
        """Names of the visible prefixes of the run (each may be a checkpoint)."""
        self.fs.invalidate_cache()  # another writer may have committed since the last listing
        try:
            found = self.fs.ls(self.root, detail=True)
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise remote_error(self.location, "listing the run", exc) from exc
        names = [item["name"].rstrip("/").rpartition("/")[2] for item in found if item.get("type") == "directory"]
        return [n for n in names if n and not n.startswith(".")]

    def exists(self, name: str) -> bool:
        return bool(self.fs.exists(self._key(name)))

    def _read_small(self, key: str, limit: int, what: str) -> bytes | None:
        """Object ``key`` (None when missing), refused when over ``limit`` bytes; at most limit+1 are fetched."""
        try:
            data = self.fs.cat_file(key, start=0, end=limit + 1)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise remote_error(f"{self.location}/{key[len(self.root) + 1:]}", "reading", exc) from exc
        if len(data) > limit:
            shown = f"{self.location}/{key[len(self.root) + 1:]}"
            raise CorruptCheckpointError(
                f"{shown}: is over the {limit:,}-byte limit for {what} (a real one is far smaller); it is damaged or "
                "not modelsafe's. Remove it or restore it from a backup", path=shown,
            )
        return data

    def read_manifest(self, name: str) -> bytes | None:
        return self._read_small(self._key(name, MANIFEST), MAX_MANIFEST_BYTES, "a checkpoint manifest")

    def manifest_signature(self, name: str) -> tuple | None:
        """Changes whenever the manifest does (ETag on S3, creation time in memory://); None without one."""
        try:
            info = self.fs.info(self._key(name, MANIFEST))
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise remote_error(self.path(name), "reading the manifest", exc) from exc
        stamp = info.get("ETag") or info.get("created") or info.get("LastModified") or info.get("mtime")
        return (self._key(name, MANIFEST), str(stamp), info.get("size"))

    def read_run_file(self) -> bytes | None:
        return self._read_small(self._key(RUN_FILE), MAX_RUN_FILE, "a run file")

    def write_run_file(self, data: bytes) -> None:
        self._require_lock("writing the run file")
        self._put_bytes(self._key(RUN_FILE), data)

    # -- the single writer (by convention: object stores have no lock) ------------------
    def lock(self) -> None:
        if not self.locked:
            self._put_bytes(self._key(LOCK_NAME), f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
            self.locked = True

    def unlock(self) -> None:
        self.locked = False

    def _require_lock(self, action: str) -> None:
        if not self.locked:
            raise ModelsafeError(f"{self.location}: internal error: {action} without being the run's writer")

    def clean_leftovers(self) -> list[str]:
        """Finish what killed writers left: uncommitted and half-deleted checkpoints go, then their markers."""
        self._require_lock("cleaning leftovers")
        self.fs.invalidate_cache()
        try:
            found = self.fs.ls(self.root, detail=False)
        except FileNotFoundError:
            return []
        removed = []
        for entry in sorted(item.rstrip("/").rpartition("/")[2] for item in found):
            staged, deleting = _split_hidden(entry, STAGING_MARK), _split_hidden(entry, DELETING_MARK)
            name = staged or deleting
            if name is None:
                continue
            if deleting is not None or not self.fs.exists(self._key(name, MANIFEST)):
                self._remove_prefix(name)
            self._remove(self._key(entry))
            removed.append(entry)
        return removed

    # -- writing ---------------------------------------------------------------------
    def stage(self, name: str) -> str:
        """A local temporary directory the checkpoint is written into before upload."""
        self._require_lock("staging a checkpoint")
        return tempfile.mkdtemp(prefix=f"modelsafe-{name[:40]}-")

    def discard(self, staging: str) -> None:
        shutil.rmtree(staging, ignore_errors=True)

    def commit(self, staging: str, name: str, durable: frozenset[str] = frozenset()) -> str:
        """Upload ``staging`` as checkpoint ``name``: payloads first, the manifest last (the commit)."""
        self._require_lock("committing a checkpoint")
        marker = self._key(_hidden(name, STAGING_MARK))
        try:
            self._put_bytes(marker, b"")
            if self.fs.exists(self._key(name, MANIFEST)):  # a replace: the old one goes first
                self._delete_now(name)
            for rel in _files(staging):
                if rel != MANIFEST:
                    self._upload(os.path.join(staging, rel), self._key(name, *rel.split(os.sep)))
            self._upload(os.path.join(staging, MANIFEST), self._key(name, MANIFEST))
            self._remove(marker)
        except OSError as exc:
            if isinstance(exc, ModelsafeError):
                raise
            raise remote_error(self.path(name), "uploading the checkpoint", exc) from exc
        shutil.rmtree(staging, ignore_errors=True)
        return self.path(name)

    def delete(self, name: str) -> None:
        """Remove checkpoint ``name``: its manifest first (it vanishes), then its payloads."""
        self._require_lock("deleting a checkpoint")
        marker = self._key(_hidden(name, DELETING_MARK))
        try:
            self._put_bytes(marker, b"")
            self._delete_now(name)
            self._remove(marker)
        except OSError as exc:
            if isinstance(exc, ModelsafeError):
                raise
            raise remote_error(self.path(name), "deleting the checkpoint", exc) from exc

    def _delete_now(self, name: str) -> None:
        self._remove(self._key(name, MANIFEST))
        self._remove_prefix(name)

    # -- object helpers ----------------------------------------------------------------
    def _put_bytes(self, key: str, data: bytes) -> None:
        try:
            self.fs.pipe_file(key, data)
        except OSError as exc:
            raise remote_error(f"{self.location}/{key[len(self.root) + 1:]}", "writing", exc) from exc

    def _upload(self, local: str, key: str) -> None:
        # s3fs uploads a file of more than one chunk as a multipart upload, reading one chunk at a time
        accepted = _put_file_arguments(self.fs)
        wanted = {"chunksize": UPLOAD_CHUNK, "max_concurrency": UPLOAD_PARALLEL}
        self.fs.put_file(local, key, **{k: v for k, v in wanted.items() if k in accepted})

    def _remove(self, key: str) -> None:
        try:
            self.fs.rm_file(key)
        except FileNotFoundError:
            pass

    def _remove_prefix(self, name: str) -> None:
        key = self._key(name)
        try:
            if self.fs.exists(key):
                self.fs.rm(key, recursive=True)
        except FileNotFoundError:
            pass
        self.fs.invalidate_cache()


def _files(root: str) -> list[str]:
    """Paths of the regular files under ``root``, relative to it."""
    out = []
    for directory, _dirs, files in os.walk(root):
        out.extend(os.path.relpath(os.path.join(directory, f), root) for f in files)
    return sorted(out)


def _put_file_arguments(fs: object) -> tuple[str, ...]:
    import inspect

    target = getattr(fs, "_put_file", None) or fs.put_file
    try:
        return tuple(inspect.signature(target).parameters)
    except (TypeError, ValueError):
        return ()
