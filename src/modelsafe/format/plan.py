"""The typed plan between the tree and the writer: a :class:`FlatState` of :class:`Payload` records.

``tree.flatten`` produces a FlatState; the format writer, checkpoint shards, async
snapshots, fork/export copies and convert consume one, and nothing else (the way
``torch.distributed.checkpoint`` hands ``WriteItem`` records to its storage writer).
Records are frozen: a stage that changes something (a snapshot copying the bytes
out, a shard taking some payloads) makes new records.

>>> import numpy as np
>>> p = Payload.of_bytes("blob", b"abc")
>>> (p.kind, p.dtype, p.shape, p.nbytes, bytes(p.host_bytes()))
('bytes', 'uint8', (3,), 3, b'abc')
>>> FlatState.of_payloads([p]).skeleton
{'dict': [['blob', {'bytes': 'blob'}]]}
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Callable, Hashable, Mapping, NamedTuple

from ..treepath import format_path
from .dtypes import BY_NAME

__all__ = ["Payload", "FlatState", "KINDS"]

KINDS = ("tensor", "bytes", "pickle")
NO_ATTRS: Mapping[str, Any] = MappingProxyType({})


class Payload(NamedTuple):
    """One payload of a file: a tensor, a bytes object or a pickled object, with where its bytes come from.

    ``read(value)`` gives the payload's C-contiguous little-endian bytes (for a tensor,
    its adapter's ``host_bytes``, a copy only when needed; for bytes, ``memoryview``),
    called once, right before the bytes are hashed and written.  ``framework`` is None
    for bytes and pickles.  ``attrs`` are JSON values the framework's adapter restores
    (requires_grad, ...).  ``storage`` and ``view`` say where a tensor lies in memory
    other tensors may share (the memory's key; offset and strides in elements): tensors
    of one storage whose spans overlap come back as views of one base
    (``format.manifest.plan_views``).
    ``checksum``: the xxh3 of the bytes when already known (payloads copied from a
    verified checkpoint); the writer then does not hash them again.  ``where``: the
    tree path, for messages.

    A NamedTuple rather than a frozen dataclass: as immutable, and built 4x faster
    (1.8 us against 8.1 us a record, measured on the busy 2-core machine), which
    flattening a 20,000-tensor optimizer state notices.
    """

    name: str
    kind: str
    dtype: str
    shape: tuple[int, ...]
    framework: str | None
    value: Any
    read: Callable[[Any], memoryview]
    attrs: Mapping[str, Any]
    storage: Hashable | None = None
    view: tuple[int, tuple[int, ...]] | None = None
    checksum: str | None = None
    where: tuple | str = ()

    @classmethod
    def of_bytes(cls, name: str, data: bytes | bytearray | memoryview, *, kind: str = "bytes",
                 where: tuple | str = (), checksum: str | None = None) -> "Payload":
        """A bytes (or pickle) payload holding ``data`` (which must not change until it is written)."""
        return cls(name, kind, "uint8", (len(data),), None, data, memoryview, NO_ATTRS, where=where, checksum=checksum)

    @property
    def nbytes(self) -> int:
        return BY_NAME[self.dtype].itemsize * math.prod(self.shape)

    @property
    def path(self) -> str:
        """The tree path, as Python would index it: ``obj["model"]["w"]``."""
        return self.where if isinstance(self.where, str) else format_path(self.where)

    def host_bytes(self) -> memoryview:
        return self.read(self.value)

    def holding(self, data: Any, *, name: str | None = None, where: tuple | str | None = None) -> "Payload":
        """The same payload with its bytes taken from ``data`` (a private copy: snapshots, copies)."""
        return self._replace(value=data, read=memoryview, name=self.name if name is None else name,
                             where=self.where if where is None else where)


@dataclass(frozen=True, slots=True)
class FlatState:
    """A flattened object tree: the JSON skeleton, its payloads in tree order, tied names (alias -> stored name)."""

    skeleton: Any
    payloads: tuple[Payload, ...]
    aliases: Mapping[str, str]

    @classmethod
    def of_payloads(cls, payloads: Any, aliases: Mapping[str, str] | None = None) -> "FlatState":
        """A flat dict of ``payloads`` by name (checkpoint shards, plain safetensors files)."""
        payloads = tuple(payloads)
        return cls({"dict": [[p.name, {p.kind: p.name}] for p in payloads]}, payloads, aliases or NO_ATTRS)

    @property
    def nbytes(self) -> int:
        """Bytes of all payloads (what a writer writes besides the header)."""
        return sum(p.nbytes for p in self.payloads)
