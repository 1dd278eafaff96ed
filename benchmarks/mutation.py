"""Mutation check: plant one hand-written bug at a time in a copy of the repository and see whether the tests notice.

    python benchmarks/mutation.py            # every mutant (tens of minutes on two cores)
    python benchmarks/mutation.py --quick    # one or two per area (a few minutes)
    python benchmarks/mutation.py --only tall-branch dare-rescale    # by id;  --list shows them all

Each mutant is a source-text replacement (`old` → `new`) searched for in every ssam_cli/**/*.py, so it survives
modules moving; a pattern found nowhere is reported "skipped: pattern not found" (update the mutant after a
refactor). The copy is the working tree as git sees it (tracked and untracked, not ignored files): the working
tree itself is never touched (`--rev HEAD` takes a commit's files instead, e.g. while others edit). Every mutant runs the test files it names (globs; missing ones are dropped) with
`pytest -x -q`; a failing test run kills it, a green one means it survived. The unmutated copy runs every
selected test file first: a red baseline makes every verdict meaningless, so it stops there.
Mutants found equivalent (no test can kill them) were replaced by ones that change behaviour: `n·s > r` → `≥` in
Iso-CTS's sizes (r // n = s exactly when n·s = r), the merged core's scale (always 1 for the methods that run on
cores), modules.keep on base tensors (a kept tensor never gets a contribution anyway).
Exit status: 0 when no mutant survived, 1 when some did, 2 when the baseline fails. Not run in CI.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "ssam_cli"


@dataclass(frozen=True)
class Mutant:
    id: str
    edits: tuple[tuple[str, str], ...]  # (old, new) spellings of one bug: the first whose `old` is found applies
    tests: tuple[str, ...]  # globs relative to the repository root
    why: str
    quick: bool = False


def m(id: str, old: str, new: str, tests: str, why: str, quick: bool = False,
      also: tuple[tuple[str, str], ...] = ()) -> Mutant:
    """A mutant; `also` gives the same bug in other spellings of the code (before and after a refactor)."""
    return Mutant(id, ((old, new), *also), tuple(tests.split()), why, quick)


SSAM_TESTS = "tests/methods/test_ssam*.py tests/test_linalg*.py tests/consensus/test_*.py"
ZOO = "tests/test_zoo.py"
E2E = "tests/test_weights_and_seed.py tests/test_end_to_end_references.py"
SPACES = "tests/test_spaces.py tests/test_core_space_end_to_end.py"
MUTANTS: list[Mutant] = [
    # consensus bases (linalg.py / consensus/)
    m("tall-branch", "vectors = Q @ Ur", "vectors = Q @ Ur.T", "tests/methods/test_ssam_exact_dense.py",
      "exact dense path, tall side: wrong singular vectors (issue 13, bug 1)", quick=True),
    m("wide-branch-order", "order = torch.argsort(evals, descending=True)", "order = torch.argsort(evals)",
      "tests/methods/test_ssam_exact_dense.py", "exact dense path, wide side: smallest eigenvectors first"),
    m("exact-values-unsquared", "values = evals[order].clamp_min(0).sqrt()", "values = evals[order].clamp_min(0)",
      "tests/methods/test_ssam_exact_dense.py", "exact dense path: σ² reported as σ (energy, numerical rank)"),
    m("left-singular-transposed", "U = Q @ Ur.to(Q.dtype)", "U = Q @ Ur.T.to(Q.dtype)",
      f"{SSAM_TESTS} {SPACES}", "thin-QR left singular vectors: wrong rotation (core-space basis)"),
    m("rank-tolerance", "tol = float(self.values[0]) * max(self.matrix_shape) * FLOAT32_EPS",
      "tol = float(self.values[0]) * 0.5", f"{SSAM_TESTS} tests/methods/test_spectral.py",
      "numerical rank cut far too early: k capped wrongly",
      also=(("return top * size * FLOAT32_EPS", "return top * 0.5"),)),
    m("k-ignored", "k_u = min(k, left.numerical_rank)", "k_u = left.numerical_rank", SSAM_TESTS,
      "the requested k ignored on the left side", quick=True),
    m("project-sum-scale", "C += d.scale * ((U.T @ d.B) @ (d.A @ V))", "C += (U.T @ d.B) @ (d.A @ V)",
      f"{SSAM_TESTS} {E2E}", "LoRA scale dropped when projecting the sum"),
    m("factored-scale", "Ls = [d.B * d.scale for d in live]", "Ls = [d.B for d in live]",
      f"{SSAM_TESTS} {E2E}", "factored spectra without the LoRA scale"),
    m("factored-coeffs", "/ self.values[:k]", "/ self.values[:k].sqrt()", SSAM_TESTS,
      "factored singular vectors not normalised"),
    m("sum-norm-unrooted", "(left.gram * right.gram).sum().clamp_min(0).sqrt()",
      "(left.gram * right.gram).sum().clamp_min(0)", f"{SSAM_TESTS} {E2E}", "‖ΣΔ‖_F reported squared (manifest)"),
    m("weighted-sum-lowrank", "d.B * (w * d.scale)", "d.B * d.scale", f"tests/methods/test_*.py {E2E}",
      "weighted sum of LoRA updates ignores the weights", quick=True),
    m("weighted-sum-dense", "term = d.dense() * w", "term = d.dense()", f"tests/methods/test_*.py {E2E}",
      "weighted sum of dense updates ignores the weights"),
    # randomized bases
    m("krylov-gram-schmidt", "Y = Y - done @ (done.T @ Y)", "Y = Y + done @ (done.T @ Y)",
      "tests/test_randomized.py tests/consensus/test_randomized*.py", "Krylov blocks not orthogonalised"),
    m("krylov-narrow", "return min(short_side, (depth + 1) * (k + 8))", "return min(short_side, (depth + 1) * k)",
      "tests/test_randomized.py tests/consensus/test_randomized*.py", "no oversampling in the sketch"),
    m("krylov-energy", "torch.linalg.vector_norm(x.double()).square() for x in blocks",
      "torch.linalg.vector_norm(x.double()) for x in blocks",
      "tests/test_randomized.py tests/consensus/test_randomized*.py", "‖M‖_F² wrong: energy at k wrong", quick=True),
    m("exact-ignored", "if params.exact or min(", "if min(", "tests/methods/test_ssam*.py tests/test_randomized.py",
      "`exact: true` ignored for large weights"),
    # SSAM method and λ
    m("ssam-weights", "weighted = [d.scaled(w) for d, w in zip(deltas, weights)]", "weighted = list(deltas)",
      f"tests/methods/test_ssam*.py {E2E}", "SSAM ignores the specialists' weights", quick=True),
    m("ssam-lambda", "merged = LowRankDelta((U @ C) * lam, V.T.contiguous())",
      "merged = LowRankDelta(U @ C, V.T.contiguous())", "tests/methods/test_ssam*.py", "SSAM without λ"),
    m("lambda-default", "return 1.0 / n if default_is_mean else 1.0", "return 1.0",
      "tests/methods/test_ssam*.py tests/test_engine.py", "λ default 1 instead of the paper's 1/n"),
    # baselines
    m("average-weights", "merged = weighted_sum(deltas, [w / total for w in weights])",
      "merged = weighted_sum(deltas, [1.0 / len(weights) for w in weights])",
      f"tests/methods/test_*.py {E2E}", "average ignores the weights (issue 13, bug 3)", quick=True),
    m("task-arithmetic-weights", "weighted_sum(deltas, [w * lam for w in weights])",
      "weighted_sum(deltas, [lam for w in weights])", f"tests/methods/test_*.py {E2E}",
      "task arithmetic ignores the weights"),
    m("dare-rescale", "return x * keep / (1.0 - p)", "return x * keep", f"tests/methods/test_dare.py {E2E}",
      "DARE without the 1/(1−p) rescale", quick=True),
    m("dare-keep-probability", "torch.full_like(x, 1.0 - p)", "torch.full_like(x, p)",
      f"tests/methods/test_dare.py {E2E}", "DARE keeps with probability p instead of 1−p"),
    m("dare-one-mask", "return [drop_and_rescale(d.dense(), p, ctx.generator) for d in deltas]",
      "return [drop_and_rescale(d.dense(), p, torch.Generator().manual_seed(0)) for d in deltas]",
      f"tests/methods/test_dare.py {E2E}", "DARE: one mask for every specialist and tensor, seed ignored"),
    m("dare-linear-weights", "sum(x * w for x, w in zip(", "sum(x for x, w in zip(",
      f"tests/methods/test_dare.py {E2E}", "dare_linear ignores the weights"),
    m("ties-sign", "return torch.sign(stacked.sum(dim=0))", "return torch.sign(stacked[0])",
      "tests/methods/test_ties.py tests/methods/test_sign_consensus.py", "TIES elects the first task's sign"),
    m("ties-trim", "idx = torch.topk(flat.abs(), k, largest=True, sorted=False).indices",
      "idx = torch.topk(flat, k, largest=True, sorted=False).indices",
      "tests/methods/test_ties.py tests/methods/test_sign_consensus.py", "TIES trims by value, not magnitude"),
    m("tsv-rank", "k = max(1, min(shape) // len(deltas))", "k = max(1, min(shape))", "tests/methods/test_tsv.py",
      "TSV keeps every singular vector of every task"),
    m("iso-mean", "sigma = float(S.mean())", "sigma = float(S.max())", "tests/methods/test_iso.py",
      "Iso-C flattens to the largest singular value"),
    m("iso-cts-sizes", "return r - n * s, s", "return r - s, s", "tests/methods/test_iso.py",
      "Iso-CTS subspace sizes do not add up to the full rank"),
    m("thin-svd-scale", "core = (Rb.double() @ Ra.double().T) * delta.scale",
      "core = Rb.double() @ Ra.double().T", "tests/methods/test_spectral.py tests/test_spectra.py "
      "tests/methods/test_tsv.py tests/methods/test_iso.py", "factored SVD of a LoRA update without its scale"),
    m("polar-qr", "return Qx @ polar_factor(R)", "return Qx",
      "tests/methods/test_spectral.py tests/test_spectra.py", "polar factor replaced by QR's Q", quick=True),
    m("wudi-init", "init = weighted_sum(tasks_in, [1.0] * len(tasks_in)).dense()",
      "init = weighted_sum(tasks_in, [0.0] * len(tasks_in)).dense()", "tests/methods/test_wudi.py",
      "WUDI starts from zero instead of the sum"),
    m("optmerge-centred", "centred, _ = _truncated(DenseDelta(v.dense() - mean), k, shape)",
      "centred, _ = _truncated(DenseDelta(v.dense()), k, shape)", "tests/methods/test_optmerge.py",
      "OptMerge targets not centred"),
    # merge spaces
    m("core-scale", "LowRankDelta(U.T @ d.B, d.A @ V, d.scale) for d in deltas",
      "LowRankDelta(U.T @ d.B, d.A @ V) for d in deltas", f"{SPACES} {ZOO}", "core space drops the LoRA scales",
      quick=True),
    m("factor-fold", "d.B if shared is not None else d.B * d.scale", "d.B", f"{SPACES} {ZOO}",
      "factor space with different scales does not fold them"),
    # plan
    m("plan-average-ignored", "elif len(info.shape) == 2 and not matches(name, average):",
      "elif len(info.shape) == 2:", "tests/test_plan.py tests/test_engine.py", "modules.average ignored"),
    m("plan-keep-ignored-full", "if matches(key, keep) or (target is None and not mapping.identity):",
      "if target is None and not mapping.identity:", "tests/test_plan.py tests/test_engine.py tests/test_kept_tensors.py",
      "modules.keep ignored for a full checkpoint's tensors"),
    m("plan-keep-ignored-saved", 'if matches(key, keep) or src.kind == "modelcompose":', 'if src.kind == "modelcompose":',
      "tests/test_plan.py tests/test_kept_tensors.py", "modules.keep ignored for an adapter's saved tensors "
      "(modules_to_save)"),
    m("plan-ambiguous-suffix", "return hits[0] if len(hits) == 1 else None", "return hits[0] if hits else None",
      "tests/test_plan.py tests/test_adapter_pairing.py", "an adapter key matching two base weights paired with one",
      quick=True),
    m("plan-order", "planned.sort(key=lambda t: (layer_of(t.name), order[t.name]))", "pass",
      "tests/test_plan.py tests/test_engine.py", "tensors not processed layer by layer"),
    # sources/lora
    m("lora-alpha-not-over-r", "return alpha / denominator", "return alpha",
      f"tests/sources/test_lora.py {ZOO} {E2E} tests/test_engine.py", "LoRA scale alpha instead of alpha/r "
      "(issue 13, bug 4)", quick=True),
    m("lora-rslora", "denominator = math.sqrt(rank) if self.config.get(\"use_rslora\") else rank",
      "denominator = rank", "tests/sources/test_lora.py", "use_rslora ignored"),
    m("lora-alpha-pattern", "                alpha = float(value)", "                pass",
      "tests/sources/test_lora.py", "alpha_pattern ignored",
      also=(('alpha, _ = self._configured(weight[: -len(".weight")], "alpha_pattern", "lora_alpha")',
             'alpha = float(self.config["lora_alpha"])'),)),
    # engine: seed and weights
    m("seed-constant", "def tensor_seed(seed: int, name: str) -> int:",
      "def tensor_seed(seed: int, name: str) -> int:\n    return 0", f"tests/test_engine.py {ZOO} {E2E}",
      "every tensor drawn from one constant seed (issue 13, bug 2)", quick=True),
    m("seed-ignores-name", 'f"{seed}:{name}"', 'f"{seed}:"', f"tests/test_engine.py {E2E}",
      "same-shaped tensors draw the same DARE mask"),
    m("seed-ignores-recipe", "tensor_seed(p.recipe.seed, t.name)", "tensor_seed(0, t.name)",
      f"tests/test_engine.py {E2E}", "the recipe's seed ignored"),
    m("engine-weights", "weights = [s.weight for s in p.recipe.specialists]",
      "weights = [1.0 for s in p.recipe.specialists]", f"tests/test_engine.py {ZOO} {E2E}",
      "the engine ignores the specialists' weights (issue 13, bug 3)", quick=True,
      also=(("return [s.weight for s in self.specialists]", "return [1.0 for s in self.specialists]"),)),
    m("engine-average-weights", "d.dense() * (w / sum(weights))", "d.dense() * (1 / len(weights))",
      f"tests/test_engine.py {E2E}", "biases and norms averaged without the weights"),
    # the arithmetic of issue 16's allocation savings (stream.py, deltas.py, outputs/full.py)
    m("delta-writes-input", "return moved.sub_(base) if moved is not part else moved - base",
      "return moved.sub_(base)", "tests/test_stream.py", "a float32 input's delta computed in the source's memory"),
    m("base-not-copied", "copy=writable_base", "copy=False", "tests/test_stream.py tests/outputs/test_full.py",
      "the full format adds into the source's own float32 base tensor"),
    m("norm-float64-in-float32", "(x if x.dtype == torch.float64 else x.float())", "x.float()",
      "tests/test_deltas.py tests/methods/test_optmerge.py", "float64 norms rounded to float32"),
    m("weighted-sum-fused", "total.add_(d.dense() if w == 1 else d.dense() * w)", "total.add_(d.dense(), alpha=w)",
      "tests/test_deltas.py", "a fused w·Δ + t: outputs no longer bit-identical to the term-by-term sum"),
]


def copy_tree(dest: Path, rev: str | None) -> None:
    """Every file git sees in the working tree (tracked and untracked, not ignored), copied as it is now; or the
    files of commit `rev`."""
    if rev is not None:
        archive = subprocess.run(["git", "archive", rev], cwd=REPO, check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
        return
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            check=True, capture_output=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def test_files(root: Path, globs: tuple[str, ...]) -> list[str]:
    found: list[str] = []
    for pattern in globs:
        for hit in sorted(glob.glob(str(root / pattern), recursive=True)):
            rel = str(Path(hit).relative_to(root))
            if rel not in found:
                found.append(rel)
    return found


# pytest with the editable install's finder removed: it would resolve a module missing from the copy (one that a
# refactor added to the working tree after `--rev`) to the working tree's file, mixing the two trees.
ISOLATED_PYTEST = """
import sys
sys.meta_path[:] = [f for f in sys.meta_path if "Editable" not in getattr(f, "__name__", type(f).__name__)]
import pytest
sys.exit(pytest.main(sys.argv[1:]))
"""


def run_tests(root: Path, files: list[str], timeout: float) -> tuple[bool, str]:
    """(passed, last lines of output) for pytest -x -q over `files` in the copy, importing the copy's package."""
    env = {**os.environ, "PYTHONPATH": str(root), "PYTHONDONTWRITEBYTECODE": "1"}
    cmd = [sys.executable, "-c", ISOLATED_PYTEST, "-x", "-q", "-p", "no:cacheprovider",
           f"--basetemp={root / '.pytest-tmp'}", *files]
    try:
        out = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, f"timed out after {timeout:.0f} s"
    tail = (out.stdout + out.stderr).strip().splitlines()[-3:]
    return out.returncode == 0, " | ".join(tail)


