"""A training state split into tensors (for safetensors) and a small skeleton (for torch.save).

The skeleton keeps the structure (dicts, lists, tuples, numbers, strings) and replaces each
tensor by a reference `{TENSOR_TAG: key}`; it holds only types that
`torch.load(weights_only=True)` accepts, so the check happens when saving, not when a
resume finds an unloadable checkpoint. Tensors that are the same view of the same memory
(tied weights) are stored once, under the first name met.
"""

from __future__ import annotations

import collections
import ctypes
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

try:
    import numpy as np
except ImportError:  # pragma: no cover - numpy is optional
    np = None  # type: ignore[assignment]

TENSOR_TAG = "__stalwart_tensor__"
NDARRAY_TAG = "__stalwart_ndarray__"

SAFETENSORS_DTYPES = frozenset(
    (
        torch.float64,
        torch.float32,
        torch.float16,
        torch.bfloat16,
        torch.int64,
        torch.int32,
        torch.int16,
        torch.int8,
        torch.uint8,
        torch.bool,
    )
)
"""Dtypes written to safetensors; any other tensor (rare, small) stays in the skeleton."""

_SCALARS = (type(None), bool, int, float, complex, str, bytes, bytearray)
_TORCH_SCALARS = (torch.dtype, torch.device, torch.Size)


@dataclass(frozen=True)
class Flattened:
    """A state split in two. `tensors` are the live tensors (not copied), unique by key."""

    skeleton: Any
    tensors: dict[str, torch.Tensor]


def _identity(tensor: torch.Tensor) -> tuple[object, ...] | None:
    """Same key: the same view of the same memory (e.g. tied weights)."""
    if tensor.numel() == 0:
        return None
    ptr = tensor.untyped_storage().data_ptr()
    if ptr == 0:
        return None
    return (
        tensor.device,
        ptr,
        tensor.storage_offset(),
        tuple(tensor.shape),
        tuple(tensor.stride()),
        tensor.dtype,
    )


def storable(tensor: torch.Tensor) -> bool:
    """Whether the tensor goes to safetensors (dense, a supported dtype, has memory)."""
    return (
        tensor.layout is torch.strided
        and tensor.dtype in SAFETENSORS_DTYPES
        and not tensor.is_meta
        and not tensor.is_quantized
    )


class _Flattener:
    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}
        self.names: dict[tuple[object, ...], str] = {}

    def name(self, path: tuple[str, ...]) -> str:
        base = "/".join(path) or "tensor"
        name, n = base, 1
        while name in self.tensors:
            n += 1
            name = f"{base}#{n}"
        return name

    def tensor(self, tensor: torch.Tensor, path: tuple[str, ...]) -> Any:
        tensor = tensor.detach()
        if not storable(tensor):
            # Small odd tensors (sparse, uint32, complex) go into the skeleton, copied now so
            # an asynchronous save never sees later updates.
            return tensor.to("cpu", copy=True)
        identity = _identity(tensor)
        if identity is not None and identity in self.names:
            return {TENSOR_TAG: self.names[identity]}
        name = self.name(path)
        self.tensors[name] = tensor
        if identity is not None:
            self.names[identity] = name
        return {TENSOR_TAG: name}

    def visit(self, value: Any, path: tuple[str, ...]) -> Any:
        if isinstance(value, torch.Tensor):
            return self.tensor(value, path)
        if np is not None and isinstance(value, np.ndarray):
            if value.dtype.hasobject:
                raise TypeError(f"cannot checkpoint {_where(path)}: a numpy array of objects")
            tensor = torch.from_numpy(np.ascontiguousarray(value).copy())
            return {NDARRAY_TAG: self.visit(tensor, path)}
        if np is not None and isinstance(value, np.generic):
            return value.item()  # before the scalars: np.float64 is a float, but pickles as numpy
        if isinstance(value, (*_SCALARS, *_TORCH_SCALARS)):
            return bytes(value) if isinstance(value, bytearray) else value
        if isinstance(value, Mapping):
            if TENSOR_TAG in value or NDARRAY_TAG in value:
                raise ValueError(f"cannot checkpoint {_where(path)}: the key is reserved")
            items = []
            for key, item in value.items():
                if not isinstance(key, (*_SCALARS, tuple)):
                    raise TypeError(
                        f"cannot checkpoint {_where(path)}: a dict key of type "
                        f"{type(key).__qualname__} (use str, int, float or tuple keys)"
                    )
                items.append((key, self.visit(item, (*path, str(key)))))
            if isinstance(value, collections.OrderedDict):
                return collections.OrderedDict(items)
            return dict(items)
        if isinstance(value, list):
            return [self.visit(item, (*path, str(i))) for i, item in enumerate(value)]
        if isinstance(value, tuple):
            return tuple(self.visit(item, (*path, str(i))) for i, item in enumerate(value))
        if isinstance(value, set) and all(isinstance(item, _SCALARS) for item in value):
            return set(value)
        raise TypeError(
            f"cannot checkpoint {_where(path)}: a {type(value).__qualname__}; a state_dict() "
            "may hold tensors, numpy arrays, numbers, strings, bytes, and dicts, lists, "
            "tuples and sets of them (torch.load(weights_only=True) refuses anything else)"
        )


def _where(path: tuple[str, ...]) -> str:
    return "/".join(path) or "the state"


