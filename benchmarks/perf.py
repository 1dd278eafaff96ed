"""SSAM at Vicuna-7B scale, side by side with its peers, on the same shape-true synthetic inputs (issue 3).

    nice -n 10 python benchmarks/perf.py                    # every section, then the table
    python benchmarks/perf.py --sections help,lora          # some sections; the others are reused if measured
    python benchmarks/perf.py --table                       # only print/write the table from earlier results

Every measurement runs in its own subprocess, timed by wall clock, with its peak RSS from wait4 (the
kernel's ru_maxrss of that process). Each section writes benchmarks/out/sections/<name>.json as soon as
it is done; the markdown table (benchmarks/out/perf.md, printed) and benchmarks/out/perf.json are
assembled from whatever sections exist, each stamped with the time and machine load it was measured at.
Inputs come from benchmarks/make_checkpoints.py (cached under benchmarks/.cache/).
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
from pathlib import Path
from typing import Any, Callable, Optional

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
OUT = HERE / "out"
SECTIONS = OUT / "sections"
WORK = OUT / "work"
PY = sys.executable
SSAM = [PY, "-m", "ssam_cli"]
MERGEKIT = Path("/work/venv-mergekit/bin/mergekit-yaml")
ALL = ["help", "lora", "full", "alg1", "peft", "dense", "mergekit"]
SAMPLE = {"q_proj": "model.layers.0.self_attn.q_proj.weight", "down_proj": "model.layers.0.mlp.down_proj.weight"}
PER_LAYER = {"q_proj": 4, "down_proj": 3}  # q,k,v,o are 4096×4096; gate, up, down cost like 4096×11008
LAYERS = 32


# ---------------------------------------------------------------- measuring a subprocess


def measured(cmd: list[str], timeout: Optional[float] = None, cwd: Path = REPO,
             env_extra: Optional[dict[str, str]] = None) -> dict[str, Any]:
    """Run cmd; wall seconds, peak RSS (MB) of the process from wait4, exit code, and its stdout."""
    env = {**os.environ, "PYTHONPATH": str(REPO), **(env_extra or {})}
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=out, stderr=err, cwd=cwd, env=env)
        deadline = None if timeout is None else t0 + timeout
        peaks = {"RssAnon": 0, "RssFile": 0}
        while True:
            pid, status, usage = os.wait4(p.pid, os.WNOHANG)
            if pid:
                break
            _sample_rss(p.pid, peaks)
            if deadline and time.perf_counter() > deadline:
                p.kill()
                pid, status, usage = os.wait4(p.pid, 0)
                break
            time.sleep(0.1)
        wall = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    return {"cmd": " ".join(cmd), "wall_s": round(wall, 3), "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
            "peak_anon_mb": round(peaks["RssAnon"] / 1024, 1), "peak_file_mb": round(peaks["RssFile"] / 1024, 1),
            "rc": p.returncode, "load_avg_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            "stdout": stdout[-4000:], "stderr": stderr[-2000:]}


def _sample_rss(pid: int, peaks: dict[str, int]) -> None:
    """Peak anonymous and file-backed RSS (kB), sampled: ru_maxrss counts the mmap'd input pages too."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key = line.split(":", 1)[0]
            if key in peaks:
                peaks[key] = max(peaks[key], int(line.split()[1]))
    except (OSError, ValueError):
        pass


def worker(name: str, *args: str, timeout: Optional[float] = None, threads: Optional[int] = None) -> dict[str, Any]:
    """This file's --worker NAME in a subprocess; its last stdout line is a JSON result."""
    env = {"OMP_NUM_THREADS": str(threads)} if threads else None
    run = measured([PY, str(Path(__file__).resolve()), "--worker", name, *args], timeout=timeout, env_extra=env)
    result: dict[str, Any] = {"wall_s": run["wall_s"], "cpu_s": run["cpu_s"], "peak_rss_mb": run["peak_rss_mb"],
                              "rc": run["rc"], "load_avg_1min": run["load_avg_1min"]}
    lines = [ln for ln in run["stdout"].splitlines() if ln.startswith("{")]
    if run["rc"] != 0 or not lines:
        result["error"] = (run["stderr"] or run["stdout"])[-800:]
        return result
    result.update(json.loads(lines[-1]))
    return result


