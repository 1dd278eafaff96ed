"""Lazy access to tensors spread over safetensors files: headers up front, one tensor read at a time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from ssam_cli.dtypes import DTYPE_OF_CODE
from ssam_cli.errors import InputError, describe_os_error
from ssam_cli.sources.base import TensorInfo



class SafetensorsFiles:
    """A name → file map over one or more safetensors files, with their headers read once."""

    def __init__(self, files: dict[str, Path]) -> None:
        self._file_of = files
        self._handles: dict[Path, object] = {}
        self.infos: dict[str, TensorInfo] = {}
        for path in sorted(set(files.values())):
            handle = self._open(path)
            for name in handle.keys():
                if files.get(name) != path:
                    continue
                sl = handle.get_slice(name)
                dtype = DTYPE_OF_CODE.get(sl.get_dtype())
                if dtype is None:
                    raise InputError(f"{path}: tensor {name}: unsupported dtype {sl.get_dtype()}")
                self.infos[name] = TensorInfo(tuple(sl.get_shape()), dtype)
        missing = sorted(set(files) - set(self.infos))
        if missing:
            raise InputError(f"{files[missing[0]]}: tensor {missing[0]} is listed in the index but not in the file")

    @classmethod
    def from_paths(cls, paths: list[Path]) -> "SafetensorsFiles":
        """Every tensor of the given files; a name found in two files is an error."""
        mapping: dict[str, Path] = {}
        for path in paths:
            with open_safetensors(path) as f:
                names = list(f.keys())
            for name in names:
                if name in mapping:
                    raise InputError(f"{path}: tensor {name} is also in {mapping[name]}")
                mapping[name] = path
        return cls(mapping)

    def _open(self, path: Path):
        handle = self._handles.get(path)
        if handle is None:
            handle = self._handles[path] = open_safetensors(path)
        return handle

    def read(self, name: str) -> torch.Tensor:
        return self._open(self._file_of[name]).get_tensor(name)

    def file_of(self, name: str) -> Path:
        return self._file_of[name]

    @property
    def files(self) -> list[Path]:
        return sorted(set(self._file_of.values()))


def open_safetensors(path: Path) -> Any:
    """A safetensors handle, or one line with the OS's own reason (safetensors reports every failed open as a
    missing file) or with safetensors' complaint about a corrupt header."""
    try:
        with open(path, "rb"):
            pass
    except OSError as e:
        raise InputError(describe_os_error(e, path)) from None
    try:
        return safe_open(str(path), framework="pt")
    except Exception as e:  # safetensors raises its own error types for a corrupt header
        raise InputError(f"{path}: not a readable safetensors file ({e})") from None
