"""Async saves: a private copy of one CPU tensor, in the caller's thread (see :mod:`modelsafe.async_save`)."""

from __future__ import annotations

from typing import Any

import torch

# torch dtype -> whether the fast copy handles it (looked up once per dtype)
_PLAIN_DTYPES: dict[Any, bool] = {}


def snapshot(t: torch.Tensor, memo: dict) -> torch.Tensor | None:
    """A copy of ``t`` (tied views stay tied through ``memo``); None when it needs the general path."""
    dtype = t.dtype
    plain = _PLAIN_DTYPES.get(dtype)
    if plain is None:
        # quantized and complex (conj/neg views) tensors take the general path
        plain = _PLAIN_DTYPES[dtype] = not (dtype.is_complex or str(dtype).startswith("torch.q"))
    if not plain or not t.is_cpu or t.layout is not torch.strided:
        return None
    address = t.data_ptr()
    seen = memo.get(address) if address else None
    if seen is not None:  # tied views stay tied: one copy per distinct view, as the flattener sees them
        for original, copy in seen:
            if original.dtype == dtype and original.shape == t.shape and original.stride() == t.stride():
                return copy
    copy = t.detach().clone() if t.requires_grad else t.clone()
    if type(t) is not torch.Tensor:
        if type(t) is not torch.nn.Parameter:
            return None
        copy = torch.nn.Parameter(copy, requires_grad=t.requires_grad)
    elif t.requires_grad:
        copy.requires_grad_(True)
    if address:
        memo.setdefault(address, []).append((t, copy))
    return copy