def machine() -> dict[str, Any]:
    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpus": os.cpu_count(), "load_avg": [round(x, 2) for x in os.getloadavg()]}
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        info["cpu"] = next((ln.split(":", 1)[1].strip() for ln in lscpu.splitlines() if ln.startswith("Model name")), "")
    except OSError:
        pass
    return info


def save(section: str, data: dict[str, Any]) -> None:
    SECTIONS.mkdir(parents=True, exist_ok=True)
    data = {"measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "load_avg_after": list(os.getloadavg()),
            **data}
    (SECTIONS / f"{section}.json").write_text(json.dumps(data, indent=2))
    print(f"[{section}] {json.dumps({k: v for k, v in data.items() if k not in ('runs',)})[:600]}", flush=True)


# ---------------------------------------------------------------- inputs


def checkpoints() -> Any:
    sys.path.insert(0, str(HERE))
    import make_checkpoints as mc  # noqa: E402

    return mc


def write_recipe(path: Path, method: str, base: Path, specialists: list[Path], out: Path, fmt: str,
                 parameters: dict[str, Any], dtype: str = "bfloat16") -> Path:
    import yaml

    recipe = {"method": method, "base": str(base),
              "specialists": [{"name": f"s{i}", "path": str(p)} for i, p in enumerate(specialists)],
              "parameters": parameters, "device": "cpu", "seed": 0,
              "output": {"path": str(out), "format": fmt, "dtype": dtype, "shard_size": "2GB"}}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def ssam_merge(name: str, method: str, base: Path, specialists: list[Path], fmt: str, parameters: dict[str, Any],
               dtype: str = "bfloat16", keep: bool = False, threads: Optional[int] = None,
               spectrum: bool = True) -> dict[str, Any]:
    out = WORK / name
    recipe = write_recipe(WORK / f"{name}.yaml", method, base, specialists, out, fmt, parameters, dtype)
    env = {"OMP_NUM_THREADS": str(threads)} if threads else None
    flags = [] if spectrum else ["--no-spectrum"]
    run = measured([*SSAM, "merge", str(recipe), "--overwrite", "-q", *flags], env_extra=env)
    row: dict[str, Any] = {k: run[k] for k in ("wall_s", "cpu_s", "peak_rss_mb", "peak_anon_mb", "peak_file_mb", "rc",
                                                "load_avg_1min")}
    if run["rc"] != 0:
        row["error"] = run["stderr"][-800:]
        return row
    manifest = json.loads((out / "manifest.json").read_text())
    row["tool_seconds"] = manifest["summary"].get("seconds")
    row["output_bytes"] = manifest["summary"].get("output_bytes")
    merged = [t for t in manifest["tensors"].values() if t.get("role") == "merge"]
    row["merged_weights"] = len(merged)
    ranks = sorted({t.get("rank_used") for t in merged if t.get("rank_used") is not None})
    if ranks:
        row["rank_used"] = [ranks[0], ranks[-1]]
    row["merge_seconds_sum"] = round(sum(t.get("seconds", 0.0) for t in merged), 3)
    if not keep:
        shutil.rmtree(out, ignore_errors=True)
    return row


# ---------------------------------------------------------------- sections


def section_help() -> None:
    runs = [measured([*SSAM, "--help"])["wall_s"] for _ in range(5)]
    script = shutil.which("ssam", path=str(Path(PY).parent))
    runs_script = [measured([script, "--help"])["wall_s"] for _ in range(5)] if script else []
    save("help", {"python_m_min_s": min(runs), "script_min_s": min(runs_script) if runs_script else None,
                  "runs": runs + runs_script})


