"""Wall time of the baseline methods on one d × d weight with n specialists, LoRA (rank r) and dense.

    python benchmarks/zoo_cost.py 4096 4 128 ties,tsv,iso_c,wudi,optmerge 5 [lora,dense]

For wudi and optmerge the last argument is the number of optimisation steps timed; the script reports the
setup (0 steps) and the cost per step, and extrapolates to the default 300. Every method runs once on a
small input first, so one-off library initialisation is not counted.
"""

from __future__ import annotations

import sys
import time

import torch

from ssam_cli.api import DenseDelta, LowRankDelta, merge_deltas

OPTIMISED = ("wudi", "optmerge")


def timed(name: str, deltas: list, params: dict) -> float:
    start = time.perf_counter()
    merge_deltas(name, deltas, params, name="w")
    return time.perf_counter() - start


def inputs(d: int, n: int, r: int, seed: int) -> dict[str, list]:
    g = torch.Generator().manual_seed(seed)
    lora = [LowRankDelta(torch.randn(d, r, generator=g) * 1e-2, torch.randn(r, d, generator=g) * 1e-2, 2.0)
            for _ in range(n)]
    dense = [DenseDelta(torch.randn(d, d, generator=g) * 1e-3) for _ in range(n)]
    return {"lora": lora, "dense": dense}


def main(d: int, n: int, r: int, methods: list[str], steps: int, kinds: list[str]) -> None:
    print(f"d={d} n={n} r={r} threads={torch.get_num_threads()}", flush=True)
    for name in methods:  # warm-up: first calls pay for LAPACK/BLAS initialisation
        for ds in inputs(64, n, 4, 1).values():
            timed(name, ds, {"iterations": 2} if name in OPTIMISED else {})
    for kind, ds in inputs(d, n, r, 0).items():
        if kind not in kinds:
            continue
        for name in methods:
            if name in OPTIMISED:
                setup = timed(name, ds, {"iterations": 0})
                per_step = (timed(name, ds, {"iterations": steps}) - setup) / steps
                print(f"{kind:5s} {name:12s} setup {setup:7.2f} s  per step {per_step:6.3f} s  "
                      f"→ 300 steps ≈ {setup + 300 * per_step:7.1f} s", flush=True)
            else:
                print(f"{kind:5s} {name:12s} {timed(name, ds, {}):7.2f} s", flush=True)


if __name__ == "__main__":
    kinds = sys.argv[6].split(",") if len(sys.argv) > 6 else ["lora", "dense"]
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4].split(","), int(sys.argv[5]), kinds)
