"""Each specialist's modality-specific tensors, untouched, in modalities/<name>.safetensors (full and lora outputs)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import torch

from ssam_cli.writers.safetensors_stream import StreamingSafetensorsWriter, TensorSpec

if TYPE_CHECKING:
    from ssam_cli.engine import Prepared


def write_modality_files(p: "Prepared", folder: Path, shared: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Write one file per specialist that has kept tensors, with the averages of the shared tensors it holds (so
    each file is what that specialist needs beside the merged decoder); returns the manifest's `modalities`."""
    out: dict[str, Any] = {}
    by_specialist: dict[str, list] = {}
    for k in p.plan.kept:
        by_specialist.setdefault(k.specialist, []).append(k)
    holds = {i: [t for t in p.plan.tensors if not t.in_base and any(c.index == i for c in t.contributions)]
             for i in range(len(p.inputs.specialists))}
    for i, named in enumerate(p.inputs.specialists):
        kept, averaged = by_specialist.get(named.name, []), holds[i]
        if not kept and not averaged:
            continue
        (folder / "modalities").mkdir(exist_ok=True)
        rel = f"modalities/{named.name}.safetensors"
        specs = [TensorSpec(k.key, k.shape, k.dtype) for k in kept]
        specs += [TensorSpec(t.name, t.shape, shared[t.name].dtype) for t in averaged]
        w = StreamingSafetensorsWriter(folder / rel, specs, metadata={"specialist": named.name})
        for k in kept:
            w.write(k.key, named.source.read(k.key))
        for t in averaged:
            w.write(t.name, shared[t.name])
        w.close()
        out[named.name] = {"file": rel, "modality": p.recipe.specialists[i].modality,
                           "tensors": [k.key for k in kept]}
        if averaged:
            out[named.name]["averaged"] = [t.name for t in averaged]
    return out


def read_shapes(files: list[Path]) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape in these safetensors files, from their headers (no data read)."""
    from safetensors import safe_open

    found: dict[str, tuple[int, ...]] = {}
    for f in files:
        with safe_open(str(f), framework="pt") as h:
            for k in h.keys():
                found[k] = tuple(h.get_slice(k).get_shape())
    return found