def section_lora() -> None:
    """SSAM of 4 × rank-128 adapters → LoRA adapter; two depths to show the peak memory does not grow; one thread
    without the manifest's spectrum summary (the method alone), then the defaults (two threads, with the summary,
    which recomputes the bases per weight). Rows are saved as they finish: the last ones are slow under load."""
    mc = checkpoints()
    rows: dict[str, Any] = {}
    for layers, threads, spectrum in ((2, 1, False), (LAYERS, 1, False), (2, None, True), (LAYERS, None, True)):
        adapters = mc.make_lora(4, layers)
        base = mc.make_sparse_base(layers)
        label = f"L{layers}" + (f", OMP_NUM_THREADS={threads}" if threads else "") + ("" if spectrum else ", --no-spectrum")
        rows[label] = ssam_merge(f"lora-L{layers}", "ssam", base, adapters, "lora", {"rank": 128}, threads=threads,
                                 spectrum=spectrum)
        save("lora", {"rows": rows})  # after every row: a long section interrupted keeps what it measured


def section_full() -> None:
    """SSAM of the same adapters → full checkpoint, with a real base of 1 and 2 layers: per-layer cost, peak RSS."""
    mc = checkpoints()
    rows = {}
    for layers in (1, 2):
        base, _ = mc.make_dense(4, layers)
        rows[f"L{layers}"] = ssam_merge(f"full-L{layers}", "ssam", base, mc.make_lora(4, layers), "full", {"rank": 128})
    save("full", {"rows": rows, **_extrapolated(rows)})


def _extrapolated(rows: dict[str, Any]) -> dict[str, Any]:
    """Per-layer cost as the difference of the 2- and 1-layer runs (wall and CPU), extended to 32 layers."""
    out: dict[str, Any] = {}
    for key, label in (("wall_s", "s"), ("cpu_s", "cpu_s")):
        per_layer = rows["L2"][key] - rows["L1"][key]
        out[f"per_layer_{label}"] = round(per_layer, 3)
        out[f"extrapolated_32_layers_{label}"] = round(rows["L1"][key] + (LAYERS - 1) * per_layer, 1)
    return out


def section_alg1() -> None:
    mc = checkpoints()
    adapters = [str(p) for p in mc.make_lora(4, 2)]
    rows = {short: worker("alg1", name, *adapters) for short, name in SAMPLE.items()}
    per_layer = sum(PER_LAYER[s] * rows[s].get("alg1_s", float("nan")) for s in rows)
    ssam_per_layer = sum(PER_LAYER[s] * rows[s].get("ssam_s", float("nan")) for s in rows)
    save("alg1", {"rows": rows, "alg1_model_s": round(LAYERS * per_layer, 1),
                  "ssam_model_compute_s": round(LAYERS * ssam_per_layer, 1)})


def section_peft() -> None:
    mc = checkpoints()
    rows = {}
    for short, name in SAMPLE.items():
        module = name.split(".", 3)[-1].rsplit(".", 1)[0]
        adapters = [str(p) for p in mc.make_lora(4, 1, modules=(module,))]
        rows[short] = worker("peft", name, *adapters)
    per_layer = sum(PER_LAYER[s] * rows[s].get("peft_s", float("nan")) for s in rows)
    save("peft", {"rows": rows, "peft_model_s": round(LAYERS * per_layer, 1)})


def section_dense() -> None:
    mc = checkpoints()
    base, specs = mc.make_dense(4, 1)
    # One thread: on a shared machine, OpenMP threads spin while they wait, so two-thread CPU seconds would
    # count the waiting; single-threaded CPU seconds are the work itself, comparable between the two sides.
    row = worker("dense", SAMPLE["down_proj"], str(base), *map(str, specs), threads=1)
    save("dense", {"rows": {"down_proj": row}})


