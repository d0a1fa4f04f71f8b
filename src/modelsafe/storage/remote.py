"""Object stores through fsspec (s3fs for ``s3://``; ``memory://`` for tests).

fsspec and s3fs are imported on first use, never by ``import modelsafe``.  The jobs:

* :func:`filesystem`: the fsspec file system of a URL, with ``storage_options`` and, for
  S3, the standard AWS environment (``AWS_ENDPOINT_URL`` included);
* :func:`write_object`: one file streamed into an object in parts of :data:`BLOCK_SIZE`
  (multipart on S3: the object appears only when the upload completes, so a save
  killed midway leaves nothing; a failed one aborts the upload);
* :func:`upload_file`: one local file uploaded streamed (multipart on S3);
* :func:`range_reader`: an object's size and a function reading one byte range of it
  (:class:`modelsafe.format.ranges.RangeFileSource` reads a file through it).

:class:`RemoteRunStorage` (the run of a ``Checkpoints``) is in :mod:`.remote_run`.
"""

from __future__ import annotations

import os
from typing import Any, BinaryIO, Callable

from ..errors import CheckpointNotFoundError, StorageError

# Upload part size: bounds the memory a save holds beyond the state (S3's minimum part is 5 MiB)
BLOCK_SIZE = 8 << 20
INSTALL_HINT = "pip install 'modelsafe[s3]'"


def filesystem(url: str, storage_options: dict | None = None) -> tuple[Any, str]:
    """(fsspec file system, path inside it) for ``url``; a missing backend names what to install.

    ``storage_options`` go to the file system (for S3: ``key``, ``secret``, ``endpoint_url``,
    ``client_kwargs``, ...); ``AWS_ENDPOINT_URL`` in the environment is the S3 endpoint when
    the options name none (the other ``AWS_*`` variables are read by botocore itself).
    """
    try:
        import fsspec.core
    except ImportError:
        raise StorageError(f"{url}: remote URLs need fsspec and s3fs: {INSTALL_HINT}", path=url) from None
    options = _with_environment(url, dict(storage_options or {}))
    try:
        return fsspec.core.url_to_fs(url, **options)
    except ImportError as exc:
        raise StorageError(f"{url}: this URL needs a package that is not installed ({exc}); for s3:// "
                           f"{INSTALL_HINT}", path=url) from None
    except ValueError as exc:
        raise StorageError(f"{url}: fsspec does not know this URL ({exc}); use s3://bucket/key", path=url) from None
    except TypeError as exc:
        raise StorageError(f"{url}: storage_options were refused by the file system ({exc})", path=url) from None


def _with_environment(url: str, options: dict) -> dict:
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    client = options.get("client_kwargs") or {}
    if url.startswith(("s3://", "s3a://")) and endpoint and "endpoint_url" not in options and "endpoint_url" not in client:
        options["endpoint_url"] = endpoint
    return options


def remote_error(url: str, action: str, exc: BaseException) -> StorageError:
    """``exc`` from the object store as a StorageError naming ``url`` and what to check."""
    hint = {
        PermissionError: "check the credentials (storage_options or the AWS_* environment) and the bucket policy",
        FileNotFoundError: "check the bucket and the path",
    }.get(type(exc), "check the URL, the endpoint and the network")
    return StorageError(f"{url}: {action} failed: {type(exc).__name__}: {exc}; {hint}", path=url,
                        errno=getattr(exc, "errno", None))


class _Parts:
    """Hands ``f`` writes of at most ``size`` bytes: fsspec buffers a whole write before
    uploading it, so a 1 GiB tensor written at once would be a 1 GiB copy in memory."""

    def __init__(self, f: BinaryIO, size: int) -> None:
        self._f, self._size = f, size

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        for start in range(0, len(view), self._size):
            self._f.write(view[start : start + self._size])
        return len(view)

    def flush(self) -> None:
        self._f.flush()


def write_object(url: str, write: Callable[[Any], Any], storage_options: dict | None = None,
                 *, block_size: int = BLOCK_SIZE) -> None:
    """Stream ``write(f)`` into object ``url``; it exists only once everything is written.

    On S3 the parts go up while ``write`` runs (multipart upload of ``block_size`` parts);
    an exception aborts the upload, so the old object (if any) stays and no partial one appears.
    """
    fs, key = filesystem(url, storage_options)
    try:
        f = fs.open(key, "wb", block_size=block_size)
    except OSError as exc:
        raise remote_error(url, "starting the upload", exc) from exc
    try:
        write(_Parts(f, block_size))
        f.close()
    except BaseException as exc:
        _abort(f, fs, key)
        if isinstance(exc, OSError) and not isinstance(exc, StorageError):
            raise remote_error(url, "uploading", exc) from exc
        raise


