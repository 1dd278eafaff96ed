"""A safetensors file written one tensor at a time: the header is laid out from planned shapes first.

Memory stays at one tensor, whatever the file's size; what is written is checked against the layout. The bytes
are hashed as they are written (sha256, recorded in ssam_cli/digests.py), so the manifest never reads them back.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Optional, Sequence

import torch

from ssam_cli import digests
from ssam_cli.dtypes import SAFETENSORS_CODES

CHUNK = 16 << 20  # bytes per read when copying from a file


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
            header[s.name] = {"dtype": SAFETENSORS_CODES[s.dtype], "shape": list(s.shape), "data_offsets": [offset, offset + s.nbytes]}
            offset += s.nbytes
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)
        self.expected_size = 8 + len(blob) + offset
        self._file = open(path, "wb")
        self._sha = hashlib.sha256()
        self._put(struct.pack("<Q", len(blob)) + blob)
        self._next = 0

    def _put(self, data: bytes | memoryview) -> None:
        self._sha.update(data)  # releases the GIL for large buffers: overlaps the workers' compute
        self._file.write(data)

    def write(self, name: str, tensor: torch.Tensor) -> None:
        self._expect(name, tuple(tensor.shape), tensor.dtype)
        data = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
        self._put(memoryview(data.numpy()))
        self._next += 1

    def copy(self, name: str, source: BinaryIO, offset: int) -> None:
        """Write the next planned tensor from raw bytes at `offset` of an open file, through a bounded buffer
        (CHUNK bytes), so that data spilled to disk earlier never comes back into memory whole."""
        spec = self._expect(name, None, None)
        done = 0
        while done < spec.nbytes:
            block = os.pread(source.fileno(), min(spec.nbytes - done, CHUNK), offset + done)
            if not block:
                raise RuntimeError(f"{self.path.name}: source ended inside {name}")
            self._put(block)
            done += len(block)
        self._next += 1

    def _expect(self, name: str, shape: Optional[tuple[int, ...]], dtype: Optional[torch.dtype]) -> TensorSpec:
        if self._next >= len(self.specs):
            raise RuntimeError(f"{self.path.name}: {name} is beyond the {len(self.specs)} planned tensors")
        spec = self.specs[self._next]
        if name != spec.name or shape not in (None, spec.shape) or dtype not in (None, spec.dtype):
            raise RuntimeError(f"{self.path.name}: expected {spec.name} {spec.shape} {spec.dtype} next, "
                               f"got {name} {shape} {dtype}")
        return spec

    @property
    def done(self) -> bool:
        return self._next == len(self.specs)

    def close(self) -> None:
        self._file.close()
        if not self.done:
            raise RuntimeError(f"{self.path.name}: closed after {self._next} of {len(self.specs)} tensors")
        if self.path.stat().st_size != self.expected_size:
            raise RuntimeError(f"{self.path.name}: size {self.path.stat().st_size}, expected {self.expected_size}")
        digests.remember(self.path, self._sha.hexdigest())