def section_mergekit() -> None:
    """Task arithmetic and TIES on the dense 1-layer checkpoints, ssam vs mergekit 0.1.5, float32 outputs."""
    if not MERGEKIT.exists():
        save("mergekit", {"skipped": f"{MERGEKIT} not installed (pip install mergekit==0.1.5 into /work/venv-mergekit)"})
        return
    mc = checkpoints()
    base, specs = mc.make_dense(4, 1)
    rows = {}
    for method, params, mk in [("task_arithmetic", {"lambda": 1.0}, {"weight": 1.0}),
                               ("ties", {"density": 0.2, "lambda": 1.0}, {"weight": 1.0, "density": 0.2})]:
        ours = ssam_merge(f"mk-ssam-{method}", method, base, specs, "full", params, dtype="float32", keep=True)
        theirs_out = WORK / f"mk-mergekit-{method}"
        shutil.rmtree(theirs_out, ignore_errors=True)
        config = {"merge_method": method, "base_model": str(base), "dtype": "float32", "out_dtype": "float32",
                  "parameters": {"normalize": True, "int8_mask": False, "lambda": 1.0} if method == "ties" else
                  {"normalize": False, "lambda": 1.0},
                  "models": [{"model": str(p), "parameters": mk} for p in specs]}
        cfg = WORK / f"mk-{method}.yml"
        cfg.write_text(json.dumps(config))
        theirs = measured([str(MERGEKIT), str(cfg), str(theirs_out), "--quiet"])
        row = {"ssam": ours, "mergekit": {k: theirs[k] for k in ("wall_s", "cpu_s", "peak_rss_mb", "peak_anon_mb", "rc")}}
        if theirs["rc"] != 0:
            row["mergekit"]["error"] = theirs["stderr"][-800:]
        else:
            row["compare"] = worker("compare", str(WORK / f"mk-ssam-{method}"), str(theirs_out))
        rows[method] = row
        shutil.rmtree(WORK / f"mk-ssam-{method}", ignore_errors=True)
        shutil.rmtree(theirs_out, ignore_errors=True)
    save("mergekit", {"rows": rows})


# ---------------------------------------------------------------- workers (run in their own process)


def _adapter_deltas(name: str, folders: list[str]) -> list[Any]:
    import torch

    from ssam_cli.sources.lora import LoraAdapter

    return [LoraAdapter(Path(f)).read_lowrank(name).to("cpu", torch.float32) for f in folders]


def work_alg1(name: str, *folders: str) -> dict[str, Any]:
    """ssam's merge and the direct Algorithm 1 (dense Δ_i, float32 Grams + eigh) on one weight, same k."""
    import torch

    from ssam_cli.methods.base import MergeContext
    from ssam_cli.methods.ssam import SsamParams, merge

    deltas = _adapter_deltas(name, list(folders))
    n = len(deltas)
    ctx = MergeContext(name, n, torch.device("cpu"), torch.Generator().manual_seed(0))
    threads = torch.get_num_threads()
    one_thread = []
    torch.set_num_threads(1)
    for _ in range(3):
        t0, c0 = time.perf_counter(), time.process_time()
        merge(deltas, [1.0] * n, SsamParams(rank=128), ctx)
        one_thread.append((time.perf_counter() - t0, time.process_time() - c0))
    torch.set_num_threads(threads)
    times, cpu = [], []
    for _ in range(3):
        t0, c0 = time.perf_counter(), time.process_time()
        result = merge(deltas, [1.0] * n, SsamParams(rank=128), ctx)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    k_u, k_v = (min(128, r) for r in result.stats["numerical_rank"])  # ssam caps each side at its rank
    ours = result.delta.dense().double()
    reference = _float64_ssam(deltas, k_u, k_v)

    t0 = time.perf_counter()
    dense = [d.dense() for d in deltas]
    A = sum(d @ d.T for d in dense)
    B = sum(d.T @ d for d in dense)
    U = torch.linalg.eigh(A).eigenvectors.flip(1)[:, :k_u]
    V = torch.linalg.eigh(B).eigenvectors.flip(1)[:, :k_v]
    alg1 = sum(U @ (U.T @ d @ V) @ V.T for d in dense) / n
    alg1_s = time.perf_counter() - t0
    alg1 = alg1.double()

    def rel(a: Any, b: Any) -> float:
        return float((a - b).norm() / b.norm())

    return {"shape": list(deltas[0].shape), "k": [k_u, k_v], "rank_requested": 128, "ssam_s": round(min(times), 4),
            "ssam_cpu_s": round(min(cpu), 4), "threads": threads, "ssam_s_1thread": round(min(t for t, _ in one_thread), 4),
            "ssam_cpu_s_1thread": round(min(c for _, c in one_thread), 4),
            "alg1_s": round(alg1_s, 2), "ratio": round(alg1_s / min(times), 1),
            "rel_err_ssam_vs_alg1": rel(ours, alg1), "rel_err_ssam_vs_float64": rel(ours, reference),
            "rel_err_alg1_vs_float64": rel(alg1, reference)}


