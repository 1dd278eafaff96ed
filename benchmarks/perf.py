"""ssam against the work no exact implementation can skip, measured side by side in one run (issue 16).

    nice python benchmarks/perf.py                          # the default cases, short (a few minutes on 2 cores)
    python benchmarks/perf.py --cases lora,startup          # some cases
    python benchmarks/perf.py --lora-layers 32 --full-layers 4 --repeats 1   # the issue's Vicuna-7B-shaped sizes

Cases (each a table of ratios, every row a subprocess timed by wall clock, best of --repeats, interleaved):
  * lora:    `ssam merge` SSAM of 4 × rank-128 adapters → LoRA, default (spectrum summary on) and --no-spectrum,
             against the floor: read every factor once, one R × R Gram and eigvalsh per side per weight, float32
             Grams, 2 threads; and against the same floor in float64. It also reports how far SSAM's merged
             update moves when its Grams, or its Grams and R × R eigendecompositions, are float32 instead of
             float64 (the floor's precision: fast values, inexact vectors).
  * full:    `ssam merge` of the same adapters → full bf16 checkpoint (the base's first layers, embeddings and
             head) against a hand-written loop: per base tensor W0 + Σ s·B_i·A_i, cast, one save_file.
  * dense:   task arithmetic and TIES on dense fine-tunes, `ssam merge` against mergekit (where installed in
             /work/venv-mergekit, see docs/performance.md), with the largest difference of their outputs.
  * startup: `ssam --help` and a tiny merge end to end, beside `import torch` alone (the tiny merge's floor).
The hand loop runs with THP_MEM_ALLOC_ENABLE=1, as ssam sets it for full outputs (ssam_cli/allocator.py).
Peak memory is the sampled RssAnon of the measured process (/proc/PID/status): ru_maxrss would count the
mmap'd input pages. Inputs come from benchmarks/make_checkpoints.py (cached under benchmarks/.cache/); ssam is
run through its CLI only. Output: the tables on stdout, and benchmarks/out/perf.md + perf.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Optional

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
OUT = HERE / "out"
WORK = OUT / "work"
PY = sys.executable
SSAM = [PY, "-m", "ssam_cli"]
MERGEKIT = Path(os.environ.get("MERGEKIT_YAML", "/work/venv-mergekit/bin/mergekit-yaml"))
CASES = ("lora", "full", "dense", "startup")


# ---------------------------------------------------------------- measuring a subprocess


def measured(cmd: list[str], env_extra: Optional[dict[str, str]] = None, timeout: float = 3600) -> dict[str, Any]:
    """Run cmd: wall and CPU seconds, sampled peak RssAnon (MB), exit code, load averages before and after."""
    env = {**os.environ, "PYTHONPATH": str(REPO), **(env_extra or {})}
    load = os.getloadavg()[0]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=out, stderr=err, cwd=REPO, env=env)
        peak = 0
        while True:
            pid, status, usage = os.wait4(p.pid, os.WNOHANG)
            if pid:
                break
            peak = max(peak, rss_anon_kb(p.pid))
            if time.perf_counter() - t0 > timeout:
                p.kill()
                pid, status, usage = os.wait4(p.pid, 0)
                break
            time.sleep(0.02)
        wall = time.perf_counter() - t0
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    return {"wall_s": round(wall, 3), "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
            "anon_mb": round(peak / 1024, 1), "rc": os.waitstatus_to_exitcode(status),
            "load": [round(load, 2), round(os.getloadavg()[0], 2)], "stdout": stdout[-4000:], "stderr": stderr[-1500:]}


def rss_anon_kb(pid: int) -> int:
    """The process's current anonymous resident memory (kB), 0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def worker(name: str, *args: str) -> list[str]:
    """The command running this file's worker NAME (floor, hand loop, comparison) in its own process."""
    return [PY, str(Path(__file__).resolve()), "--worker", name, *args]


# The hand loop gets the allocator setting ssam gives itself for whole-weight outputs (ssam_cli/allocator.py): it
# stands for the work, not for torch's default page handling. The LoRA floor runs as ssam's LoRA merges do (without
# it); mergekit runs as its users run it.
REFERENCE_ENV = {"THP_MEM_ALLOC_ENABLE": "1"}


