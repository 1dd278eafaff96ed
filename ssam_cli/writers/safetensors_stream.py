"""A safetensors file written one tensor at a time: the header is laid out from planned shapes first.

Memory stays at one tensor, whatever the file's size; what is written is checked against the layout.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch

CODES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
         torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
         torch.bool: "BOOL"}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * torch.empty((), dtype=self.dtype).element_size()


class StreamingSafetensorsWriter:
    """Writes exactly the planned tensors, in the planned order, into one safetensors file."""

    def __init__(self, path: Path, specs: Sequence[TensorSpec], metadata: Optional[dict[str, str]] = None) -> None:
        self.path = path
        self.specs = list(specs)
        header: dict[str, object] = {"__metadata__": {"format": "pt", **(metadata or {})}}
        offset = 0
        for s in self.specs:
            header[s.name] = {"dtype": CODES[s.dtype], "shape": list(s.shape), "data_offsets": [offset, offset + s.nbytes]}
            offset += s.nbytes
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)
        self.expected_size = 8 + len(blob) + offset
        self._file = open(path, "wb")
        self._file.write(struct.pack("<Q", len(blob)) + blob)
        self._next = 0

    def write(self, name: str, tensor: torch.Tensor) -> None:
        spec = self.specs[self._next]
        if name != spec.name or tuple(tensor.shape) != spec.shape or tensor.dtype != spec.dtype:
            raise RuntimeError(f"{self.path.name}: expected {spec.name} {spec.shape} {spec.dtype} next, "
                               f"got {name} {tuple(tensor.shape)} {tensor.dtype}")
        data = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
        self._file.write(memoryview(data.numpy()))
        self._next += 1

    @property
    def done(self) -> bool:
        return self._next == len(self.specs)

    def close(self) -> None:
        self._file.close()
        if not self.done:
            raise RuntimeError(f"{self.path.name}: closed after {self._next} of {len(self.specs)} tensors")
        if self.path.stat().st_size != self.expected_size:
            raise RuntimeError(f"{self.path.name}: size {self.path.stat().st_size}, expected {self.expected_size}")