def _float64_ssam(deltas: list[Any], k_u: int, k_v: int) -> Any:
    """Algorithm 1 in float64 through thin QRs of the stacked factors (no Gram): the accuracy reference."""
    import torch

    L = torch.cat([d.scale * d.B.double() @ torch.linalg.qr(d.A.double().T)[1].T for d in deltas], dim=1)
    H = torch.cat([d.A.double().T @ (d.scale * torch.linalg.qr(d.B.double())[1]).T for d in deltas], dim=1)

    def top(X: Any, k: int) -> Any:
        Q, R = torch.linalg.qr(X)
        return (Q @ torch.linalg.svd(R)[0])[:, :k]

    U, V = top(L, k_u), top(H, k_v)
    C = sum(d.scale * (U.T @ d.B.double()) @ (d.A.double() @ V) for d in deltas)
    return U @ C @ V.T / len(deltas)


def work_accuracy(name: str, *folders: str) -> dict[str, Any]:
    """ssam's merged Δ against the float64 reference, same k per side, and its compute time (CPU seconds)."""
    import torch

    from ssam_cli.methods.base import MergeContext
    from ssam_cli.methods.ssam import SsamParams, merge

    deltas = _adapter_deltas(name, list(folders))
    ctx = MergeContext(name, len(deltas), torch.device("cpu"), torch.Generator().manual_seed(0))
    cpu = []
    for _ in range(3):
        c0 = time.process_time()
        result = merge(deltas, [1.0] * len(deltas), SsamParams(rank=128), ctx)
        cpu.append(time.process_time() - c0)
    k_u, k_v = (min(128, r) for r in result.stats["numerical_rank"])
    reference = _float64_ssam(deltas, k_u, k_v)
    ours = result.delta.dense().double()
    return {"k": [k_u, k_v], "ssam_cpu_s": round(min(cpu), 4),
            "rel_err_ssam_vs_float64": float((ours - reference).norm() / reference.norm())}


def work_peft(name: str, *folders: str) -> dict[str, Any]:
    """PEFT's add_weighted_adapter(combination_type="svd", rank 128) on a one-layer Llama of Vicuna shapes."""
    import torch
    from peft import PeftModel
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=1, num_attention_heads=32,
                         num_key_value_heads=32, vocab_size=32)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model = model.to_empty(device="cpu")
    peft_model = PeftModel.from_pretrained(model, folders[0], adapter_name="s0")
    for i, f in enumerate(folders[1:], start=1):
        peft_model.load_adapter(f, adapter_name=f"s{i}")
    names = [f"s{i}" for i in range(len(folders))]
    weights = [1.0 / len(folders)] * len(folders)
    t0 = time.perf_counter()
    peft_model.add_weighted_adapter(names, weights, "merged", combination_type="svd", svd_rank=128)
    peft_s = time.perf_counter() - t0

    module = dict(peft_model.named_modules())[f"base_model.model.{name.rsplit('.', 1)[0]}"]
    merged = (module.lora_B["merged"].weight.double() @ module.lora_A["merged"].weight.double()) * module.scaling["merged"]
    exact = sum(d.dense().double() * w for d, w in zip(_adapter_deltas(name, list(folders)), weights))
    return {"peft_s": round(peft_s, 2), "rel_err_vs_exact_weighted_sum": float((merged - exact).norm() / exact.norm())}