def flatten(state: Any) -> Flattened:
    """Split `state` into a skeleton and its tensors (live; copy them before training goes on)."""
    flattener = _Flattener()
    skeleton = flattener.visit(state, ())
    return Flattened(skeleton, flattener.tensors)


def unflatten(skeleton: Any, tensors: Mapping[str, torch.Tensor], *, where: str) -> Any:
    """Put the tensors back into the skeleton; a reference to a missing key is a ValueError."""

    def visit(value: Any) -> Any:
        if isinstance(value, dict):
            if len(value) == 1 and TENSOR_TAG in value:
                key = value[TENSOR_TAG]
                if not isinstance(key, str) or key not in tensors:
                    raise ValueError(f"{where}: refers to tensor {key!r}, which is not stored")
                return tensors[key]
            if len(value) == 1 and NDARRAY_TAG in value:
                tensor = visit(value[NDARRAY_TAG])
                if np is None or not isinstance(tensor, torch.Tensor):
                    raise ValueError(f"{where}: a numpy array, but numpy is not installed")
                return tensor.cpu().numpy()
            items = [(key, visit(item)) for key, item in value.items()]
            if isinstance(value, collections.OrderedDict):
                return collections.OrderedDict(items)
            return dict(items)
        if isinstance(value, list):
            return [visit(item) for item in value]
        if isinstance(value, tuple):
            return tuple(visit(item) for item in value)
        return value

    return visit(skeleton)


class SnapshotBuffers:
    """CPU copies of a state's tensors, kept from one save to the next.

    Reusing them makes a snapshot a plain memory copy: fresh memory costs page faults on
    first touch, several times the copy itself. On CUDA they are pinned, so the device to
    host copy runs asynchronously; `copy` returns events to wait on before reading them.
    """

    def __init__(self) -> None:
        self._buffers: dict[str, torch.Tensor] = {}
        self.allocations = 0
        """Buffers allocated so far (the first save allocates, later ones reuse)."""

    @property
    def nbytes(self) -> int:
        """Memory held by the buffers."""
        return sum(buffer.numel() * buffer.element_size() for buffer in self._buffers.values())

    def targets(self, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The buffer for each tensor: kept from the previous save while its shape and dtype
        stay the same, allocated otherwise; buffers of tensors no longer there are freed."""
        targets: dict[str, torch.Tensor] = {}
        for key, tensor in tensors.items():
            buffer = self._buffers.get(key)
            if buffer is None or buffer.shape != tensor.shape or buffer.dtype != tensor.dtype:
                buffer = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=tensor.is_cuda)
                self._buffers[key] = buffer
                self.allocations += 1
            targets[key] = buffer
        for stale in set(self._buffers) - set(tensors):
            del self._buffers[stale]
        return targets

    def copy(
        self, tensors: Mapping[str, torch.Tensor]
    ) -> tuple[dict[str, torch.Tensor], list[Any]]:
        copies = self.targets(tensors)
        devices: set[torch.device] = set()
        with torch.no_grad():
            for key, tensor in tensors.items():
                copy_into(copies[key], tensor)
                if tensor.is_cuda:
                    devices.add(tensor.device)
        events = []
        for device in devices:
            event = torch.cuda.Event()  # type: ignore[no-untyped-call]
            event.record(torch.cuda.current_stream(device))
            events.append(event)
        return copies, events

    def prefault(self) -> None:
        """Touch every CPU buffer's pages once (in the caller's thread; ctypes releases the
        GIL): the first save then copies into memory that is already there."""
        for buffer in list(self._buffers.values()):
            if buffer.device.type == "cpu" and not buffer.is_pinned() and buffer.numel():
                ctypes.memset(buffer.data_ptr(), 0, buffer.numel() * buffer.element_size())

    def clear(self) -> None:
        self._buffers.clear()


def copy_into(buffer: torch.Tensor, tensor: torch.Tensor) -> None:
    """Copy `tensor` into `buffer` (same shape and dtype); from CUDA, asynchronously on the
    current stream (the caller records an event after it)."""
    with torch.no_grad():
        if tensor.device.type == "cpu" and tensor.is_contiguous():
            # One plain memcpy: torch's copy_ splits large copies over the intra-op threads,
            # which stalls on a preempted thread when cores are busy.
            ctypes.memmove(buffer.data_ptr(), tensor.data_ptr(), tensor.numel() * tensor.itemsize)
        else:
            buffer.copy_(tensor, non_blocking=tensor.is_cuda)


def for_direct_write(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors as safetensors can write them while training waits: on the CPU,
    contiguous, no two sharing memory (copied only where one of these does not hold)."""
    owners: collections.Counter[tuple[torch.device, int]] = collections.Counter()
    for tensor in tensors.values():
        if tensor.numel():
            owners[(tensor.device, tensor.untyped_storage().data_ptr())] += 1
    ready: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for key, tensor in tensors.items():
            shared = tensor.numel() > 0 and (
                owners[(tensor.device, tensor.untyped_storage().data_ptr())] > 1
            )
            if tensor.device.type == "cpu" and tensor.is_contiguous() and not shared:
                ready[key] = tensor
            else:
                ready[key] = torch.empty(tensor.shape, dtype=tensor.dtype).copy_(tensor)
    return ready