def best(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The fastest of repeated runs (the least disturbed by the machine's other load), with every wall time."""
    ok = [r for r in runs if r["rc"] == 0] or runs
    row = dict(min(ok, key=lambda r: r["wall_s"]))
    row["walls"] = [r["wall_s"] for r in runs]
    row["anon_mb"] = max(r["anon_mb"] for r in ok)
    return row


def side_by_side(variants: dict[str, Callable[[], dict[str, Any]]], repeats: int) -> dict[str, dict[str, Any]]:
    """Every variant once per round, rounds repeated: variants see the same machine load."""
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, run in variants.items():
            runs[name].append(run())
            if runs[name][-1]["rc"] != 0:
                print(f"  {name} failed: {runs[name][-1]['stderr'][-600:]}", file=sys.stderr)
    return {name: best(r) for name, r in runs.items()}


def machine() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count()}
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        info["cpu"] = next((ln.split(":", 1)[1].strip() for ln in lscpu.splitlines() if ln.startswith("Model name")), "")
    except OSError:
        pass
    return info


# ---------------------------------------------------------------- inputs and ssam runs


def checkpoints() -> Any:
    sys.path.insert(0, str(HERE))
    import make_checkpoints as mc  # noqa: E402

    return mc


def write_recipe(name: str, method: str, base: Path, specialists: list[Path], fmt: str, parameters: dict[str, Any],
                 dtype: str = "bfloat16") -> tuple[Path, Path]:
    import yaml

    out = WORK / name
    recipe = {"method": method, "base": str(base),
              "specialists": [{"name": f"s{i}", "path": str(p)} for i, p in enumerate(specialists)],
              "parameters": parameters, "device": "cpu", "seed": 0,
              "output": {"path": str(out), "format": fmt, "dtype": dtype, "shard_size": "2GB"}}
    path = WORK / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path, out


def ssam_run(recipe: Path, *flags: str) -> Callable[[], dict[str, Any]]:
    return lambda: measured([*SSAM, "merge", str(recipe), "--overwrite", "-q", *flags])


def manifest_figures(out: Path) -> dict[str, Any]:
    """What the merge says about itself: its own seconds, merged weights, output bytes."""
    m = json.loads((out / "manifest.json").read_text())
    merged = [t for t in m["tensors"].values() if t.get("role") == "merge"]
    return {"tool_s": m["summary"].get("seconds"), "merged_weights": len(merged),
            "output_bytes": m["summary"].get("output_bytes"), "workers": m.get("workers"), "threads": m.get("threads")}


# ---------------------------------------------------------------- cases


def case_lora(a: argparse.Namespace) -> dict[str, Any]:
    mc = checkpoints()
    adapters = mc.make_lora(4, a.lora_layers)
    base = mc.make_sparse_base(a.lora_layers)
    recipe, out = write_recipe("lora", "ssam", base, adapters, "lora", {"rank": 128})
    folders = [str(p) for p in adapters]
    rows = side_by_side({
        "ssam merge (default: spectrum summary)": ssam_run(recipe),
        "ssam merge --no-spectrum": ssam_run(recipe, "--no-spectrum"),
        "floor: factors + float32 Grams + eigvalsh": lambda: measured(worker("floor", "float32", *folders)),
        "floor in float64 (exact Grams)": lambda: measured(worker("floor", "float64", *folders)),
    }, a.repeats)
    figures = manifest_figures(out) if (out / "manifest.json").is_file() else {}
    check = measured(worker("precision", "128", *folders))
    figures["float32_accuracy"] = json.loads(check["stdout"].splitlines()[-1]) if check["rc"] == 0 else check["stderr"]
    shutil.rmtree(out, ignore_errors=True)
    return {"title": f"LoRA → LoRA: SSAM, 4 × rank-128 Vicuna-7B-shaped adapters, {a.lora_layers} layer(s) "
                     f"({figures.get('merged_weights', '?')} weights)",
            "reference": "floor: factors + float32 Grams + eigvalsh", "exact_floor": "floor in float64 (exact Grams)",
            "rows": rows, "figures": figures,
            "targets": {"ssam merge (default: spectrum summary)": "≤ 1.5×"}}


def case_full(a: argparse.Namespace) -> dict[str, Any]:
    mc = checkpoints()
    adapters = mc.make_lora(4, a.full_layers)
    base, _ = mc.make_dense(0, a.full_layers)
    recipe, out = write_recipe("full", "ssam", base, adapters, "full", {"rank": 128})
    hand_out = WORK / "full-hand.safetensors"
    rows = side_by_side({
        "ssam merge → full bf16": ssam_run(recipe),
        "hand loop: W0 + Σ s·B·A, cast, save_file": lambda: measured(
            worker("hand", str(base), str(hand_out), *map(str, adapters)), REFERENCE_ENV),
    }, a.repeats)
    figures = manifest_figures(out) if (out / "manifest.json").is_file() else {}
    if (out / "manifest.json").is_file() and hand_out.is_file():
        check = measured(worker("compare", str(out), str(hand_out)))
        key = "vs_hand_loop (SSAM, not a plain sum: differs by design)"
        figures[key] = json.loads(check["stdout"].splitlines()[-1]) if check["rc"] == 0 else check["stderr"]
    shutil.rmtree(out, ignore_errors=True)
    hand_out.unlink(missing_ok=True)
    return {"title": f"LoRA → full bf16 checkpoint: SSAM of the same adapters, {a.full_layers} layer(s) + "
                     "embeddings and head", "reference": "hand loop: W0 + Σ s·B·A, cast, save_file",
            "rows": rows, "figures": figures, "targets": {"ssam merge → full bf16": "≤ 0.5×"}}


def case_dense(a: argparse.Namespace) -> dict[str, Any]:
    if not MERGEKIT.exists():
        return {"title": "dense fine-tunes vs mergekit", "skipped": f"{MERGEKIT} not found: see docs/performance.md"}
    mc = checkpoints()
    base, specs = mc.make_dense(4, a.dense_layers)
    rows: dict[str, Any] = {}
    figures: dict[str, Any] = {}
    for method, params, mk in [("task_arithmetic", {"lambda": 1.0}, {"weight": 1.0}),
                               ("ties", {"density": 0.2, "lambda": 1.0}, {"weight": 1.0, "density": 0.2})]:
        recipe, out = write_recipe(f"dense-{method}", method, base, specs, "full", params, dtype="float32")
        theirs = WORK / f"dense-mergekit-{method}"
        config = {"merge_method": method, "base_model": str(base), "dtype": "float32", "out_dtype": "float32",
                  "parameters": {"normalize": method == "ties", "int8_mask": False, "lambda": 1.0},
                  "models": [{"model": str(p), "parameters": mk} for p in specs]}
        cfg = WORK / f"dense-mergekit-{method}.yml"
        cfg.write_text(json.dumps(config))
        got = side_by_side({f"ssam merge {method}": ssam_run(recipe),
                            f"mergekit {method}": lambda: measured([str(MERGEKIT), str(cfg), str(theirs)])},
                           a.repeats)
        rows.update(got)
        if all(r["rc"] == 0 for r in got.values()):
            check = measured(worker("compare", str(out), str(theirs)))
            figures[method] = json.loads(check["stdout"].splitlines()[-1]) if check["rc"] == 0 else check["stderr"]
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(theirs, ignore_errors=True)
    return {"title": f"dense fine-tunes (n = 4, {a.dense_layers} layer(s), vocab 32000), float32 outputs",
            "reference": {"ssam merge task_arithmetic": "mergekit task_arithmetic", "ssam merge ties": "mergekit ties"},
            "rows": rows, "figures": figures, "targets": {"ssam merge task_arithmetic": "≤ 0.5×",
                                                          "ssam merge ties": "≤ 0.5×"}}


def case_startup(a: argparse.Namespace) -> dict[str, Any]:
    mc = checkpoints()
    shapes = mc.Shapes(hidden=64, intermediate=128, vocab=64)
    adapters = mc.make_lora(2, 2, r=8, alpha=16, shapes=shapes)
    base = mc.make_sparse_base(2, shapes)
    recipe, out = write_recipe("tiny", "ssam", base, adapters, "lora", {"rank": 8})
    script = shutil.which("ssam", path=str(Path(PY).parent))
    variants = {"ssam --help": lambda: measured([script or SSAM[0], *([] if script else SSAM[1:]), "--help"]),
                "tiny merge (2 × rank-8, 14 weights), end to end": ssam_run(recipe),
                "python -c 'import torch' (torch's import alone)": lambda: measured([PY, "-c", "import torch"]),
                "python -c pass (the interpreter alone)": lambda: measured([PY, "-c", "pass"])}
    rows = side_by_side(variants, max(a.repeats, 5))
    shutil.rmtree(out, ignore_errors=True)
    return {"title": "start-up", "reference": None, "rows": rows,
            "targets": {"ssam --help": "≤ 0.2 s", "tiny merge (2 × rank-8, 14 weights), end to end": "≤ 1.5 s"}}


# ---------------------------------------------------------------- workers (each in its own process)


def _adapter(folder: str) -> tuple[Any, float, list[str]]:
    """An adapter's open safetensors file, its scale alpha / r, and its LoRA module keys (…weight stems)."""
    from safetensors import safe_open

    config = json.loads((Path(folder) / "adapter_config.json").read_text())
    f = safe_open(str(Path(folder) / "adapter_model.safetensors"), framework="pt")
    stems = sorted(k[: -len(".lora_A.weight")] for k in f.keys() if k.endswith(".lora_A.weight"))
    return f, config["lora_alpha"] / config["r"], stems


def work_floor(dtype: str, *folders: str) -> dict[str, Any]:
    """The floor of LoRA → LoRA: read every factor once, one R × R Gram and eigvalsh per side per weight,
    2 workers of one torch thread each (as ssam schedules LoRA-only work on a 2-core CPU)."""
    import torch

    torch.set_num_threads(1)
    dt = getattr(torch, dtype)
    adapters = [_adapter(f) for f in folders]

    def one(stem: str) -> float:
        L = torch.cat([f.get_tensor(f"{stem}.lora_B.weight").to(dt) * s for f, s, _ in adapters], dim=1)
        H = torch.cat([f.get_tensor(f"{stem}.lora_A.weight").to(dt).T for f, _, _ in adapters], dim=1)
        return float(torch.linalg.eigvalsh(L.T @ L)[-1] + torch.linalg.eigvalsh(H.T @ H)[-1])

    with ThreadPoolExecutor(2) as pool:
        total = sum(pool.map(one, adapters[0][2]))
    return {"weights": len(adapters[0][2]), "checksum": total}


def work_precision(k: str, *folders: str) -> dict[str, Any]:
    """What float32 costs in accuracy: SSAM's merged update U_cU_cᵀ S V_cV_cᵀ (S = Σ s·B·A) with the Grams, or the
    Grams and the R × R eigendecompositions, in float32, against all float64, on three of layer 0's weights, as the
    adapters are stored (balanced factors) and as PEFT trains them (A with flat rows, B holding the spectrum).
    The floor's float32 Grams + eigvalsh are how fast the values come; this is how wrong the vectors would be."""
    import torch

    top = int(k)
    adapters = [_adapter(f) for f in folders]

    def merged(L: torch.Tensor, H: torch.Tensor, ranks: list[int], gram: Any, eig: Any) -> tuple[Any, Any, Any]:
        """U_c, M = U_cᵀ S V_c and V_c: the merged update U_c M V_cᵀ, kept factored."""
        gram_l, gram_h = ((X.to(gram).T @ X.to(gram)).to(eig) for X in (L, H))
        sides = []
        for X, gram_x, gram_y in ((L, gram_l, gram_h), (H, gram_h, gram_l)):
            C = torch.block_diag(*[torch.linalg.cholesky(b) for b in _blocks(gram_y, ranks)])
            core = C.T @ gram_x @ C
            lam, W = torch.linalg.eigh((core + core.T) / 2)
            sides.append(X @ (C.double() @ W.double().flip(1)[:, :top]) / lam.double().flip(0)[:top].sqrt())
        U, V = sides
        return U, (U.T @ L) @ (H.T @ V), V

    def distance(a: tuple[Any, Any, Any], b: tuple[Any, Any, Any]) -> float:
        """‖U₁M₁V₁ᵀ − U₂M₂V₂ᵀ‖_F / ‖U₂M₂V₂ᵀ‖_F through k × k products (float64: exact to ≈ 1e-8 relative)."""
        def inner(x: tuple[Any, Any, Any], y: tuple[Any, Any, Any]) -> float:
            return float(torch.trace(x[1].T @ (x[0].T @ y[0]) @ y[1] @ (y[2].T @ x[2])))
        return max(inner(a, a) + inner(b, b) - 2 * inner(a, b), 0.0) ** 0.5 / inner(b, b) ** 0.5

    errors: dict[str, float] = {}
    stems = [s for s in adapters[0][2] if ".layers.0." in s][:3]
    for peft_like in (False, True):
        for stem in stems:
            Ls = [f.get_tensor(f"{stem}.lora_B.weight").double() * sc for f, sc, _ in adapters]
            Hs = [f.get_tensor(f"{stem}.lora_A.weight").double().T for f, _, _ in adapters]
            if peft_like:  # the same updates, refactored: A's rows orthonormal (× 0.02), B = Δ's spectrum
                Q_R = [torch.linalg.qr(h) for h in Hs]
                Ls, Hs = [b @ r.T / 0.02 for b, (_, r) in zip(Ls, Q_R)], [q * 0.02 for q, _ in Q_R]
            Ls, Hs = [x.float().double() for x in Ls], [x.float().double() for x in Hs]
            ranks = [x.shape[1] for x in Ls]
            L, H = torch.cat(Ls, dim=1), torch.cat(Hs, dim=1)
            exact = merged(L, H, ranks, torch.float64, torch.float64)
            for label, gram, eig in (("float32 Grams", torch.float32, torch.float64),
                                     ("float32 Grams + float32 eigh", torch.float32, torch.float32)):
                key = f"{label}, {'PEFT-like' if peft_like else 'stored'} factors"
                err = distance(merged(L, H, ranks, gram, eig), exact)
                errors[key] = max(errors.get(key, 0.0), err)
    return {"weights": len(stems), "k": top, "merged_update_rel_err": errors}


def _blocks(G: Any, ranks: list[int]) -> list[Any]:
    starts = [sum(ranks[:i]) for i in range(len(ranks))]
    return [G[a: a + r, a: a + r] for a, r in zip(starts, ranks)]


def work_hand(base: str, out: str, *folders: str) -> dict[str, Any]:
    """The hand-written LoRA → full loop: per base tensor W0 + Σ s·B_i·A_i in float32, cast to bf16, one save_file."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    adapters = [_adapter(f) for f in folders]
    index = Path(base) / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() else ["model.safetensors"]
    result: dict[str, Any] = {}
    for name in files:
        with safe_open(str(Path(base) / name), framework="pt") as f:
            for key in f.keys():
                w = f.get_tensor(key)
                stem = f"base_model.model.{key[: -len('.weight')]}"
                if stem in adapters[0][2]:
                    w = w.float()
                    for a, s, _ in adapters:
                        w.addmm_(a.get_tensor(f"{stem}.lora_B.weight").float(),
                                 a.get_tensor(f"{stem}.lora_A.weight").float(), alpha=s)
                result[key] = w.to(torch.bfloat16)
    save_file(result, out)
    return {"tensors": len(result)}


def work_compare(ours: str, theirs: str) -> dict[str, Any]:
    """Max |ours − theirs| over every tensor both hold, as float64, for the matrices (2-D) and for all tensors
    apart (ssam averages 1-D tensors such as norms, which mergekit merges like the rest), with max |theirs|."""
    from safetensors import safe_open

    def index(path: Path) -> dict[str, Path]:
        files = [path] if path.is_file() else sorted(path.glob("*.safetensors"))
        return {k: f for f in files for k in safe_open(str(f), "pt").keys()}

    a, b = index(Path(ours)), index(Path(theirs))
    worst, worst_2d, scale, compared = 0.0, 0.0, 0.0, 0
    for key in sorted(set(a) & set(b)):
        with safe_open(str(a[key]), "pt") as fa, safe_open(str(b[key]), "pt") as fb:
            x, y = fa.get_tensor(key).double(), fb.get_tensor(key).double()
        diff = float((x - y).abs().max())
        worst = max(worst, diff)
        worst_2d = max(worst_2d, diff) if x.ndim == 2 else worst_2d
        scale = max(scale, float(y.abs().max()))
        compared += 1
    return {"max_abs_diff_2d": worst_2d, "max_abs_diff": worst, "max_abs": scale, "tensors_compared": compared,
            "only_in_one": sorted(set(a) ^ set(b))[:10]}


WORKERS: dict[str, Callable[..., dict[str, Any]]] = {"floor": work_floor, "hand": work_hand, "compare": work_compare,
                                                     "precision": work_precision}


# ---------------------------------------------------------------- the tables


def render(case: dict[str, Any]) -> str:
    """One markdown table: every variant's best wall time, CPU time, peak RssAnon, and its ratio to the reference."""
    lines = [f"### {case['title']}", ""]
    if "skipped" in case:
        return "\n".join(lines + [f"skipped: {case['skipped']}", ""])
    lines += ["| run | wall s (best; all) | CPU s | peak RssAnon MB | ratio | target | load 1 min |",
              "|---|---|---|---|---|---|---|"]
    refs = case.get("reference")
    for name, r in case["rows"].items():
        ref_name = refs.get(name) if isinstance(refs, dict) else refs
        ref = case["rows"].get(ref_name) if ref_name else None
        ratio = f"{r['wall_s'] / ref['wall_s']:.2f}×" if ref and ref is not r and ref["wall_s"] else ""
        status = "" if r["rc"] == 0 else f" (exit {r['rc']})"
        lines.append(f"| {name}{status} | {r['wall_s']:.2f}; {', '.join(f'{w:.2f}' for w in r['walls'])} | "
                     f"{r['cpu_s']:.1f} | {r['anon_mb']:.0f} | {ratio} | {case.get('targets', {}).get(name, '')} | "
                     f"{r['load'][0]}–{r['load'][1]} |")
    exact = case.get("exact_floor")
    if exact and exact in case["rows"]:
        floor64 = case["rows"][exact]["wall_s"]
        lines.append("\nagainst the float64 floor: " + ", ".join(
            f"{n} {r['wall_s'] / floor64:.2f}× wall, {r['cpu_s'] / max(case['rows'][exact]['cpu_s'], 1e-9):.2f}× CPU"
            for n, r in case["rows"].items() if n.startswith("ssam")))
    spectrum = [r for n, r in case["rows"].items() if "spectrum" in n]
    if len(spectrum) == 2:
        lines.append(f"\nspectrum summary: {spectrum[0]['wall_s'] - spectrum[1]['wall_s']:+.2f} s "
                     f"({(spectrum[0]['wall_s'] / spectrum[1]['wall_s'] - 1) * 100:+.0f} % of the merge; target ≤ 10 %)")
    if case.get("figures"):
        lines.append(f"\nfigures: {json.dumps(case['figures'])}")
    return "\n".join(lines + [""])


def main(argv: Optional[list[str]] = None) -> None:
    ap = argparse.ArgumentParser(description="ssam against the floor, a hand-written loop and mergekit, side by side")
    ap.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {','.join(CASES)}")
    ap.add_argument("--repeats", type=int, default=2, help="rounds of every variant (best wall time is reported)")
    ap.add_argument("--lora-layers", type=int, default=2, help="layers of the LoRA → LoRA case (issue: 32)")
    ap.add_argument("--full-layers", type=int, default=1, help="layers of the LoRA → full case (issue: 4)")
    ap.add_argument("--dense-layers", type=int, default=1, help="layers of the dense vs mergekit case")
    ap.add_argument("--worker", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        print(json.dumps(WORKERS[a.worker[0]](*a.worker[1:])))
        return
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    info = machine()
    print(f"{started}; machine: {json.dumps(info)}; load average {os.getloadavg()}", flush=True)
    results = []
    for name in a.cases.split(","):
        case = globals()[f"case_{name.strip()}"](a)
        results.append(case)
        print(render(case), flush=True)
    text = (f"Measured {started} by `python benchmarks/perf.py {' '.join(argv or sys.argv[1:])}`; "
            f"machine: {info}; load averages after: {[round(x, 2) for x in os.getloadavg()]}\n\n"
            + "\n".join(render(c) for c in results))
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "perf.md").write_text(text)
    (OUT / "perf.json").write_text(json.dumps({"machine": info, "measured": started, "cases": results}, indent=2))


if __name__ == "__main__":
    main()