def work_dense(name: str, base: str, *specialists: str) -> dict[str, Any]:
    """One dense weight, n full deltas: randomized consensus bases vs exact eigh of the float32 Grams
    A = Σ Δ_iΔ_iᵀ and B = Σ Δ_iᵀΔ_i (the issue's reference; energies from their eigenvalues)."""
    import torch

    from ssam_cli.consensus.randomized import randomized_spectra
    from ssam_cli.sources.checkpoint import FullCheckpoint

    w0 = FullCheckpoint(Path(base)).read(name).float()
    deltas = [FullCheckpoint(Path(s)).read(name).float() - w0 for s in specialists]
    del w0
    k = 128
    t0, c0 = time.perf_counter(), time.process_time()
    left_r, right_r = randomized_spectra(deltas, k, torch.Generator().manual_seed(0))
    Ur, Vr = left_r.top(k), right_r.top(k)
    randomized_s, randomized_cpu = time.perf_counter() - t0, time.process_time() - c0
    t0, c0 = time.perf_counter(), time.process_time()
    la, Ue = torch.linalg.eigh(sum(d @ d.T for d in deltas))
    lb, Ve = torch.linalg.eigh(sum(d.T @ d for d in deltas))
    Ue, Ve = Ue.flip(1)[:, :k], Ve.flip(1)[:, :k]
    exact_s, exact_cpu = time.perf_counter() - t0, time.process_time() - c0

    def energy(lam: Any) -> float:
        lam = lam.double().clamp_min(0).flip(0)
        return float(lam[:k].sum() / lam.sum())

    def merged(U: Any, V: Any) -> Any:
        U, V = U.double(), V.double()
        return sum(U @ (U.T @ d.double() @ V) @ V.T for d in deltas) / len(deltas)

    a, b = merged(Ur, Vr), merged(Ue, Ve)
    e_left, e_right = energy(la), energy(lb)
    return {"shape": list(deltas[0].shape), "n": len(deltas), "k": k, "threads": torch.get_num_threads(),
            "randomized_s": round(randomized_s, 2), "randomized_cpu_s": round(randomized_cpu, 2),
            "exact_s": round(exact_s, 2), "exact_cpu_s": round(exact_cpu, 2), "ratio": round(exact_s / randomized_s, 1),
            "ratio_cpu": round(exact_cpu / randomized_cpu, 1), "krylov": {"width": left_r.width, "depth": left_r.depth},
            "energy_left": [left_r.energy(k), e_left], "energy_right": [right_r.energy(k), e_right],
            "energy_diff": max(abs(left_r.energy(k) - e_left), abs(right_r.energy(k) - e_right)),
            "subspace_error_estimate": [left_r.subspace_error, right_r.subspace_error],
            "merged_rel_diff": float((a - b).norm() / b.norm())}


def work_compare(ours: str, theirs: str) -> dict[str, Any]:
    """Max |ours − theirs| over the 2-D tensors both outputs hold (1-D norms: ssam averages, mergekit merges)."""
    from safetensors import safe_open

    def index(folder: Path) -> dict[str, Path]:
        return {k: f for f in sorted(folder.glob("*.safetensors")) for k in safe_open(str(f), "pt").keys()}

    a, b = index(Path(ours)), index(Path(theirs))
    worst, compared, only = 0.0, 0, sorted(set(a) ^ set(b))
    for key in sorted(set(a) & set(b)):
        with safe_open(str(a[key]), "pt") as fa, safe_open(str(b[key]), "pt") as fb:
            x, y = fa.get_tensor(key), fb.get_tensor(key)
        if x.ndim != 2:
            continue
        worst = max(worst, float((x.double() - y.double()).abs().max()))
        compared += 1
    return {"max_abs_diff": worst, "tensors_compared": compared, "only_in_one": only[:10]}


