"""The base of a merge that reads no base weight (every specialist low-rank, a `lora` or `modelcompose` output):
tensor names, shapes and dtypes only, from whichever is at hand, in this order:

1. a local folder with weights: their headers (no tensor data is read);
2. a Hub base with safetensors weights: their headers by range requests (sources/hub_headers.py), config.json and
   the index downloaded, the weights never;
3. otherwise (a config-only folder, a `.bin`-only Hub base, a Hub base offline, whose listing is unknown):
   config.json, with the shapes the adapters update checked against it (sources/config_shapes.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import torch

from ssam_cli.errors import InputError
from ssam_cli.sources.base import LowRankInfo, Source, TensorInfo
from ssam_cli.sources.checkpoint import FullCheckpoint, is_full_checkpoint
from ssam_cli.sources.config_shapes import CONFIG, config_tensors
from ssam_cli.sources.hub_headers import read_hub_headers, shards_on_hub
from ssam_cli.sources.resolve import Resolved


class HeaderOnlyBase(Source):
    """A base seen by its headers only: `read` is never called by a merge that reads no base weight."""

    kind = "full"

    def __init__(self, path: Path, tensors: dict[str, TensorInfo], shapes_from: str) -> None:
        super().__init__(path)
        self._tensors = tensors
        self.shapes_from = shapes_from

    @property
    def tensors(self) -> dict[str, TensorInfo]:
        return self._tensors

    def read(self, name: str) -> torch.Tensor:
        raise RuntimeError(f"{self.path}: the base was read by header only ({self.shapes_from}); tensor {name} "
                           "has no data here")

    def files(self) -> list[Path]:
        return []

    def describe(self) -> dict:
        return {"kind": self.kind, "read": "header", "shapes_from": self.shapes_from}


def open_header_only(resolved: Resolved, targets: Mapping[str, LowRankInfo],
                     target_of: Mapping[str, str]) -> HeaderOnlyBase:
    """The base's headers (see the module docstring for the order); `targets` are the weights the specialists
    update (name → shape), `target_of` the specialist that first names each, for messages."""
    folder = resolved.local_path
    if resolved.repo_id is None and is_full_checkpoint(folder):
        return HeaderOnlyBase(folder, FullCheckpoint(folder).tensors, "the headers of its weight files")
    if resolved.repo_id is not None and resolved.commit is not None:
        weight_map = shards_on_hub(folder, resolved.listed)
        if weight_map is not None:
            tensors = read_hub_headers(resolved.repo_id, resolved.commit, resolved.subfolder, folder, weight_map)
            return HeaderOnlyBase(folder, tensors, "safetensors headers on the Hub (range requests)")
    if not (folder / CONFIG).is_file():
        raise InputError(f"{folder}: no {CONFIG} and no weights to read the base's tensor shapes from")
    return HeaderOnlyBase(folder, config_tensors(folder / CONFIG, targets, target_of),
                          f"{CONFIG} and the specialists' adapters")


def lowrank_targets(sources: Sequence[tuple[str, Source]]) -> tuple[dict[str, LowRankInfo], dict[str, str]]:
    """Every weight some specialist updates by a low-rank delta, with the first specialist naming it."""
    targets: dict[str, LowRankInfo] = {}
    first: dict[str, str] = {}
    for name, source in sources:
        for key, info in source.lowrank.items():
            if key not in targets:
                targets[key] = info
                first[key] = f"specialist '{name}' ({source.path})"
    return targets, first
