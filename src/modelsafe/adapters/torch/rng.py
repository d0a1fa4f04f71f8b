"""torch's global generators for the checkpoint ``rng`` block: the CPU one ("torch") and every CUDA device ("cuda")."""

from __future__ import annotations

import base64
import binascii
import warnings
from typing import Any

import torch

_MAX_STATE = 1 << 20  # bytes; torch's CPU state is 5056, a CUDA state 16
_MAX_CUDA_DEVICES = 1024


def _b64(state: torch.Tensor) -> str:
    return base64.b64encode(state.detach().to("cpu", torch.uint8).contiguous().numpy().tobytes()).decode("ascii")


def _state_tensor(entry: Any, what: str) -> torch.Tensor:
    if not isinstance(entry, str) or len(entry) > _MAX_STATE * 4 // 3 + 4:
        raise ValueError(f"{what!r} must be a base64 string of at most {_MAX_STATE} bytes")
    try:
        data = base64.b64decode(entry, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{what!r} is not base64") from None
    # a fresh tensor: torch's set_state misreads a view that does not start its storage
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).clone() if data else torch.empty(0, dtype=torch.uint8)


class CpuRng:
    name = "torch"

    def capture(self) -> str:
        return _b64(torch.get_rng_state())

    def restore(self, state: Any, where: str) -> None:
        torch.set_rng_state(_state_tensor(state, "torch"))


class CudaRng:
    name = "cuda"

    def capture(self) -> list[str] | None:
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            return [_b64(s) for s in torch.cuda.get_rng_state_all()] or None
        return None

    def restore(self, state: Any, where: str) -> None:
        if not isinstance(state, list) or len(state) > _MAX_CUDA_DEVICES:
            raise ValueError("'cuda' must be a list of generator states")
        tensors = [_state_tensor(s, "cuda") for s in state]
        if not tensors:
            return
        if not torch.cuda.is_available():
            warnings.warn("the saved RNG state includes CUDA generators, but CUDA is not available here; "
                          "only the CPU generators were restored", stacklevel=2)
            return
        for device, tensor in enumerate(tensors[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(tensor, device)


RNG = (CpuRng(), CudaRng())