def apply(root: Path, mutant: Mutant) -> dict[Path, str]:
    """Replace every occurrence of the first of the mutant's spellings found in the copy's package; the original
    texts of the files changed (none: no spelling found)."""
    sources = {path: path.read_text() for path in sorted((root / PACKAGE).rglob("*.py"))}
    for old, new in mutant.edits:
        originals = {path: text for path, text in sources.items() if old in text}
        for path, text in originals.items():
            path.write_text(text.replace(old, new))
        if originals:
            return originals
    return {}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="only the mutants marked quick (one or two per area)")
    parser.add_argument("--only", nargs="+", metavar="ID", help="only these mutants")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--rev", help="mutate the files of this commit instead of the working tree")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per test run (default 900)")
    args = parser.parse_args()

    chosen = [x for x in MUTANTS if (not args.quick or x.quick) and (not args.only or x.id in args.only)]
    if args.list:
        for x in chosen:
            print(f"{x.id:26} {'quick ' if x.quick else '      '}{x.why}")
        return 0
    unknown = set(args.only or ()) - {x.id for x in MUTANTS}
    if unknown:
        parser.error(f"unknown mutant id(s): {', '.join(sorted(unknown))}")

    with tempfile.TemporaryDirectory(prefix="ssam-mutation-") as tmp:
        root = Path(tmp)
        copy_tree(root, args.rev)
        plans = [(x, test_files(root, x.tests)) for x in chosen]
        baseline = sorted({f for _, files in plans for f in files})
        print(f"baseline: {len(baseline)} test files, unmutated", flush=True)
        ok, tail = run_tests(root, baseline, args.timeout * 2)
        if not ok:
            print(f"baseline fails, no verdict possible: {tail}")
            return 2
        verdicts: dict[str, list[str]] = {"killed": [], "survived": [], "skipped": []}
        for mutant, files in plans:
            started = time.perf_counter()
            if not files:
                verdict, detail = "skipped", "no test file found"
            else:
                originals = apply(root, mutant)
                if not originals:
                    verdict, detail = "skipped", "pattern not found"
                else:
                    try:
                        passed, tail = run_tests(root, files, args.timeout)
                    finally:
                        for path, text in originals.items():
                            path.write_text(text)
                    verdict = "survived" if passed else "killed"
                    where = ", ".join(str(p.relative_to(root)) for p in originals)
                    detail = f"{where}; {tail}" if passed else where
            verdicts[verdict].append(mutant.id)
            print(f"{verdict:8} {mutant.id:26} {time.perf_counter() - started:6.1f}s  {mutant.why}  [{detail}]",
                  flush=True)
        print(f"\n{len(verdicts['killed'])} killed, {len(verdicts['survived'])} survived, "
              f"{len(verdicts['skipped'])} skipped of {len(plans)} mutants")
        if verdicts["survived"]:
            print("survivors: " + " ".join(verdicts["survived"]))
        if verdicts["skipped"]:
            print("skipped: " + " ".join(verdicts["skipped"]))
        return 1 if verdicts["survived"] else 0


if __name__ == "__main__":
    sys.exit(main())
