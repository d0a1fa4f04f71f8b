"""One writer per run on an object store: a lease object, taken with a conditional write.

Object stores have no ``flock``; what S3 has is conditional writes: ``If-None-Match: *``
creates an object only when there is none, ``If-Match: ETAG`` replaces it only while it
is unchanged.  :class:`Lease` builds the run lock of
:class:`modelsafe.storage.remote_run.RemoteRunStorage` from them (docs/checkpoints.md 5).
"""

from __future__ import annotations

import json
import math
import os
import secrets
import socket
import threading
import time
from typing import Any

from ..errors import RunLockedError
from .commit import LOCK_NAME

__all__ = ["Lease", "LEASE_SECONDS"]

# A lease not renewed for this long belongs to a dead (or hung) writer and may be taken over.
# The holder renews it every LEASE_SECONDS / 4 from a heartbeat thread and checks it before
# every commit, so a writer that lost it (suspended longer than this) never commits again.
# Writers' clocks must agree to well within it.
LEASE_SECONDS = 120.0
MAX_LEASE_BYTES = 4096


class Lease:
    """One writer per run on an object store: the lease object ``RUN/.modelsafe.lock``.

    * taking it is a conditional create (``If-None-Match: *`` on S3, ``mode="create"`` in
      fsspec): of two writers racing, exactly one succeeds; the other gets RunLockedError
      naming the holder (owner token, host, pid, age);
    * the holder renews it every ``seconds / 4`` from a daemon thread (a compare-and-swap
      on the ETag on S3) and checks it before every commit and delete: a writer whose lease
      was taken over raises RunLockedError instead of committing;
    * a lease not renewed for ``seconds`` (the writer died or hangs), or held by a dead
      process on this host, is taken over — on S3 with ``If-Match`` on the ETag read, so of
      two writers taking over at once one wins;
    * release deletes it when it is still ours.

    Backends without conditional writes (``memory://``): creation is still exclusive
    (fsspec's ``mode="create"``), but renewal, takeover and release are a read followed by
    a write, not atomic; memory:// lives in one process, where this only matters between threads.
    """

    def __init__(self, fs: Any, key: str, location: str, seconds: float, body: dict, etag: str | None) -> None:
        self.fs, self.key, self.location, self.seconds = fs, key, location, seconds
        self.body, self.etag = body, etag
        self.lost: str | None = None
        self.renewed = time.time()
        self._stop = threading.Event()
        self._io = threading.Lock()
        self._thread = threading.Thread(target=self._beat, name=f"modelsafe-lease {location}", daemon=True)
        self._thread.start()

    # -- taking ---------------------------------------------------------------------
    @classmethod
    def take(cls, fs: Any, key: str, location: str, seconds: float) -> Lease:
        body = {"owner": secrets.token_hex(8), "host": socket.gethostname(), "pid": os.getpid(), "time": time.time()}
        data = json.dumps(body).encode()
        for _ in range(3):  # the holder may release between our create and our read
            try:
                _create(fs, key, data)
                return cls(fs, key, location, seconds, body, _etag(fs, key))
            except FileExistsError:
                pass
            holder, etag = _read_lease(fs, key)
            if holder is None:
                continue
            if not _stale(holder, seconds):
                raise _locked(location, holder, seconds)
            try:
                _overwrite(fs, key, data, etag)  # If-Match: of two writers taking over, one wins
            except (FileExistsError, OSError):
                raise _locked(location, holder, seconds) from None
            mine, etag = _read_lease(fs, key)
            if mine is None or mine.get("owner") != body["owner"]:
                raise _locked(location, mine or holder, seconds)
            return cls(fs, key, location, seconds, body, etag)
        raise RunLockedError(f"{location}: could not take the run's lease {LOCK_NAME}: it keeps changing hands; "
                             "another writer is starting. Try again", path=location)

    # -- holding ---------------------------------------------------------------------
    def ensure(self, action: str, *, check: bool = False) -> None:
        """Raise RunLockedError when the lease was lost; ``check``: read it from the store first."""
        if check and self.lost is None:
            self._renew()
        if self.lost is not None:
            raise RunLockedError(
                f"{self.location}: {action} refused: this writer lost the run's lease ({self.lost}); another writer "
                "may be using the run. Nothing more is written; start again to become the writer", path=self.location,
            )

    def _renew(self) -> None:
        with self._io:
            if self.lost is not None or self._stop.is_set():
                return
            try:
                holder, etag = _read_lease(self.fs, self.key)
                if holder is None or holder.get("owner") != self.body["owner"]:
                    self.lost = "taken over by " + (_describe(holder) if holder else "nobody: it was removed")
                    return
                body = {**self.body, "time": time.time()}
                _overwrite(self.fs, self.key, json.dumps(body).encode(), etag)
                self.body, self.etag, self.renewed = body, _etag(self.fs, self.key), body["time"]
            except Exception as exc:  # noqa: BLE001 - botocore's connection errors are not OSErrors; retried next beat
                if time.time() - self.renewed > self.seconds:
                    self.lost = f"not renewed for {self.seconds:.0f} s: {type(exc).__name__}: {exc}"

    def _beat(self) -> None:
        while not self._stop.wait(max(self.seconds / 4, 0.05)):  # a zero timeout (tests) must not spin
            self._renew()
            if self.lost is not None:
                return

    def release(self) -> None:
        """Stop renewing and delete the lease when it is still ours (best effort)."""
        if self._stop.is_set() or os.getpid() != self.body["pid"]:  # a forked child never releases its parent's
            return
        self._stop.set()
        with self._io:
            try:
                holder, _ = _read_lease(self.fs, self.key)
                if holder is not None and holder.get("owner") == self.body["owner"]:
                    self.fs.rm_file(self.key)
            except Exception:  # noqa: BLE001 - best effort: the lease expires anyway (the store may be gone at exit)
                pass


