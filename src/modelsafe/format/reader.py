"""Open one single-file save: validate it, expose its records, read or map its bytes."""

from __future__ import annotations

import importlib.util
import json
import mmap
import os
import sys
from typing import Any

import numpy as np

from ..errors import CheckpointNotFoundError, CorruptCheckpointError, StorageError
from ..gc_pause import gc_paused
from . import checksum, manifest as manifest_mod
from .container import MANIFEST_KEY, check_manifest_budget, parse_header, read_length, verify_header_checksum
from .manifest import TensorRecord
from .mapping import map_private

# Whole-file loads map the file instead of reading it where a mapped file can still be
# replaced (POSIX): no copy, memory shared with the page cache, and since every save
# renames a new file into place, the bytes of a mapped file never change under it.
# On Windows a mapped file cannot be replaced by a later save, so loads read there.
_ALIGN = 64
MAP_WHOLE_LOADS = os.name == "posix"
_MADV_WILLNEED = getattr(mmap, "MADV_WILLNEED", None) if hasattr(mmap.mmap, "madvise") else None
# Python 3.13+ can map without keeping a duplicate descriptor open per mapping
_MMAP_OPTIONS = {"trackfd": False} if sys.version_info >= (3, 13) else {}


def default_foreign_framework() -> str:
    """Framework for tensors of plain safetensors files: torch when installed, else numpy."""
    return "torch" if importlib.util.find_spec("torch") is not None else "numpy"


def _read_exact(data: bytes, size: int, path: Any) -> bytes:
    if len(data) != size:
        raise CorruptCheckpointError(f"{path}: file ended while reading its header; it is truncated", path=path)
    return data


class FileSource:
    """A validated single-file save.  ``records`` maps tensor names to TensorRecord."""

    def __init__(self, path: str | os.PathLike, *, fd: int | None = None) -> None:
        """Open ``path``; or, with ``fd``, read that open descriptor (closed with the source) and
        name ``path`` in messages (a file converted in memory from another format)."""
        self.path = os.fspath(path)
        try:
            self._fd = fd if fd is not None else os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            raise CheckpointNotFoundError(f"{self.path}: no such file; check the path", path=self.path) from None
        except IsADirectoryError:
            raise CheckpointNotFoundError(f"{self.path}: is a directory without a manifest.json", path=self.path) from None
        except OSError as exc:
            raise StorageError(f"{self.path}: cannot open ({exc.strerror})", path=self.path, errno=exc.errno) from exc
        try:
            with gc_paused():  # tens of thousands of header entries and records
                self._parse()
        except BaseException:
            self.close()
            raise

    # how the header is read; a remote source (storage/remote.py) reads ranges instead
    def _file_size(self) -> int:
        return os.fstat(self._fd).st_size

    def _read_at(self, size: int, offset: int) -> bytes:
        return os.pread(self._fd, size, offset)

    def _parse(self) -> None:
        size = self._file_size()
        self.file_size = size
        prefix = self._read_at(8, 0)
        n = read_length(prefix, size, self.path)
        raw = _read_exact(self._read_at(n, 8), n, self.path)
        header = parse_header(raw, size, self.path)
        self.header = header
        self.data_start = header.data_start
        meta = header.metadata
        if MANIFEST_KEY in meta:
            verify_header_checksum(prefix + raw, self.path)
            check_manifest_budget(meta[MANIFEST_KEY], len(header.entries), self.path)
            try:
                manifest = json.loads(meta[MANIFEST_KEY])
            except (ValueError, RecursionError) as exc:  # bad JSON, or an integer past int_max_str_digits
                raise CorruptCheckpointError(f"{self.path}: the modelsafe manifest is not valid JSON ({exc})", path=self.path) from None
            manifest_mod.check_version(manifest, self.path)
            self.records = manifest_mod.records(manifest, header.entries, self.path)
            self.is_modelsafe = True
        else:
            manifest = manifest_mod.foreign_manifest(header.entries, meta)
            self.records = manifest_mod.foreign_records(header.entries, default_foreign_framework())
            self.is_modelsafe = False
        self.manifest = manifest
        self.aliases: dict[str, str] = manifest_mod.check_aliases(manifest.get("aliases"), self.records, self.path)
        self.views = manifest_mod.check_views(manifest.get("views"), self.records, self.path)

    # -- bytes -------------------------------------------------------------------
    def read_data(self) -> np.ndarray:
        """The whole data section, read into fresh memory."""
        size = self.file_size - self.data_start
        raw = np.empty(size + _ALIGN, dtype=np.uint8)
        start = -raw.ctypes.data % _ALIGN  # aligned like a mapped file, so tensors view it in place
        buf = raw[start : start + size]
        view = memoryview(buf)
        done = 0
        while done < size:
            n = os.preadv(self._fd, [view[done:]], self.data_start + done)
            if not n:
                raise CorruptCheckpointError(f"{self.path}: file shrank while being read", path=self.path)
            done += n
        return buf

    def map_data(self, *, whole: bool = False) -> np.ndarray:
        """The data section as a private copy-on-write memory map (zero-copy, lazy).

        Writes to the returned memory never reach the file.  ``whole`` is for loads that
        read everything and return long-lived tensors: the kernel is asked to read the
        whole file ahead, and the mapping keeps no file descriptor open.
        """
        if self.file_size == self.data_start:
            return np.empty(0, dtype=np.uint8)
        if whole:
            buffer = map_private(self._fd, self.file_size, will_need=True)
            if buffer is not None:
                return np.frombuffer(buffer, dtype=np.uint8, offset=self.data_start)
        mm = mmap.mmap(self._fd, 0, access=mmap.ACCESS_COPY, **_MMAP_OPTIONS)
        if whole and _MADV_WILLNEED is not None:
            mm.madvise(_MADV_WILLNEED)
        return np.frombuffer(mm, dtype=np.uint8, offset=self.data_start)

    def buffers(self, *, lazy: bool = False, mmap: bool = True) -> dict[str | None, np.ndarray]:
        """The data section: mapped (lazy, or whole loads where mapping works), else read.

        ``mmap=False`` reads a whole load into private memory instead, for files another
        program may rewrite in place while the loaded tensors are alive.
        """
        if lazy:
            return {None: self.map_data()}
        if mmap and MAP_WHOLE_LOADS:
            try:
                return {None: self.map_data(whole=True)}
            except OSError:  # a file system that cannot map files: read instead
                pass
        return {None: self.read_data()}

    def file_id(self) -> tuple[int, int]:
        """(st_dev, st_ino) of the open file: equal for hard links to the same bytes."""
        st = os.fstat(self._fd)
        return st.st_dev, st.st_ino

    def verify_record(self, record: TensorRecord, base: np.ndarray) -> None:
        if record.checksum is None:
            return
        actual = checksum.digest(base[record.begin : record.end])
        if actual != record.checksum:
            raise CorruptCheckpointError(
                f"{self.path}: tensor {record.name!r} fails its checksum (stored {record.checksum}, computed {actual}): "
                "its bytes are corrupt. Restore the file from a backup or save it again",
                path=self.path, key=record.name,
            )

    def close(self) -> None:
        fd, self._fd = getattr(self, "_fd", -1), -1
        if fd >= 0:
            os.close(fd)

    def __enter__(self) -> "FileSource":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
