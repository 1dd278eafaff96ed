"""Each specialist's modality-specific tensors, untouched, in modalities/<name>.safetensors (full and lora outputs)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ssam_cli.writers.safetensors_stream import StreamingSafetensorsWriter, TensorSpec

if TYPE_CHECKING:
    from ssam_cli.engine import Prepared


def write_modality_files(p: "Prepared", folder: Path) -> dict[str, Any]:
    """Write one file per specialist that has kept tensors; returns the manifest's `modalities` records."""
    out: dict[str, Any] = {}
    by_specialist: dict[str, list] = {}
    for k in p.plan.kept:
        by_specialist.setdefault(k.specialist, []).append(k)
    for i, named in enumerate(p.inputs.specialists):
        kept = by_specialist.get(named.name)
        if not kept:
            continue
        (folder / "modalities").mkdir(exist_ok=True)
        rel = f"modalities/{named.name}.safetensors"
        w = StreamingSafetensorsWriter(folder / rel, [TensorSpec(k.key, k.shape, k.dtype) for k in kept],
                                       metadata={"specialist": named.name})
        for k in kept:
            w.write(k.key, named.source.read(k.key))
        w.close()
        out[named.name] = {"file": rel, "modality": p.recipe.specialists[i].modality,
                           "tensors": [k.key for k in kept]}
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