def _conditional(fs: Any) -> bool:
    """True where writes take S3's If-Match / If-None-Match (s3fs)."""
    protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    return any(p in ("s3", "s3a") for p in protocols)


def _create(fs: Any, key: str, data: bytes) -> None:
    """Create object ``key``; FileExistsError when it exists (one request on S3: If-None-Match: *)."""
    fs.pipe_file(key, data, mode="create")
    fs.invalidate_cache(key)


def _overwrite(fs: Any, key: str, data: bytes, etag: str | None) -> None:
    """Replace ``key``, on S3 only while its ETag is still ``etag`` (else an OSError: precondition failed)."""
    fs.pipe_file(key, data, **({"IfMatch": etag} if etag and _conditional(fs) else {}))
    fs.invalidate_cache(key)


def _etag(fs: Any, key: str) -> str | None:
    try:
        info = fs.info(key)
    except FileNotFoundError:
        return None
    return info.get("ETag")


def _read_lease(fs: Any, key: str) -> tuple[dict | None, str | None]:
    """(the lease's fields, its ETag); (None, None) when there is none.

    Every field is checked: a damaged lease counts as held by "unknown" since the
    object's own modification time, so it too goes stale and is taken over.
    """
    fs.invalidate_cache(key)
    try:
        info = fs.info(key)
        data = fs.cat_file(key, start=0, end=MAX_LEASE_BYTES)
    except FileNotFoundError:
        return None, None
    try:
        body = json.loads(data)
        if not (isinstance(body, dict) and isinstance(body.get("owner"), str) and isinstance(body.get("host"), str)
                and type(body.get("pid")) is int and isinstance(body.get("time"), (int, float))
                and math.isfinite(body["time"])):
            raise ValueError("fields")
    except (ValueError, RecursionError):
        modified = info.get("LastModified") or info.get("created")
        stamp = modified.timestamp() if hasattr(modified, "timestamp") else float(modified or time.time())
        body = {"owner": "unknown", "host": "?", "pid": -1, "time": stamp}
    return {k: body[k] for k in ("owner", "host", "pid", "time")}, info.get("ETag")


def _stale(holder: dict, seconds: float) -> bool:
    if time.time() - holder["time"] > seconds:
        return True
    if holder["host"] == socket.gethostname() and holder["pid"] > 0:  # a dead process on this host
        try:
            os.kill(holder["pid"], 0)
        except ProcessLookupError:
            return True
        except OSError:
            return False
    return False


def _describe(holder: dict) -> str:
    age = max(0.0, time.time() - holder["time"])
    return f"pid {holder['pid']} on {holder['host']}, owner {holder['owner']}, renewed {age:.0f} s ago"


def _locked(location: str, holder: dict, seconds: float) -> RunLockedError:
    return RunLockedError(
        f"{location}: another writer holds this run (lease {LOCK_NAME}: {_describe(holder)}); two writers would "
        f"interleave checkpoints. Stop the other process or call close() on its Checkpoints; a writer that died "
        f"releases the run {seconds:.0f} s after its last renewal (or remove {location}/{LOCK_NAME} if you are sure "
        "it is gone)", path=location,
    )
