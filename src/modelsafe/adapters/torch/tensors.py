"""PyTorch adapter: tensors and parameters of every dtype, any device, with map_location."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from ...errors import InvalidArgumentError, UnsupportedObjectError
from ...format import dtypes
from .. import LoadOptions, TensorInfo, TensorSpec

_TORCH_DTYPES: dict[str, torch.dtype] = {}
for _name in dtypes.BY_NAME:
    _dt = getattr(torch, _name, None)
    if isinstance(_dt, torch.dtype):
        _TORCH_DTYPES[_name] = _dt
_NAMES = {v: k for k, v in _TORCH_DTYPES.items()}
# dtypes whose tensors convert to numpy directly (cheapest path to bytes)
_NUMPY_COMPATIBLE = {
    torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64,
    torch.float16, torch.float32, torch.float64, torch.complex64, torch.complex128,
    torch.uint16, torch.uint32, torch.uint64,
}


def torch_dtype(name: str) -> torch.dtype:
    try:
        return _TORCH_DTYPES[name]
    except KeyError:
        raise UnsupportedObjectError(f"this torch build has no dtype {name}; upgrade torch or load with framework='numpy'") from None


class TorchAdapter:
    framework = "torch"

    def handles(self, tp: type) -> bool:
        return issubclass(tp, torch.Tensor)

    def describe(self, obj: torch.Tensor) -> TensorInfo:
        if obj.layout is not torch.strided or obj.is_quantized or obj.is_meta:
            self._refuse(obj)
        name = _NAMES.get(obj.dtype)
        if name is None:
            raise UnsupportedObjectError(f"torch dtype {obj.dtype} is not supported by the format")
        attrs: dict[str, Any] = {}
        tp = type(obj)
        if tp is not torch.Tensor and isinstance(obj, torch.nn.Parameter):
            attrs["parameter"] = True
            if not obj.requires_grad:
                attrs["requires_grad"] = False
        elif obj.requires_grad:
            attrs["requires_grad"] = True
        if not obj.is_cpu:
            attrs["device"] = str(obj.device)
        shape = tuple(obj.shape)
        identity = storage = view = None
        if obj.numel():
            address, offset, stride, device, conj, neg = (obj.data_ptr(), obj.storage_offset(), obj.stride(), obj.device,
                                                          obj.is_conj(), obj.is_neg())
            storage = ("torch", address - offset * obj.element_size(), device)  # where the storage starts
            if not (conj or neg):  # those read their memory as other values: never rebuilt as views
                view = (offset, stride)
            # conj/neg views read the same memory with different values; a Parameter and a plain
            # tensor over the same memory come back as different types: none of these are ties
            identity = ("torch", address, obj.dtype, shape, stride, device, conj, neg, type(obj), obj.requires_grad)
        return TensorInfo(name, shape, identity, attrs, storage, view)

    @staticmethod
    def _refuse(obj: torch.Tensor) -> None:
        if obj.layout != torch.strided:
            raise UnsupportedObjectError(
                f"torch tensors with layout {obj.layout} are not stored; convert with .to_dense() first"
            )
        if obj.is_quantized:
            raise UnsupportedObjectError("quantized torch tensors are not stored; dequantize() first or use allow_pickle=True")
        raise UnsupportedObjectError("meta tensors hold no data; materialize the tensor before saving")

    def host_bytes(self, obj: torch.Tensor) -> memoryview:
        if (  # the common case, checked cheaply: a dense CPU tensor numpy can view without a copy
            obj.is_cpu and not obj.requires_grad and obj.dtype in _NUMPY_COMPATIBLE and obj.is_contiguous()
            and obj.dim() and obj.numel() and not obj.is_conj() and not obj.is_neg()
        ):
            return memoryview(obj.numpy()).cast("B")
        t = obj.detach()
        if t.device.type != "cpu":
            t = t.to("cpu")
        if t.is_conj():
            t = t.resolve_conj()
        if t.is_neg():
            t = t.resolve_neg()
        if not t.is_contiguous():
            t = t.contiguous()
        if not t.numel():  # empty views may keep odd strides that .view(uint8) rejects
            return memoryview(b"")
        if t.dtype in _NUMPY_COMPATIBLE and t.dim():
            return memoryview(t.numpy()).cast("B")
        flat = t.reshape(-1)
        if flat.stride(0) != 1:  # a contiguous one-element view may keep any stride
            flat = flat.as_strided((flat.numel(),), (1,))
        return memoryview(flat.view(torch.uint8).numpy())

    def view_of(self, base: torch.Tensor, offset: int, shape: tuple[int, ...], strides: tuple[int, ...]) -> torch.Tensor:
        return base.as_strided(shape, strides, base.storage_offset() + offset)

    def from_buffer(self, base: np.ndarray, specs: Sequence[TensorSpec], options: LoadOptions) -> list:
        # Each tensor gets a storage of its own over its bytes (storage_offset 0): torch.save of
        # one loaded tensor then writes that tensor only, and APIs that read a storage from its
        # start (torch.set_rng_state) see the right bytes.
        address = base.ctypes.data if base.size else 0
        kinds: dict[str, tuple[torch.dtype, int]] = {}   # per call: dtype name -> (torch dtype, item size)
        map_location = options.map_location
        frombuffer = torch.frombuffer
        out = []
        for spec in specs:
            kind = kinds.get(spec.dtype)
            if kind is None:
                kind = kinds[spec.dtype] = (torch_dtype(spec.dtype), dtypes.BY_NAME[spec.dtype].itemsize)
            dt, size = kind
            if spec.nbytes == 0:
                t = torch.empty(spec.shape, dtype=dt)
            elif options.copy or (address + spec.offset) % size:
                chunk = torch.from_numpy(base[spec.offset : spec.offset + spec.nbytes]).clone()  # torch's 64-aligned memory
                t = chunk.view(dt).view(spec.shape)
            else:
                t = frombuffer(base, dtype=dt, count=spec.nbytes // size, offset=spec.offset)
                if len(spec.shape) != 1:
                    t = t.view(spec.shape)
            out.append(t if map_location is None and not spec.attrs else _restore(t, spec.attrs, map_location))
        return out


def _available(device: str) -> bool:
    """True when this process has ``device`` (a validated name such as "cuda:1"); imports nothing."""
    kind, _, index = device.partition(":")
    number = int(index) if index else 0
    if kind == "cuda":
        return torch.cuda.is_available() and number < torch.cuda.device_count()
    if kind == "mps":
        return number == 0 and torch.backends.mps.is_available()
    if kind == "xpu":
        xpu = getattr(torch, "xpu", None)
        return xpu is not None and xpu.is_available() and number < xpu.device_count()
    return False


def _hinted_device(saved: str) -> str:
    """Where a tensor goes when the caller did not say: its saved device when this process has it, else the CPU.

    The device a file names is only a hint: a file cannot make the loader import a
    backend module ("hpu"), hand out tensors without data ("meta") or fail on a
    machine without the saved accelerator.
    """
    return saved if saved != "cpu" and _available(saved) else "cpu"


def _target_device(saved: str, map_location: Any) -> Any:
    if isinstance(map_location, (str, torch.device)):
        return map_location
    if isinstance(map_location, dict) and saved in map_location:
        return map_location[saved]
    if map_location is None or isinstance(map_location, dict):
        return _hinted_device(saved)
    raise InvalidArgumentError(
        f"map_location must be a device ('cpu', 'cuda:0', a torch.device), a dict of saved to target devices, "
        f"or a function (tensor, saved_device) -> tensor, as in torch.load; not {map_location!r}"
    )


def _place(t: torch.Tensor, saved_device: str, map_location: Any) -> torch.Tensor:
    if callable(map_location) and not isinstance(map_location, (str, torch.device, dict)):
        moved = map_location(t, saved_device)
        return t if moved is None else moved
    device = _target_device(saved_device, map_location)
    if str(device) == "cpu":
        return t
    try:
        return t.to(device)
    except (RuntimeError, AssertionError, ValueError, TypeError) as exc:  # torch's errors for a device it lacks
        raise InvalidArgumentError(
            f"map_location={map_location!r}: cannot place tensors on {device!r} ({exc}); "
            "pass a device this machine has, e.g. map_location='cpu'"
        ) from None


def _restore(t: torch.Tensor, attrs: dict, map_location: Any) -> torch.Tensor:
    # attrs were validated when the file was opened (format.manifest.check_attrs)
    t = _place(t, attrs.get("device", "cpu"), map_location)
    if attrs.get("parameter"):
        return torch.nn.Parameter(t, requires_grad=attrs.get("requires_grad", True))
    if attrs.get("requires_grad"):
        t.requires_grad_(True)
    return t


ADAPTER = TorchAdapter()
