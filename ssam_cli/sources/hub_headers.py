"""A Hub base's tensor names, shapes and dtypes from its safetensors headers, read with HTTP range requests
(huggingface_hub's parse_safetensors_file_metadata: the first 100 kB of each weight file, and the rest of the header
when it is longer); the weights themselves are never downloaded.

huggingface_hub's get_safetensors_metadata does the same for a repo's root only; the recipe's `subfolder:` needs
the per-file call, at the commit the input was pinned to, with the index downloaded beside config.json.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Optional, Sequence

from ssam_cli.dtypes import DTYPE_OF_CODE
from ssam_cli.errors import InputError
from ssam_cli.sources import checkpoint
from ssam_cli.sources.base import TensorInfo


def shards_on_hub(folder: Path, listed: Sequence[str]) -> Optional[dict[str, str]]:
    """Tensor name → safetensors file (inside the input's folder) from the downloaded index, {} for a single
    model.safetensors; None when the listing holds no safetensors weights (a `.bin`-only base, or offline)."""
    weights = sorted(f for f in listed if f.endswith(".safetensors"))
    if not weights:
        return None
    if (folder / checkpoint.INDEX).is_file():
        return checkpoint.parse_weight_map(folder / checkpoint.INDEX)
    if checkpoint.SINGLE in weights:
        return {}
    raise InputError(f"{folder}: the Hub folder holds {weights[0]} but no {checkpoint.INDEX} naming its tensors")


def read_hub_headers(repo_id: str, commit: str, subfolder: Optional[str], folder: Path,
                     weight_map: dict[str, str]) -> dict[str, TensorInfo]:
    """Every tensor's info from the headers of the weight files (`weight_map` empty: the single model.safetensors)."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, SafetensorsParsingError

    files = sorted(set(weight_map.values())) or [checkpoint.SINGLE]
    api = HfApi()
    infos: dict[str, TensorInfo] = {}
    for file in files:
        path = str(PurePosixPath(subfolder or "") / file)
        where = f"{repo_id}@{commit}: {path}"
        try:
            meta = api.parse_safetensors_file_metadata(repo_id, path, revision=commit)
        except (HfHubHTTPError, SafetensorsParsingError, OSError) as e:
            raise InputError(f"{where}: cannot read the safetensors header from the Hub "
                             f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
        for name, info in meta.tensors.items():
            if weight_map and weight_map.get(name) != file:
                continue
            dtype = DTYPE_OF_CODE.get(info.dtype)
            if dtype is None:
                raise InputError(f"{where}: tensor {name}: unsupported dtype {info.dtype}")
            infos[name] = TensorInfo(tuple(info.shape), dtype)
    missing = sorted(set(weight_map) - set(infos))
    if missing:
        raise InputError(f"{folder / checkpoint.INDEX}: tensor {missing[0]} is listed in the index but not in "
                         f"{weight_map[missing[0]]} on the Hub")
    return infos