def _abort(f: Any, fs: Any, key: str) -> None:
    """Throw away a half-written object: abort the multipart upload, or remove what a
    backend without one (memory://) already shows."""
    try:
        f.discard()
    except Exception:  # noqa: BLE001 - the upload is abandoned either way
        pass
    f.closed = True  # never commit on garbage collection
    if not hasattr(f, "mpu"):
        try:
            fs.rm_file(key)
        except Exception:  # noqa: BLE001
            pass


# Uploads of whole files: parts of UPLOAD_CHUNK, UPLOAD_PARALLEL at a time.  A save then holds
# ~33 MiB of file data in memory whatever the checkpoint's size (measured with tracemalloc on a
# 64 MiB checkpoint; s3fs's default, 10 parallel parts, took 130 MiB).
UPLOAD_CHUNK = 8 << 20
UPLOAD_PARALLEL = 2


def upload_file(fs: Any, local: str, key: str) -> None:
    """Upload local file ``local`` to object ``key`` of ``fs``, streamed.

    s3fs uploads a file of more than one chunk as a multipart upload, reading one chunk at
    a time: the object appears only once complete, and never the whole file is in memory.
    """
    accepted = _put_file_arguments(fs)
    wanted = {"chunksize": UPLOAD_CHUNK, "max_concurrency": UPLOAD_PARALLEL}
    fs.put_file(local, key, **{k: v for k, v in wanted.items() if k in accepted})


def _put_file_arguments(fs: Any) -> tuple[str, ...]:
    import inspect

    target = getattr(fs, "_put_file", None) or fs.put_file
    try:
        return tuple(inspect.signature(target).parameters)
    except (TypeError, ValueError):
        return ()


def range_reader(url: str, storage_options: dict | None = None) -> tuple[int, Callable[[int, int], bytes]]:
    """(size of object ``url``, ``read(offset, size)`` fetching that byte range with one request)."""
    fs, key = filesystem(url, storage_options)
    fs.invalidate_cache(key)  # a size cached from an earlier listing may be stale
    try:
        size = int(fs.size(key))
    except FileNotFoundError:
        raise CheckpointNotFoundError(f"{url}: no such object; check the URL", path=url) from None
    except OSError as exc:
        raise remote_error(url, "reading", exc) from exc

    def read(offset: int, count: int) -> bytes:
        try:
            return fs.cat_file(key, start=offset, end=min(offset + count, size))
        except OSError as exc:
            raise remote_error(url, "reading", exc) from exc

    return size, read


def download(url: str, target: str, storage_options: dict | None = None) -> str:
    """Copy object ``url``, or every object under prefix ``url``, to the new local path ``target``.

    Keys that would land outside ``target`` (``..``, empty parts) are skipped.  Returns ``target``.
    """
    fs, key = filesystem(url, storage_options)
    key = key.rstrip("/")
    try:
        if fs.isfile(key):
            fs.get_file(key, target)
            return target
        for item in fs.find(key):
            rel = item[len(key) + 1:]
            if not rel or any(part in ("", ".", "..") for part in rel.split("/")):
                continue
            local = os.path.join(target, *rel.split("/"))
            os.makedirs(os.path.dirname(local), exist_ok=True)
            fs.get_file(item, local)
    except OSError as exc:
        if isinstance(exc, StorageError):
            raise
        raise remote_error(url, "downloading", exc) from exc
    return target


def kind_of(url: str, storage_options: dict | None = None) -> str | None:
    """What ``url`` holds: ``"file"``, ``"checkpoint"`` (a manifest.json), ``"run"`` (a run file), or None."""
    from .commit import MANIFEST, RUN_FILE

    fs, key = filesystem(url, storage_options)
    key = key.rstrip("/")
    fs.invalidate_cache()
    try:
        if fs.isfile(key):
            return "file"
        if fs.exists(f"{key}/{MANIFEST}"):
            return "checkpoint"
        if fs.exists(f"{key}/{RUN_FILE}"):
            return "run"
    except OSError as exc:
        raise remote_error(url, "opening", exc) from exc
    return None