WORKERS: dict[str, Callable[..., dict[str, Any]]] = {"alg1": work_alg1, "accuracy": work_accuracy, "peft": work_peft,
                                                     "dense": work_dense, "compare": work_compare}


# ---------------------------------------------------------------- the table


def load_sections() -> dict[str, Any]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(SECTIONS.glob("*.json"))}


def table(s: dict[str, Any]) -> str:
    """The markdown table of every measured section (missing ones say so)."""
    rows = ["| measurement | ssam | peer | ratio / error | target |", "|---|---|---|---|---|"]

    def add(*cells: Any) -> None:
        rows.append("| " + " | ".join(str(c) for c in cells) + " |")

    def g(d: dict, *keys: str, fmt: str = "{}") -> str:
        for k in keys:
            if not isinstance(d, dict) or k not in d:
                return "n/a"
            d = d[k]
        return fmt.format(d)

    def run(r: dict) -> str:  # one `ssam merge` process, as `measured` records it
        return f"{g(r, 'wall_s')} s wall, {g(r, 'cpu_s')} s CPU, RSS {g(r, 'peak_rss_mb')} MB (anon {g(r, 'peak_anon_mb')})"

    if "lora" in s:
        for depth, r in s["lora"]["rows"].items():
            add(f"`ssam merge` SSAM 4×r128 → LoRA, {depth} ({g(r, 'merged_weights')} weights, k used {g(r, 'rank_used')})",
                f"{run(r)}; load {g(r, 'load_avg_1min')}", "", "", "≤ 30 s (L32)")
    if "full" in s:
        f = s["full"]
        for depth, r in f["rows"].items():
            add(f"`ssam merge` SSAM 4×r128 → full, base {depth}", run(r), "", "", "peak independent of depth")
        add("  full output, extrapolated to 32 layers", f"{f['extrapolated_32_layers_s']} s wall "
            f"({f['per_layer_s']} s/layer), {g(f, 'extrapolated_32_layers_cpu_s')} s CPU "
            f"({g(f, 'per_layer_cpu_s')} s/layer)", "", "", "")
    if "alg1" in s:
        a = s["alg1"]
        for short, r in a["rows"].items():
            add(f"SSAM vs direct Algorithm 1 (float32 Gram + eigh), {short} {g(r, 'shape')}, k={g(r, 'k')}",
                f"{g(r, 'ssam_s')} s wall ({g(r, 'threads')} threads), {g(r, 'ssam_s_1thread')} s wall and "
                f"{g(r, 'ssam_cpu_s_1thread')} s CPU on 1 thread; load {g(r, 'load_avg_1min')}",
                f"{g(r, 'alg1_s')} s, {g(r, 'peak_rss_mb')} MB (worker)",
                f"{g(r, 'ratio')}× (wall/wall); rel err vs float64: ssam {g(r, 'rel_err_ssam_vs_float64', fmt='{:.1e}')}, "
                f"Alg.1 {g(r, 'rel_err_alg1_vs_float64', fmt='{:.1e}')}", "≥ 300×, ≤ 1e-4")
        add("  Algorithm 1 extrapolated to 32 layers", f"{a['ssam_model_compute_s']} s (wall in worker)",
            f"{a['alg1_model_s']} s", f"{a['alg1_model_s'] / max(a['ssam_model_compute_s'], 1e-9):.0f}×", "")
    if "peft" in s:
        p = s["peft"]
        for short, r in p["rows"].items():
            add(f"PEFT add_weighted_adapter(svd, r128), {short}", "", f"{g(r, 'peft_s')} s",
                f"lossy: rel err vs exact Σw·Δ {g(r, 'rel_err_vs_exact_weighted_sum', fmt='{:.2f}')}", "")
        if "lora" in s and f"L{LAYERS}" in s["lora"]["rows"]:
            ours = s["lora"]["rows"][f"L{LAYERS}"].get("wall_s")
            add("  PEFT extrapolated to 32 layers vs `ssam merge` → LoRA", f"{ours} s", f"{p['peft_model_s']} s",
                f"{p['peft_model_s'] / ours:.0f}×" if ours else "n/a", "")
    if "dense" in s:
        r = s["dense"]["rows"]["down_proj"]
        add(f"dense consensus bases {g(r, 'shape')}, n={g(r, 'n')}, k=128: randomized vs exact eigh (float32 Grams), "
            f"{g(r, 'threads')} thread(s)",
            f"{g(r, 'randomized_s')} s wall, {g(r, 'randomized_cpu_s')} s CPU; load {g(r, 'load_avg_1min')}",
            f"{g(r, 'exact_s')} s wall, {g(r, 'exact_cpu_s')} s CPU",
            f"{g(r, 'ratio')}× wall, {g(r, 'ratio_cpu')}× CPU; energy diff {g(r, 'energy_diff', fmt='{:.1e}')}; "
            f"merged Δ diff {g(r, 'merged_rel_diff', fmt='{:.1e}')}", "≥ 20×, ≤ 1e-3")
    if "mergekit" in s:
        m = s["mergekit"]
        if "skipped" in m:
            add("task arithmetic / TIES vs mergekit 0.1.5", "", "", m["skipped"], "")
        for method, r in m.get("rows", {}).items():
            o, t = r["ssam"], r["mergekit"]
            ratio = f"{t['wall_s'] / o['wall_s']:.1f}× faster" if o.get("wall_s") and t.get("wall_s") else "n/a"
            add(f"{method}, dense 1-layer (vocab 32000), n=4, float32 out",
                f"{o.get('wall_s')} s wall, {o.get('cpu_s')} s CPU, {o.get('peak_rss_mb')} MB",
                f"{t.get('wall_s')} s wall, {t.get('cpu_s')} s CPU, {t.get('peak_rss_mb')} MB" + (" (failed)" if t.get("rc") else ""),
                f"{ratio}; max abs diff {g(r, 'compare', 'max_abs_diff', fmt='{:.1e}')}", "faster, ≤ 1e-6")
    if "help" in s:
        h = s["help"]
        add("`ssam --help` start-up", f"{h['script_min_s']} s (script), {h['python_m_min_s']} s (python -m)", "", "",
            "≤ 0.5 s")
    return "\n".join(rows)


def write_report(s: dict[str, Any]) -> str:
    md = table(s)
    stamps = "\n".join(f"- {name}: measured {d.get('measured_at')}, load average after {d.get('load_avg_after')}"
                       for name, d in s.items())
    info = machine()
    text = f"{md}\n\nMachine: {info}\n\n{stamps}\n"
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "perf.md").write_text(text)
    (OUT / "perf.json").write_text(json.dumps({"machine": info, "sections": s}, indent=2))
    return text


def main(argv: Optional[list[str]] = None) -> None:
    ap = argparse.ArgumentParser(description="SSAM at Vicuna-7B scale vs Algorithm 1, PEFT and mergekit")
    ap.add_argument("--sections", default=",".join(ALL), help=f"comma-separated subset of {','.join(ALL)}")
    ap.add_argument("--table", action="store_true", help="only assemble the table from earlier sections")
    ap.add_argument("--worker", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        print(json.dumps(WORKERS[a.worker[0]](*a.worker[1:])))
        return
    if not a.table:
        for name in a.sections.split(","):
            globals()[f"section_{name.strip()}"]()
    print(write_report(load_sections()))


if __name__ == "__main__":
    main()
