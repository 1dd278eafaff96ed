"""Torch pickles, read safely: `pytorch_model.bin` or its shards, and the `.bin` files of adapters.

This is the one place a torch pickle is opened. Every load is `torch.load(weights_only=True)`: torch's restricted
unpickler builds tensors and plain containers and refuses any other object before it is created, so a file whose
pickle would run code is refused and nothing runs. Zip-format files (torch ≥ 1.6) are memory-mapped, so names,
shapes and dtypes come without reading the data, and a read returns a tensor backed by the file (pages are read
when touched, as with safetensors). torch's legacy format cannot be memory-mapped: checkpoints in it are refused
with how to convert; small adapter files in it are read whole.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path

import torch

from ssam_cli.errors import InputError
from ssam_cli.sources.base import TensorInfo
from ssam_cli.dtypes import SAFETENSORS_CODES

SINGLE = "pytorch_model.bin"
INDEX = "pytorch_model.bin.index.json"
SHARDS = "pytorch_model-*.bin"  # transformers' shard names: pytorch_model-00001-of-00002.bin

_GLOBAL = re.compile(r"GLOBAL ([A-Za-z_][\w.]*)")
_CONVERT = ("convert it where you trust the file: load it with torch.load and write it with safetensors' "
            "save_file (or torch.save, whose default is the zip format)")


def load_tensor_dict(path: Path, *, allow_legacy: bool = False) -> dict[str, torch.Tensor]:
    """The name → tensor dict a torch pickle holds, memory-mapped; anything but that is refused, never executed.

    `allow_legacy` reads a legacy-format (pre-zip) file whole, for small adapter files; without it such a file is
    refused with how to convert it. torch's own refusal text is never shown: it suggests `weights_only=False`,
    which would execute the file.
    """
    is_zip = zipfile.is_zipfile(path)
    if not is_zip and not allow_legacy:
        raise InputError(f"{path}: not a torch zip-format checkpoint (torch's legacy pre-1.6 format, or not a torch "
                         f"file), which cannot be read without loading it whole; {_CONVERT}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except pickle.UnpicklingError as e:  # the weights-only unpickler met an object that is not a tensor
        found = _GLOBAL.search(str(e))
        what = f"; the pickle refers to {found.group(1)}, which is no tensor" if found else ""
        raise InputError(f"{path}: refused to load: not a plain dict of tensors{what}") from None
    except Exception as e:  # a corrupt or truncated archive, or not a torch file at all
        raise InputError(f"{path}: not a readable torch checkpoint ({type(e).__name__})") from None
    if not isinstance(obj, dict):
        raise InputError(f"{path}: refused to load: expected a dict of name → tensor, got {type(obj).__name__}")
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise InputError(f"{path}: refused to load: entry {key!r} is a {type(value).__name__}, not a tensor")
    return dict(obj)


class TorchBinFiles:
    """A name → file map over torch zip-format files, each loaded once (memory-mapped) and kept."""

    def __init__(self, file_of: dict[str, Path], loaded: dict[Path, dict[str, torch.Tensor]]) -> None:
        self._file_of = file_of
        self._tensors: dict[str, torch.Tensor] = {}
        self.infos: dict[str, TensorInfo] = {}
        supported = set(SAFETENSORS_CODES)
        for path, tensors in loaded.items():
            for name, tensor in tensors.items():
                if file_of.get(name) != path:
                    continue
                if tensor.dtype not in supported:
                    raise InputError(f"{path}: tensor {name}: unsupported dtype {tensor.dtype}")
                self._tensors[name] = tensor
                self.infos[name] = TensorInfo(tuple(tensor.shape), tensor.dtype)
        missing = sorted(set(file_of) - set(self.infos))
        if missing:
            raise InputError(f"{file_of[missing[0]]}: tensor {missing[0]} is listed in the index but not in the file")

    @classmethod
    def from_index(cls, file_of: dict[str, Path]) -> "TorchBinFiles":
        """The tensors an index maps to shards, each shard loaded once."""
        return cls(file_of, {path: load_tensor_dict(path) for path in sorted(set(file_of.values()))})

    @classmethod
    def from_paths(cls, paths: list[Path]) -> "TorchBinFiles":
        """Every tensor of the given files; a name found in two files is an error."""
        loaded = {path: load_tensor_dict(path) for path in paths}
        file_of: dict[str, Path] = {}
        for path, tensors in loaded.items():
            for name in tensors:
                if name in file_of:
                    raise InputError(f"{path}: tensor {name} is also in {file_of[name]}")
                file_of[name] = path
        return cls(file_of, loaded)

    def read(self, name: str) -> torch.Tensor:
        return self._tensors[name]

    def file_of(self, name: str) -> Path:
        return self._file_of[name]

    @property
    def files(self) -> list[Path]:
        return sorted(set(self._file_of.values()))
