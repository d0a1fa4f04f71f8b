"""``ms.open``: lazy, zero-copy access to one tensor at a time."""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from .errors import ModelsafeError
from .format.manifest import TensorRecord
from .loading import add_aliases, decode_metadata, decode_tree, materialize, refuse_pickles
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
            raise KeyError(f"{self.path}: no tensor {key!r}; it holds {len(self)} tensors, see .keys()") from None

    # -- data ------------------------------------------------------------------------
    def _mapped(self) -> dict[str | None, np.ndarray]:
        if self._closed:
            raise ModelsafeError(f"{self.path}: this reader is closed; open the file again with ms.open", path=self.path)
        if self._buffers is None:
            self._buffers = self._source.buffers(lazy=True)
        return self._buffers

    def get(self, key: str, *, framework: str | None = None, map_location: Any = None) -> Any:
        """One tensor, zero-copy from the mapped file where the dtype allows."""
        record = self.record(key)
        if record.kind != "tensor":
            raise KeyError(f"{self.path}: {key!r} is a {record.kind} payload, not a tensor; ms.load returns it in its place in the tree")
        verify = self._verify and record.name not in self._verified
        values = materialize(
            self._source, self._mapped(), [record], framework=framework or self._framework,
            map_location=map_location, verify=verify,
        )
        self._verified.add(record.name)
        return values[record.name]

    def __getitem__(self, key: str) -> Any:
        return self.get(key)

    def load(self, *, map_location: Any = None, allow_pickle: bool = False, trusted: tuple = ()) -> Any:
        """The whole saved tree, like ``ms.load`` (tensors view the mapped file)."""
        refuse_pickles(self._source, allow_pickle)
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
