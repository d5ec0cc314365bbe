"""Writing a safetensors file through a hashing writer, straight from the tensors' memory.

The format (https://huggingface.co/docs/safetensors): an 8-byte little-endian header size,
a JSON header naming each tensor's dtype, shape and byte range in the data that follows,
padded with spaces to a multiple of 8, then the tensors' bytes back to back. The file is
read back by `safetensors.torch.load_file`, which checks that the ranges tile the data.

Writing it here rather than with `safetensors.torch.save_file` lets the store hash the bytes
as they are written (`Transaction.open_hashed`), so the commit never reads the file back.
The tensors are written from their own memory (no copy); small ones are gathered into one
write so a model of many small tensors costs few system calls.
"""

from __future__ import annotations

import ctypes
import json
import struct
from collections.abc import Mapping

import torch

from stalwart.checkpoint.hashed import HashedFile

DTYPE_NAMES: Mapping[torch.dtype, str] = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
"""safetensors' names for the dtypes `tree.SAFETENSORS_DTYPES` sends to these files."""

GATHER_BYTES = 1024 * 1024
"""Tensors smaller than this are gathered into one write of up to this size."""


def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """The bytes of a contiguous CPU tensor, without a copy (valid while it lives)."""
    if tensor.device.type != "cpu" or not tensor.is_contiguous():
        raise ValueError("safetensors data must be a contiguous CPU tensor")
    nbytes = tensor.numel() * tensor.element_size()
    if nbytes == 0:
        return memoryview(b"")
    return memoryview((ctypes.c_ubyte * nbytes).from_address(tensor.data_ptr())).cast("B")


def header_bytes(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> bytes:
    """The size prefix and the JSON header for `tensors`, laid out in their order."""
    header: dict[str, object] = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for name, tensor in tensors.items():
        try:
            dtype = DTYPE_NAMES[tensor.dtype]
        except KeyError:
            raise ValueError(f"{name}: dtype {tensor.dtype} has no safetensors name") from None
        nbytes = tensor.numel() * tensor.element_size()
        header[name] = {
            "dtype": dtype,
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text


def write_safetensors(
    out: HashedFile, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]
) -> None:
    """Write `tensors` (contiguous, on the CPU) as one safetensors file into `out`."""
    out.write(header_bytes(tensors, metadata))
    gathered = bytearray()
    for tensor in tensors.values():
        data = tensor_bytes(tensor)
        if data.nbytes >= GATHER_BYTES:
            if gathered:
                out.write(gathered)
                gathered = bytearray()
            out.write(data)
            continue
        gathered += data
        if len(gathered) >= GATHER_BYTES:
            out.write(gathered)
            gathered = bytearray()
    if gathered:
        out.write(gathered)
