"""``ms.open``: lazy, zero-copy access to one tensor at a time."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Iterator

import numpy as np

from .errors import InvalidArgumentError, ModelsafeError, TensorKeyError
from .format.manifest import TensorRecord
from .loading import (
    add_aliases,
    buffers_on_demand,
    decode_metadata,
    decode_tree,
    fetch_records,
    materialize,
    refuse_pickles,
    unsupported_dtype,
)
from .tree import walk_refs


class Reader:
    """A file or checkpoint opened for reading; tensors are mapped, verified and built on access.

    ``keys()`` lists tensor names (tied names included) in the order of the saved
    tree; ``reader[key]`` returns one tensor; ``metadata`` is the user metadata;
    ``manifest`` the raw manifest dict.
    """

    def __init__(self, source: Any, *, framework: str | None = None, verify: bool = True) -> None:
        self._source = source
        self._framework = framework
        self._verify = verify
        self._buffers: dict[str | None, np.ndarray] | None = None
        self._verified: set[str] = set()
        self._keys: list[str] | None = None
        self._closed = False

    # -- description ---------------------------------------------------------------
    @property
    def path(self) -> str:
        return self._source.path

    @property
    def manifest(self) -> dict:
        return self._source.manifest

    @property
    def metadata(self) -> Any:
        return decode_metadata(self._source)

    @property
    def records(self) -> dict[str, TensorRecord]:
        return self._source.records

    def keys(self) -> list[str]:
        if self._keys is None:
            records, aliases = self._source.records, self._source.aliases
            seen: set[str] = set()
            order: list[str] = []
            for tag, name in walk_refs(self._source.manifest.get("tree")):
                if tag == "tensor" and name not in seen:
                    seen.add(name)
                    order.append(name)
            for alias, target in aliases.items():
                if alias not in seen:
                    seen.add(alias)
                    order.append(alias)
            order.extend(n for n, r in records.items() if r.kind == "tensor" and n not in seen)
            self._keys = [n for n in order if n in records or n in aliases]
        return list(self._keys)

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.keys())

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str):
            return False
        record = self._source.records.get(self._source.aliases.get(key, key))
        return record is not None and record.kind == "tensor"  # as keys(): bytes/pickle payloads are not tensors

    def record(self, key: str) -> TensorRecord:
        name = self._source.aliases.get(key, key)
        try:
            return self._source.records[name]
        except KeyError:
            raise TensorKeyError(f"{self.path}: no tensor {key!r}; it holds {len(self)} tensors, see .keys()",
                                 path=self.path, key=key) from None

    # -- data ------------------------------------------------------------------------
    def _mapped(self) -> dict[str | None, np.ndarray]:
        if self._closed:
            raise ModelsafeError(f"{self.path}: this reader is closed; open the file again with ms.open", path=self.path)
        if self._buffers is None:
            self._buffers = buffers_on_demand(self._source)  # a remote file: filled by _fetch
        return self._buffers

    def _fetch(self, records: Any) -> None:
        """Bring the bytes of ``records`` in where the source reads on demand (remote files: range requests)."""
        fetch_records(self._source, records)

    def get(self, key: str, *, framework: str | None = None, map_location: Any = None) -> Any:
        """One tensor, zero-copy from the mapped file where the dtype allows."""
        record = self.record(key)
        if record.kind != "tensor":
            raise TensorKeyError(f"{self.path}: {key!r} is a {record.kind} payload, not a tensor; "
                                 "ms.load returns it in its place in the tree", path=self.path, key=key)
        verify = self._verify and record.name not in self._verified
        self._fetch([record])
        values = materialize(
            self._source, self._mapped(), [record], framework=framework or self._framework,
            map_location=map_location, verify=verify,
        )
        self._verified.add(record.name)
        return values[record.name]

    def __getitem__(self, key: str) -> Any:
        return self.get(key)

    def get_slice(self, key: str, *, framework: str | None = None, map_location: Any = None) -> "TensorSlice":
        """Part of one tensor, read without reading the rest (as safetensors' ``get_slice``).

        Only the bytes of the selected elements are read from the mapped file, so the
        tensor's checksum is not verified (it covers the whole payload); use
        ``reader[key]`` or ``modelsafe verify`` for a checked read.

        >>> import numpy as np, tempfile, os, modelsafe as ms
        >>> p = os.path.join(tempfile.mkdtemp(), "w.safetensors")
        >>> ms.save({"w": np.arange(12.0).reshape(3, 4)}, p)
        >>> with ms.open(p) as r:
        ...     part = r.get_slice("w")
        ...     part.get_shape(), part.get_dtype(), part[1:, 2]
        ([3, 4], 'F64', array([ 6., 10.]))
        """
        record = self.record(key)
        if record.kind != "tensor":
            raise TensorKeyError(f"{self.path}: {key!r} is a {record.kind} payload, not a tensor", path=self.path, key=key)
        return TensorSlice(self, record, framework or self._framework, map_location)

    def load(self, *, map_location: Any = None, allow_pickle: bool = False, trusted: tuple = ()) -> Any:
        """The whole saved tree, like ``ms.load`` (tensors view the mapped file)."""
        refuse_pickles(self._source, allow_pickle)
        self._fetch(self._source.records.values())
        values = materialize(
            self._source, self._mapped(), self._source.records.values(), framework=self._framework,
            map_location=map_location, verify=self._verify,
        )
        add_aliases(values, self._source.aliases)
        return decode_tree(self._source, values, allow_pickle=allow_pickle, trusted=trusted)

    def close(self) -> None:
        self._closed = True
        self._buffers = None
        self._source.close()

    def __enter__(self) -> "Reader":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<modelsafe.Reader {self.path!r}: {len(self)} tensors>"


class TensorSlice:
    """One tensor of an open file, indexed like safetensors' ``get_slice``: ints and slices
    (positive steps) per dimension and ``...``; ``get_shape()`` and ``get_dtype()``."""

    def __init__(self, reader: Reader, record: TensorRecord, framework: str | None, map_location: Any) -> None:
        self._reader = reader
        self._record = record
        self._framework = framework
        self._map_location = map_location

    def get_shape(self) -> list[int]:
        return list(self._record.shape)

    def get_dtype(self) -> str:
        """The safetensors code of the dtype (the logical name where safetensors has no code)."""
        dtype = self._record.dtype
        return dtype.name if dtype.stored_as_bytes else dtype.storage

    def __getitem__(self, index: Any) -> Any:
        record = self._record
        if not record.dtype.supported:
            raise unsupported_dtype(self._reader._source, record)
        index = self._checked(index if isinstance(index, tuple) else (index,))
        self._reader._fetch([record])
        payload = self._reader._mapped()[record.file][record.begin : record.end]
        # one trailing axis of bytes per element: works for every dtype, numpy-known or not
        grid = payload.reshape(*record.shape, record.dtype.itemsize)
        try:
            part = grid[index + (slice(None),)]
        except IndexError as exc:
            raise self._bad_index(index, str(exc)) from None
        part = np.ascontiguousarray(part)  # reads the selected elements' bytes only
        piece = replace(record, shape=part.shape[:-1], begin=0, end=part.nbytes, checksum=None,
                        attrs={k: v for k, v in record.attrs.items() if k == "device"})
        values = materialize(self._reader._source, {record.file: part.reshape(-1)}, [piece],
                             framework=self._framework, map_location=self._map_location, verify=False)
        return values[record.name]

    def _checked(self, index: tuple) -> tuple:
        ellipses = sum(1 for i in index if i is Ellipsis)
        axes = sum(1 for i in index if i is not Ellipsis)
        if ellipses > 1 or axes > len(self._record.shape):
            raise self._bad_index(index, f"too many indices for a tensor of {len(self._record.shape)} dimensions")
        for i in index:
            if i is Ellipsis or (isinstance(i, int) and not isinstance(i, bool)):
                continue
            if not isinstance(i, slice) or not all(v is None or (isinstance(v, int) and not isinstance(v, bool))
                                                   for v in (i.start, i.stop, i.step)):
                raise self._bad_index(index, f"{i!r} is not an int, a slice of ints or ...")
            if i.step is not None and i.step <= 0:
                raise self._bad_index(index, "a slice step must be greater than zero")
        return index

    def _bad_index(self, index: tuple, why: str) -> InvalidArgumentError:
        return InvalidArgumentError(
            f"{self._reader.path}: get_slice({self._record.name!r})[{index!r}]: {why}; "
            f"the tensor's shape is {list(self._record.shape)}",
            path=self._reader.path, key=self._record.name,
        )
