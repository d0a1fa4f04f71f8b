"""A run of checkpoints on an object store (fsspec): the manifest, written last, is the commit.

Object stores have no rename and no directories, so :class:`RemoteRunStorage` commits
the way the format allows: a checkpoint ``NAME`` is the prefix ``RUN/NAME/``, and it is
committed when ``RUN/NAME/manifest.json`` exists — readers list only prefixes holding one.

* ``stage(name)`` gives a local temporary directory: the checkpoint is written there by
  the same code as a local one (shards, bound ``files/``, manifest);
* ``commit(staging, name)`` uploads it (streamed, multipart: never a whole file in memory):
  - a new name: a staging marker ``RUN/.NAME.modelsafe-tmp-TOKEN`` first, then every
    payload into ``RUN/NAME/``, then ``manifest.json`` — the commit — then the marker goes;
  - a replace (``NAME`` is committed): the whole new checkpoint, manifest last, under the
    staging prefix ``RUN/.NAME.modelsafe-tmp-TOKEN/``; once that is complete it is swapped
    in (:meth:`RemoteRunStorage._swap_in`): the old manifest goes, the staged objects are
    copied into place server-side (CopyObject on S3), the manifest last, then the staged
    prefix goes, its manifest first;
* ``delete(name)`` writes a deleting marker, removes the manifest first (the checkpoint
  vanishes in one request), then the payloads, then the marker;
* ``clean_leftovers()`` (the next writer) finishes what a killed writer left: the prefix
  of an uncommitted checkpoint or of one being deleted is removed, an incomplete staged
  replacement is removed, and a complete one is rolled forward (the swap is finished).

So at every instant a name being replaced holds the old checkpoint, or the new one is
complete under its staging prefix — and readers take that one while the name has no
manifest (as the local backend's readers take a checkpoint set aside mid-replace).  A
save killed at any point leaves the previous checkpoints listed and loadable, and the
new one either committed or invisible.

One writer per run (:meth:`RemoteRunStorage.lock`): a lease object ``RUN/.modelsafe.lock``
created with a conditional write (``If-None-Match: *`` on S3), renewed by a heartbeat and
checked before every commit and delete; see :class:`modelsafe.storage.lease.Lease`.  Deduplication: a shard
equal to one of a committed checkpoint (same identity, header and size) is copied
server-side instead of uploaded (:meth:`RemoteRunStorage._copy_equal`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import weakref

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
from .lease import LEASE_SECONDS, Lease
from .remote import UPLOAD_CHUNK, UPLOAD_PARALLEL, filesystem, remote_error, upload_file

__all__ = ["RemoteRunStorage", "Upload", "UPLOAD_CHUNK", "UPLOAD_PARALLEL"]



@dataclasses.dataclass(frozen=True)
class Upload:
    """A checkpoint being uploaded: its objects go under key ``prefix``.

    ``marker``: the staging marker of a new name (the objects go straight into ``RUN/NAME/``);
    None for a replace (``prefix`` is the staging prefix, swapped in once complete).
    """

    name: str
    prefix: str
    marker: str | None


class RemoteRunStorage:
    """A run directory at an fsspec URL (``s3://bucket/runs/exp1``)."""

    links = False  # payloads cannot be hard-linked between checkpoints ...
    copies = True  # ... but a shard equal to one already stored is copied server-side (see commit)
    lease_seconds = LEASE_SECONDS

    def __init__(self, url: str, storage_options: dict | None = None) -> None:
        self.location = url.rstrip("/")
        self.fs, self.root = filesystem(self.location, storage_options)
        self.root = self.root.rstrip("/")
        self.storage_options = storage_options
        self._lease: Lease | None = None
        self._shards: dict[str, tuple[str, str, int]] | None = None  # identity -> (checkpoint, file, size)
        self._read_from: dict[str, str] = {}  # name -> the entry its manifest was last read from

    def path(self, name: str) -> str:
        return f"{self.location}/{name}"

    def checkpoint_path(self, name: str) -> str:
        """Where committed checkpoint ``name`` is: ``RUN/NAME``, or while a replace is being
        swapped in (or a writer died doing it), the complete new copy under its staging prefix."""
        if self._read_from.pop(name, None) == name:  # read_manifest just found it in place: no request
            return self.path(name)
        if self.fs.exists(self._key(name, MANIFEST)):
            return self.path(name)
        staged = self._staged_replacement(name)
        return self.path(staged) if staged is not None else self.path(name)

    def _key(self, *parts: str) -> str:
        return "/".join((self.root, *parts))

    def _shown(self, key: str) -> str:
        return f"{self.location}/{key[len(self.root) + 1:]}"

    # -- reading -------------------------------------------------------------------
    def _listing(self) -> list[tuple[str, bool]]:
        """(entry name, is a prefix) of everything directly under the run."""
        self.fs.invalidate_cache()  # another writer may have committed since the last listing
        try:
            found = self.fs.ls(self.root, detail=True)
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise remote_error(self.location, "listing the run", exc) from exc
        return [(item["name"].rstrip("/").rpartition("/")[2], item.get("type") == "directory") for item in found]

    def entries(self) -> list[str]:
        """Names of the visible prefixes of the run (each may be a checkpoint), and of names
        whose only copy is a complete staged replacement (a replace being swapped in)."""
        listing = self._listing()
        names = [n for n, prefix in listing if prefix and n and not n.startswith(".")]
        for entry, prefix in listing:
            name = _split_hidden(entry, STAGING_MARK) if prefix else None
            if name is not None and name not in names and self.fs.exists(self._key(entry, MANIFEST)):
                names.append(name)
        return names

    def _staged_replacement(self, name: str) -> str | None:
        """The entry of a complete staged replacement of ``name`` (manifest uploaded), or None."""
        for entry, prefix in sorted(self._listing()):
            if prefix and _split_hidden(entry, STAGING_MARK) == name and self.fs.exists(self._key(entry, MANIFEST)):
                return entry
        return None

    def exists(self, name: str) -> bool:
        return bool(self.fs.exists(self._key(name))) or self._staged_replacement(name) is not None

    def _read_small(self, key: str, limit: int, what: str) -> bytes | None:
        """Object ``key`` (None when missing), refused when over ``limit`` bytes; at most limit+1 are fetched."""
        try:
            data = self.fs.cat_file(key, start=0, end=limit + 1)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise remote_error(self._shown(key), "reading", exc) from exc
        if len(data) > limit:
            shown = self._shown(key)
            raise CorruptCheckpointError(
                f"{shown}: is over the {limit:,}-byte limit for {what} (a real one is far smaller); it is damaged or "
                "not modelsafe's. Remove it or restore it from a backup", path=shown,
            )
        return data

    def read_manifest(self, name: str) -> bytes | None:
        self._read_from.pop(name, None)
        data = self._manifest_at(name, name)
        if data is None:  # a replace being swapped in: the new copy is complete under its staging prefix
            staged = self._staged_replacement(name)
            data = self._manifest_at(staged, name) if staged is not None else None
        if data is None:  # the swap finished meanwhile
            data = self._manifest_at(name, name)
        return data

    def _manifest_at(self, entry: str, name: str) -> bytes | None:
        """The manifest under ``entry`` (remembered as where ``name``'s was found), or None."""
        data = self._read_small(self._key(entry, MANIFEST), MAX_MANIFEST_BYTES, "a checkpoint manifest")
        if data is not None:
            self._read_from[name] = entry
        return data

    def manifest_signature(self, name: str) -> tuple | None:
        """Changes whenever the manifest does (ETag on S3, creation time in memory://); None without one."""
        for key in (self._key(name, MANIFEST), None):
            if key is None:
                staged = self._staged_replacement(name)
                if staged is None:
                    return None
                key = self._key(staged, MANIFEST)
            try:
                info = self.fs.info(key)
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise remote_error(self.path(name), "reading the manifest", exc) from exc
            stamp = info.get("ETag") or info.get("created") or info.get("LastModified") or info.get("mtime")
            return (key, str(stamp), info.get("size"))
        return None

    def read_run_file(self) -> bytes | None:
        return self._read_small(self._key(RUN_FILE), MAX_RUN_FILE, "a run file")

    def write_run_file(self, data: bytes) -> None:
        self._require_lock("writing the run file")
        self._put_bytes(self._key(RUN_FILE), data)

    # -- the single writer: a lease ---------------------------------------------------------
    @property
    def locked(self) -> bool:
        return self._lease is not None

    def lock(self) -> None:
        """Become the run's only writer (take its lease), or raise RunLockedError naming the holder."""
        if self._lease is None:
            self._lease = Lease.take(self.fs, self._key(LOCK_NAME), self.location, self.lease_seconds)
            weakref.finalize(self, self._lease.release)  # an abandoned writer frees the run

    def unlock(self) -> None:
        lease, self._lease = self._lease, None
        if lease is not None:
            lease.release()

    def _require_lock(self, action: str, *, check: bool = False) -> None:
        """Refuse ``action`` unless this writer holds the lease; ``check``: ask the store (before a commit point)."""
        if self._lease is None:
            raise ModelsafeError(f"{self.location}: internal error: {action} without being the run's writer")
        self._lease.ensure(action, check=check)

    def clean_leftovers(self) -> list[str]:
        """Finish what killed writers left: uncommitted and half-deleted checkpoints go, staged
        replacements are swapped in when complete and removed when not, then the markers go."""
        self._require_lock("cleaning leftovers")
        removed = []
        for entry, prefix in sorted(self._listing()):
            if self._settle_entry(entry, prefix):
                removed.append(entry)
        return removed

    def _settle(self, name: str) -> None:
        """Finish whatever a failed or killed writer left for ``name`` (before writing it again)."""
        for entry, prefix in sorted(self._listing()):
            if name in (_split_hidden(entry, STAGING_MARK), _split_hidden(entry, DELETING_MARK)):
                self._settle_entry(entry, prefix)

    def _settle_entry(self, entry: str, prefix: bool) -> bool:
        staged, deleting = _split_hidden(entry, STAGING_MARK), _split_hidden(entry, DELETING_MARK)
        if deleting is not None:
            self._remove_prefix(deleting)
            self._remove(self._key(entry))
        elif staged is not None and prefix:
            if self.fs.exists(self._key(entry, MANIFEST)):
                self._swap_in(staged, self._key(entry))  # complete: roll the replace forward
            else:
                self._remove_prefix(entry)
        elif staged is not None:
            if not self.fs.exists(self._key(staged, MANIFEST)):
                self._remove_prefix(staged)
            self._remove(self._key(entry))
        else:
            return False
        return True

    # -- writing ---------------------------------------------------------------------
    def stage(self, name: str) -> str:
        """A local temporary directory the checkpoint is written into before upload."""
        self._require_lock("staging a checkpoint")
        return tempfile.mkdtemp(prefix=f"modelsafe-{name[:40]}-")

    def discard(self, staging: str) -> None:
        shutil.rmtree(staging, ignore_errors=True)

    def begin(self, name: str) -> Upload:
        """Start uploading checkpoint ``name``: where its objects go (see :class:`Upload`)."""
        self._require_lock("committing a checkpoint")
        try:
            self._settle(name)  # a replace a failed writer of this process left half-swapped
            hidden = _hidden(name, STAGING_MARK)
            if self.fs.exists(self._key(name, MANIFEST)):  # a replace: stage the whole new one first
                return Upload(name, self._key(hidden), None)
            self._put_bytes(self._key(hidden), b"")
            return Upload(name, self._key(name), self._key(hidden))
        except OSError as exc:
            if isinstance(exc, ModelsafeError):
                raise
            raise remote_error(self.path(name), "starting the upload", exc) from exc

    def upload_url(self, upload: Upload) -> str:
        """The URL prefix the objects of ``upload`` go under."""
        return self._shown(upload.prefix)

    def commit(self, staging: str, name: str, durable: frozenset[str] = frozenset(), *,
               upload: Upload | None = None) -> str:
        """Upload ``staging`` as checkpoint ``name``: payloads first, the manifest last (the commit).

        ``upload``: from :meth:`begin`, when other processes uploaded payloads under it already.
        """
        upload = upload or self.begin(name)
        try:
            identities = _staged_identities(os.path.join(staging, MANIFEST))
            for rel in _files(staging):
                if rel != MANIFEST:
                    target = "/".join((upload.prefix, *rel.split(os.sep)))
                    if not self._copy_equal(os.path.join(staging, rel), target, identities.get(rel)):
                        self._upload(os.path.join(staging, rel), target)
            self._require_lock("committing a checkpoint", check=True)  # never commit on a lease lost meanwhile
            self._upload(os.path.join(staging, MANIFEST), f"{upload.prefix}/{MANIFEST}")
            if upload.marker is None:
                self._swap_in(name, upload.prefix)
            else:
                self._remove(upload.marker)
        except OSError as exc:
            if isinstance(exc, ModelsafeError):
                raise
            raise remote_error(self.path(name), "uploading the checkpoint", exc) from exc
        if self._shards is not None:
            self._forget(name)
            self._shards.update((i, (name, f, size)) for f, (i, size) in identities.items())
        shutil.rmtree(staging, ignore_errors=True)
        return self.path(name)

    # -- deduplication: server-side copies of unchanged shards --------------------------------
    def _copy_equal(self, local: str, target: str, identity: tuple[str, int] | None) -> bool:
        """Copy a committed shard equal to ``local`` to ``target`` server-side; False when there is none.

        Shards are matched by identity (the xxh3 of their header, which holds every name,
        dtype, shape and payload checksum; the writer records it when deduplicating), and
        the stored one is checked before the copy: same size, same header bytes.  A stale
        entry or a tampered manifest costs an upload, never a wrong shard.
        """
        if identity is None:
            return False
        found = self._known_shards().get(identity[0])
        if found is None or found[2] != identity[1]:
            return False
        source = self._key(found[0], found[1])
        try:
            with open(local, "rb") as f:
                head = f.read(8)
                header = head + f.read(int.from_bytes(head, "little")) if len(head) == 8 else b""
            if not header or self.fs.info(source).get("size") != identity[1]:
                return False
            if self.fs.cat_file(source, start=0, end=len(header)) != header:
                return False
            self.fs.cp_file(source, target)
        except (OSError, ValueError):  # pruned meanwhile, unreadable: upload it
            return False
        return True

    def _known_shards(self) -> dict[str, tuple[str, str, int]]:
        """identity -> (checkpoint, file, size) of the run's committed shards (read from their manifests once)."""
        if self._shards is None:
            self._shards = {}
            for name in self.entries():
                try:
                    data = self.read_manifest(name)
                except ModelsafeError:
                    continue
                for file, (identity, size) in _manifest_identities(data).items():
                    self._shards[identity] = (name, file, size)
        return self._shards

    def _forget(self, name: str) -> None:
        if self._shards is not None:
            self._shards = {k: v for k, v in self._shards.items() if v[0] != name}

    def abandon(self, upload: Upload) -> None:
        """After a failed save: settle what ``upload`` left now rather than at the next writer
        (an uncommitted new name is removed; a replace is rolled forward when staged whole)."""
        entry = (upload.marker or upload.prefix)[len(self.root) + 1:]
        self._settle_entry(entry, upload.marker is None)

    def _swap_in(self, name: str, staged: str) -> None:
        """Replace ``RUN/NAME`` by the complete checkpoint under key ``staged``; safe to repeat after a kill.

        Until the new manifest is in place, ``staged`` (manifest included) stays whole: a
        writer killed at any step leaves it for the next one to roll forward, and readers
        take it while the name has no manifest.
        """
        final = self._key(name)
        new = self._relative(staged)
        done = self._read_small(f"{final}/{MANIFEST}", MAX_MANIFEST_BYTES, "a checkpoint manifest")
        if done is None or done != self._read_small(f"{staged}/{MANIFEST}", MAX_MANIFEST_BYTES, "a manifest"):
            self._remove(f"{final}/{MANIFEST}")  # the old one vanishes in one request
            for rel in sorted(self._relative(final) - new):
                self._remove(f"{final}/{rel}")
            for rel in sorted(new - {MANIFEST}):
                self.fs.cp_file(f"{staged}/{rel}", f"{final}/{rel}")  # server-side copy
            self.fs.cp_file(f"{staged}/{MANIFEST}", f"{final}/{MANIFEST}")  # the commit
        self._remove(f"{staged}/{MANIFEST}")  # first: a staged prefix without a manifest is garbage
        self._remove_key_prefix(staged)

    def delete(self, name: str) -> None:
        """Remove checkpoint ``name``: its manifest first (it vanishes), then its payloads."""
        self._require_lock("deleting a checkpoint", check=True)
        marker = self._key(_hidden(name, DELETING_MARK))
        try:
            self._settle(name)  # a staged replacement must not bring it back
            self._forget(name)
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
            raise remote_error(self._shown(key), "writing", exc) from exc

    def _upload(self, local: str, key: str) -> None:
        upload_file(self.fs, local, key)

    def _relative(self, prefix: str) -> set[str]:
        """Keys of the objects under ``prefix``, relative to it."""
        self.fs.invalidate_cache()
        try:
            return {item[len(prefix) + 1:] for item in self.fs.find(prefix)}
        except FileNotFoundError:
            return set()

    def _remove(self, key: str) -> None:
        try:
            self.fs.rm_file(key)
        except FileNotFoundError:
            pass

    def _remove_prefix(self, name: str) -> None:
        self._remove_key_prefix(self._key(name))

    def _remove_key_prefix(self, key: str) -> None:
        try:
            if self.fs.exists(key):
                self.fs.rm(key, recursive=True)
        except FileNotFoundError:
            pass
        self.fs.invalidate_cache()


def _manifest_identities(data: bytes | None) -> dict[str, tuple[str, int]]:
    """shard file -> (identity, size) from a manifest's ``shards``; anything malformed is left out
    (it only decides what to compare before a copy; the copy itself is checked)."""
    try:
        shards = json.loads(data).get("shards") if data else None
    except (ValueError, RecursionError, AttributeError):
        return {}
    out = {}
    for shard in shards if isinstance(shards, list) else ():
        if not isinstance(shard, dict):
            continue
        file, size, identity = shard.get("file"), shard.get("size"), shard.get("identity")
        if (isinstance(file, str) and isinstance(identity, str) and type(size) is int and size >= 0
                and file and "/" not in file and "\\" not in file and not file.startswith(".") and len(identity) <= 128):
            out[file] = (identity, size)
    return out


def _staged_identities(manifest: str) -> dict[str, tuple[str, int]]:
    """Our own staged manifest's shard identities (read whole: read(limit) would allocate the limit)."""
    try:
        with open(manifest, "rb") as f:
            return _manifest_identities(f.read())
    except OSError:
        return {}


def _files(root: str) -> list[str]:
    """Paths of the regular files under ``root``, relative to it."""
    out = []
    for directory, _dirs, files in os.walk(root):
        out.extend(os.path.relpath(os.path.join(directory, f), root) for f in files)
    return sorted(out)
