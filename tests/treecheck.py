"""Deep, type-strict comparison of saved and loaded trees (tensors compared by raw bytes)."""

from __future__ import annotations

import collections
import dataclasses
import math
import struct
import sys
from typing import Any

import numpy as np


def tensor_bytes(t: Any) -> bytes:
    """The raw little-endian bytes of a torch tensor or numpy array, in C order."""
    if isinstance(t, (np.ndarray, np.generic)):
        arr = np.ascontiguousarray(np.asarray(t))
        if arr.dtype.byteorder == ">":
            arr = arr.astype(arr.dtype.newbyteorder("<"))
        return arr.tobytes()
    import torch

    t = t.detach().cpu().resolve_conj().resolve_neg()
    x = torch.empty(t.shape, dtype=t.dtype).copy_(t).reshape(-1)  # fresh strides, whatever the view
    return bytes(x.view(torch.uint8).numpy().tobytes()) if x.numel() else b""


def is_torch(x: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def assert_same(saved: Any, loaded: Any, where: str = "obj") -> None:
    """Assert ``loaded`` equals ``saved`` in type, structure, order, dtype, shape and every bit."""
    if is_torch(saved):
        assert type(loaded) is type(saved), f"{where}: {type(loaded)} != {type(saved)}"
        assert loaded.dtype == saved.dtype, f"{where}: dtype {loaded.dtype} != {saved.dtype}"
        assert tuple(loaded.shape) == tuple(saved.shape), f"{where}: shape {tuple(loaded.shape)} != {tuple(saved.shape)}"
        assert loaded.requires_grad == saved.requires_grad, f"{where}: requires_grad differs"
        assert tensor_bytes(loaded) == tensor_bytes(saved), f"{where}: bytes differ"
        return
    if isinstance(saved, (np.ndarray, np.generic)):
        assert type(loaded) is type(saved), f"{where}: {type(loaded)} != {type(saved)}"
        assert loaded.dtype.newbyteorder("=") == saved.dtype.newbyteorder("="), f"{where}: dtype {loaded.dtype} != {saved.dtype}"
        assert loaded.shape == saved.shape, f"{where}: shape {loaded.shape} != {saved.shape}"
        assert tensor_bytes(loaded) == tensor_bytes(saved), f"{where}: bytes differ"
        return
    assert type(loaded) is type(saved), f"{where}: type {type(loaded).__name__} != {type(saved).__name__}"
    if isinstance(saved, float):
        if math.isnan(saved):
            assert math.isnan(loaded), f"{where}: {loaded!r} is not nan"
        else:
            assert struct.pack("<d", loaded) == struct.pack("<d", saved), f"{where}: {loaded!r} != {saved!r}"
    elif isinstance(saved, dict):
        assert list(loaded.keys()) == list(saved.keys()), f"{where}: keys {list(loaded)} != {list(saved)}"
        for (k1, v1), (k2, v2) in zip(saved.items(), loaded.items()):
            assert type(k1) is type(k2), f"{where}: key {k1!r} came back as {type(k2).__name__}"
            assert_same(v1, v2, f"{where}[{k1!r}]")
        if isinstance(saved, collections.OrderedDict):
            assert getattr(loaded, "_metadata", None) == getattr(saved, "_metadata", None), f"{where}: _metadata differs"
    elif dataclasses.is_dataclass(saved):
        for f in dataclasses.fields(saved):
            assert_same(getattr(saved, f.name), getattr(loaded, f.name), f"{where}.{f.name}")
    elif isinstance(saved, (list, tuple)):
        assert len(loaded) == len(saved), f"{where}: length {len(loaded)} != {len(saved)}"
        if hasattr(saved, "_fields"):
            assert loaded._fields == saved._fields
        for i, (a, b) in enumerate(zip(saved, loaded)):
            assert_same(a, b, f"{where}[{i}]")
    elif isinstance(saved, (set, frozenset)):
        assert loaded == saved, f"{where}: {loaded!r} != {saved!r}"
        assert {type(x) for x in loaded} == {type(x) for x in saved}
    else:
        assert loaded == saved, f"{where}: {loaded!r} != {saved!r}"
