"""The CUDA path against the CPU path on the same inputs: wall times, peak GPU memory, and the merged updates'
relative difference (≤ 1e-4). Run by benchmarks/gpu.sh; `--device cpu --tiny` runs the same checks tiny on a
machine without a GPU (both sides on the CPU), so the script is known to work before a GPU is lent.

    python benchmarks/gpu_check.py --device cuda                 # 7B shapes: LoRA → LoRA (32 layers), LoRA → full
                                                                 # (2 layers + embeddings, head), dense SSAM (1 layer)
    python benchmarks/gpu_check.py --device cpu --tiny           # the dry run

Merges go through the public API (ssam_cli.api.merge) with float32 outputs, so that the comparison sees the
methods' arithmetic rather than bf16 rounding.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import safe_open

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
import make_checkpoints as mc  # noqa: E402

from ssam_cli import api  # noqa: E402

WORK = HERE / "out" / "gpu"
TOLERANCE = 1e-4


def recipe(name: str, method: str, base: Path, specialists: list[Path], fmt: str, device: str,
           parameters: dict[str, Any]) -> Path:
    out = WORK / f"{name}-{device.replace(':', '')}"
    data = {"method": method, "base": str(base), "parameters": parameters, "device": device, "seed": 0,
            "specialists": [{"name": f"s{i}", "path": str(p)} for i, p in enumerate(specialists)],
            "output": {"path": str(out), "format": fmt, "dtype": "float32", "shard_size": "4GB"}}
    path = WORK / f"{name}-{device.replace(':', '')}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def timed_merge(path: Path, device: str, threads: int | None = None) -> dict[str, Any]:
    """One merge; wall seconds, the merge's own seconds, and the peak GPU memory it allocated (MB)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    result = api.merge(path, overwrite=True, card=False, threads=threads)
    wall = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else None
    return {"wall_s": round(wall, 2), "merge_s": result.manifest.summary.seconds,
            "peak_gpu_mb": None if peak is None else round(peak), "output": str(result.output)}


def tensors(folder: Path) -> dict[str, Path]:
    return {k: f for f in sorted(folder.glob("*.safetensors")) for k in safe_open(str(f), "pt").keys()}


def lora_updates(folder: Path) -> dict[str, torch.Tensor]:
    """Every module's update B·A of an adapter ssam wrote (float64): its lora_alpha equals r per module (B carries
    the scale), so PEFT's alpha / r is 1."""
    out = {}
    with safe_open(str(folder / "adapter_model.safetensors"), "pt") as f:
        for key in f.keys():
            if key.endswith(".lora_A.weight"):
                stem = key[: -len(".lora_A.weight")]
                out[stem] = f.get_tensor(f"{stem}.lora_B.weight").double() @ f.get_tensor(key).double()
    return out


def worst_relative(ours: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> float:
    """max over weights of ‖ours − reference‖_F / ‖reference‖_F (the same weights on both sides)."""
    assert ours.keys() == reference.keys(), sorted(set(ours) ^ set(reference))[:5]
    return max(float((ours[k] - reference[k]).norm() / reference[k].norm().clamp_min(1e-30)) for k in reference)


def full_updates(folder: Path, base: Path, names: list[str]) -> dict[str, torch.Tensor]:
    """W_merged − W_0 of the merged weights of a full output (float64)."""
    mine, theirs = tensors(folder), tensors(base) if base.is_dir() else {}
    out = {}
    for name in names:
        with safe_open(str(mine[name]), "pt") as f, safe_open(str(theirs[name]), "pt") as g:
            out[name] = f.get_tensor(name).double() - g.get_tensor(name).double()
    return out


def merged_names(folder: Path) -> list[str]:
    m = json.loads((folder / "manifest.json").read_text())
    return [k for k, t in m["tensors"].items() if t.get("role") == "merge"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda", help="the device checked against the CPU (cpu: a dry run)")
    ap.add_argument("--tiny", action="store_true", help="toy shapes (the CPU dry run)")
    ap.add_argument("--lora-layers", type=int, default=32)
    ap.add_argument("--full-layers", type=int, default=2)
    a = ap.parse_args(argv)
    if a.tiny:
        shapes, r, layers, full_layers, dense_shapes = mc.Shapes(64, 160, 96), 8, 2, 1, mc.Shapes(48, 80, 64)
    else:
        shapes, r, layers, full_layers = mc.Shapes(), 128, a.lora_layers, a.full_layers
        dense_shapes = mc.Shapes(hidden=1024, intermediate=2752)  # exact bases on both sides: comparable
    t0 = time.perf_counter()
    adapters = mc.make_lora(4, layers, r=r, alpha=2 * r, shapes=shapes)
    sparse = mc.make_sparse_base(layers, shapes)
    full_adapters = mc.make_lora(4, full_layers, r=r, alpha=2 * r, shapes=shapes)
    base, _ = mc.make_dense(0, full_layers, shapes=shapes)
    dense_base, dense = mc.make_dense(4, 1, shapes=dense_shapes, rank=min(256, dense_shapes.hidden))
    print(f"inputs ready in {time.perf_counter() - t0:.1f} s (cached under {mc.CACHE})", flush=True)

    cases = {
        "lora_to_lora": ("lora", sparse, adapters, lambda f: lora_updates(f)),
        "lora_to_full": ("full", base, full_adapters, lambda f: full_updates(f, base, merged_names(f))),
        "dense_ssam": ("full", dense_base, dense, lambda f: full_updates(f, dense_base, merged_names(f))),
    }
    report: dict[str, Any] = {"device": a.device, "torch": torch.__version__,
                              "gpu": torch.cuda.get_device_name() if a.device.startswith("cuda") else None}
    failed = False
    for name, (fmt, b, specialists, updates) in cases.items():
        row: dict[str, Any] = {}
        for side, device in (("cpu", "cpu"), ("device", a.device)):
            # the dry run's second side: one worker on one thread, against the CPU default of two
            threads = 1 if side == "device" and device == "cpu" else None
            row[side] = timed_merge(recipe(f"{name}-{side}", "ssam", b, specialists, fmt, device, {"rank": r}),
                                    device, threads)
        ref = updates(Path(row["cpu"]["output"]))
        got = updates(Path(row["device"]["output"]))
        row["max_rel_diff"] = worst_relative(got, ref)
        row["ok"] = row["max_rel_diff"] <= TOLERANCE
        failed |= not row["ok"]
        report[name] = row
        print(f"{name}: cpu {row['cpu']['wall_s']} s (merge {row['cpu']['merge_s']} s), {a.device} "
              f"{row['device']['wall_s']} s (merge {row['device']['merge_s']} s, peak GPU "
              f"{row['device']['peak_gpu_mb']} MB), max relative difference {row['max_rel_diff']:.2e} "
              f"({'ok' if row['ok'] else 'FAILED'}: ≤ {TOLERANCE:g})", flush=True)
    (WORK / "report.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
