"""Walk the plan one weight at a time: load → merge on the device → cast → write → free.

Memory holds one weight of every specialist (plus the base's), never a whole model. A method that must see
every merged weight first (TIES' global trim) declares a pre-pass, which streams the weights the same way.
"""

from __future__ import annotations

import hashlib
import os
import resource
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from itertools import count
from typing import Any, Callable, Iterable, Iterator, Optional

import torch

from ssam_cli.deltas import Delta, DenseDelta, LowRankDelta
from ssam_cli.errors import UserError
from ssam_cli.inputs import Inputs, base_folder, open_inputs
from ssam_cli.hub.card import read_license, write_model_card
from ssam_cli.manifest import describe_files, write_manifest
from ssam_cli.methods import REGISTRY
from ssam_cli.methods.base import MergeContext, MergeResult, MethodSpec, PrepassState
from ssam_cli.plan import Plan, PlannedTensor, Role, build_plan
from ssam_cli.recipe import Recipe
from ssam_cli.spaces import merge_in_space, produces_lowrank
from ssam_cli.threads import torch_threads
from ssam_cli.writers.atomic import AtomicFolder
from ssam_cli.writers.full import FullCheckpointWriter, copy_side_files
from ssam_cli.writers.lora import LoraAdapterWriter
from ssam_cli.writers.modelcompose import Composition, ModelComposeWriter, check_composition
from ssam_cli.writers.safetensors_stream import StreamingSafetensorsWriter, TensorSpec

COMPUTE = torch.float32
OUT_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


@dataclass
class Prepared:
    """A validated recipe with its inputs opened and its plan made: what validate prints and merge runs."""

    recipe: Recipe
    inputs: Inputs
    plan: Plan
    composition: Optional[Composition] = None  # output.format: modelcompose, checked by check_format

    def out_dtype(self, t: PlannedTensor | TensorSpec) -> torch.dtype:
        wanted = self.recipe.output.dtype
        return t.dtype if wanted == "auto" or not t.dtype.is_floating_point else OUT_DTYPES[wanted]

    def output_specs(self) -> list[TensorSpec]:
        """The tensors the output's weight files will hold (before modality files)."""
        if self.recipe.output.format == "full":
            return [TensorSpec(t.name, t.shape, self.out_dtype(t)) for t in self.plan.tensors]
        return [TensorSpec(t.name, t.shape, self.out_dtype(t)) for t in self.plan.of_role(Role.MERGE)]


def prepare(recipe: Recipe, check_output: bool = True) -> Prepared:
    """Open inputs and plan; every input problem surfaces here, before any tensor is read. `check_output=False`
    skips the output-format checks, for commands that read the inputs but write no merge (inspect-spectrum)."""
    inputs = open_inputs(recipe)
    plan = build_plan(inputs.base, inputs.specialists, recipe.modules.keep, recipe.modules.average)
    prepared = Prepared(recipe, inputs, plan)
    if check_output:
        check_format(prepared)
    return prepared


def check_format(p: Prepared) -> None:
    """A LoRA or ModelCompose output needs every change to be a low-rank merge by a method (in the recipe's space)
    with low-rank output; a ModelCompose output also needs compatible ModelCompose specialists."""
    fmt = p.recipe.output.format
    if fmt == "full":
        return
    where = f"{p.recipe.source_file}: output.format: {fmt}"
    if fmt == "modelcompose":
        try:
            p.composition = check_composition(p.recipe.output_path, p.inputs.specialists)
        except UserError as e:
            raise UserError(f"{where}: {e}") from None
    spec = REGISTRY[p.recipe.method]
    for t in p.plan.tensors:
        if t.role is Role.AVERAGE or any(c.kind == "full" for c in t.contributions):
            who = p.inputs.specialists[t.contributions[0].index].name
            raise UserError(f"{where}: tensor {t.name} is changed in full by specialist '{who}'; a {fmt} output "
                            "holds only low-rank updates of LoRA specialists; use format: full")
        if t.role is Role.MERGE and not produces_lowrank(spec, p.recipe.space, p.recipe.method_params(t.name)):
            raise UserError(f"{where}: method {spec.name} in space {p.recipe.space} does not produce low-rank "
                            f"updates (at {t.name}); use format: full"
                            + (", or space: core" if "core" in spec.spaces else ""))
    if not p.plan.of_role(Role.MERGE):
        raise UserError(f"{where}: no weight to merge")


def pick_device(spec: str) -> torch.device:
    """`auto` is CUDA when there is one, else the CPU; an explicit CUDA request without CUDA is an error."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"device: {spec} requested but this machine has no CUDA device; use device: auto or cpu")
        dev = torch.device(spec)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserError(f"device: {spec} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
        return dev
    return torch.device("cpu")


def tensor_seed(seed: int, name: str) -> int:
    """A per-tensor seed independent of processing order, so reruns and partial plans agree."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "little") & ((1 << 63) - 1)


@dataclass
class Loaded:
    """One planned tensor's inputs as stored on disk (CPU): the base value if needed, and each contribution."""

    tensor: PlannedTensor
    base: Optional[torch.Tensor]
    parts: dict[int, Any]  # specialist index → full tensor or LowRankDelta


def read_inputs(p: Prepared, t: PlannedTensor, need_base: bool) -> Loaded:
    """Read what tensor t needs from disk; safe to run in a background thread (no device work)."""
    need_base = need_base or any(c.kind == "full" for c in t.contributions)
    parts: dict[int, Any] = {}
    for c in t.contributions:
        src = p.inputs.source(c.index)
        parts[c.index] = src.read_lowrank(c.key) if c.kind == "lowrank" else src.read(c.key)
    return Loaded(t, p.inputs.base.read(t.name) if need_base else None, parts)


def to_deltas(loaded: Loaded, n: int, device: torch.device) -> tuple[Optional[torch.Tensor], list[Delta]]:
    """The base value and one delta per specialist, float32 on device (rank-0 zero where a specialist left it)."""
    base = loaded.base.to(device, COMPUTE) if loaded.base is not None else None
    deltas: list[Delta] = []
    shape = loaded.tensor.shape
    for i in range(n):
        part = loaded.parts.get(i)
        if part is None:
            deltas.append(LowRankDelta.zero((shape[0], shape[1]), COMPUTE, device) if len(shape) == 2
                          else DenseDelta(torch.zeros(shape, dtype=COMPUTE, device=device)))
        elif isinstance(part, LowRankDelta):
            deltas.append(part.to(device, COMPUTE))
        else:
            deltas.append(DenseDelta(part.to(device, COMPUTE) - base))
    return base, deltas


def load_deltas(p: Prepared, t: PlannedTensor, device: torch.device) -> list[Delta]:
    """One delta per specialist for tensor t (what inspect-spectrum and tests need, without merging)."""
    return to_deltas(read_inputs(p, t, need_base=False), len(p.inputs.specialists), device)[1]


def ordered_map(fn: Callable[[Any], Any], items: Iterable[Any], workers: int, ahead: int,
                name: str = "ssam") -> Iterator[Any]:
    """fn over items in `workers` background threads (torch releases the GIL), results in the items' order.

    While the caller holds one result, at most `ahead` further calls are submitted or done, which bounds memory to
    ahead + 1 results. With ahead = 0 there is nothing to overlap and fn runs inline.
    """
    if ahead <= 0:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name) as pool:
        pending: deque[Future[Any]] = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) > ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def prefetched(items: list[PlannedTensor], read: Callable[[PlannedTensor], Loaded], depth: int = 2) -> Iterator[Loaded]:
    """Read the next `depth` tensors in a background thread while the current one is merged.

    Memory: at most depth + 1 weights of all specialists in flight.
    """
    return ordered_map(read, items, workers=1, ahead=depth, name="ssam-read")


@dataclass
class RunResult:
    output: Path
    manifest: dict[str, Any]
    counts: dict[str, int] = field(default_factory=dict)


def run_merge(p: Prepared, *, overwrite: bool = False, device: Optional[str] = None,
              show_progress: bool = True, spectrum: Optional[bool] = None, threads: Optional[int] = None) -> RunResult:
    """Merge everything the plan says into an atomic output folder with its manifest and model card.

    `spectrum` adds the spectrum summary (inspect-spectrum's figures) to the manifest; by default only when every
    merged weight is low-rank, where it costs R × R work (dense inputs need an SVD per specialist and weight).
    `threads`: torch's CPU threads; by default one when every merged weight is low-rank (small products and
    decompositions, faster on one thread: ssam_cli/threads.py), torch's own setting otherwise.
    """
    recipe = p.recipe
    dev = pick_device(device or recipe.device)
    atomic = AtomicFolder(recipe.output_path, overwrite)
    atomic.check_target()
    started = time.perf_counter()
    spec = REGISTRY[recipe.method]
    merged_weights = p.plan.of_role(Role.MERGE)
    if spectrum is None:
        spectrum = lowrank_only(p)
    workers = 1 if threads is not None else merge_workers(p, dev)
    if threads is None:
        threads = default_threads(p, dev)
    stats: dict[str, dict[str, Any]] = {}
    spectra: list[Any] = []

    with torch_threads(threads), atomic as folder:
        fmt = recipe.output.format
        writer = _open_writer(p, folder)
        todo = p.plan.tensors if fmt == "full" else merged_weights
        with progress_bar(show_progress) as progress:
            prepass = run_prepass(p, spec, dev, progress)
            task = progress.add_task("merging", total=len(todo)) if progress else None
            read = prefetched(todo, lambda t: read_inputs(p, t, need_base=fmt == "full"))
            compute = partial(_compute, p, dev=dev, spec=spec, prepass=prepass, spectrum=spectrum)
            for done in computed(compute, read, workers):
                if isinstance(done.value, LowRankDelta):
                    writer.add(done.tensor.name, done.value)
                elif done.value is not None:
                    writer.write(done.tensor.name, done.value)
                stats[done.tensor.name] = done.entry
                if done.spectrum is not None:
                    spectra.append(done.spectrum)
                if progress:
                    progress.advance(task)
        files = writer.close()
        if fmt == "modelcompose":
            modalities = writer.result.modalities
        else:
            modalities = _write_kept(p, folder)
            if fmt == "full":
                files += copy_side_files(base_folder(p.inputs), folder)
            _check_output(p, folder, fmt)
        counts = {role.value: p.plan.count(role) for role in Role}
        elapsed = time.perf_counter() - started
        body = {
            "recipe": recipe.as_run(),
            "recipe_file": str(recipe.source_file),
            "recipe_text": recipe.source_text,
            "method": recipe.method,
            "parameters": recipe.method_params().model_dump(mode="json", by_alias=True),
            "space": recipe.space,
            "device": str(dev),
            "threads": torch.get_num_threads(),
            "workers": workers,
            "seed": recipe.seed,
            "output": {"format": fmt, "dtype": recipe.output.dtype, "shard_size": recipe.output.shard_size},
            "inputs": _describe_inputs(p),
            "tensors": stats,
            "modalities": modalities,
            "summary": {"tensors": counts, "seconds": round(elapsed, 3), "peak_rss_mb": peak_rss_mb(),
                        "output_bytes": sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())},
        }
        if fmt == "modelcompose":
            r = writer.result
            body["modelcompose"] = {"lora_r": r.lora_r, "lora_alpha": r.lora_alpha, "notes": r.notes}
        if prepass.record:
            body["prepass"] = prepass.record
        if spectra:
            from ssam_cli.spectrum_report import summary_for_manifest

            body["spectrum"] = summary_for_manifest(spectra)
        manifest = write_manifest(folder, body)
        write_model_card(folder, manifest)
    return RunResult(recipe.output_path, manifest, counts)


def lowrank_only(p: Prepared) -> bool:
    """Every merged weight is changed by LoRA updates only (the cheap, factored case)."""
    return all(c.kind == "lowrank" for t in p.plan.of_role(Role.MERGE) for c in t.contributions)


def merge_workers(p: Prepared, dev: torch.device) -> int:
    """Two weights merged at a time, each on one thread, for LoRA-only work on a CPU with two cores or more
    (its small products gain nothing from two threads per weight); one otherwise."""
    return 2 if dev.type == "cpu" and lowrank_only(p) and (os.cpu_count() or 1) >= 2 else 1


def default_threads(p: Prepared, dev: torch.device) -> Optional[int]:
    """One CPU thread for LoRA-only work (small products; see ssam_cli/threads.py), else torch's own setting."""
    return 1 if dev.type == "cpu" and lowrank_only(p) else None


def _open_writer(p: Prepared, folder: Path) -> Any:
    out = p.recipe.output
    if out.format == "full":
        return FullCheckpointWriter(folder, p.output_specs(), out.shard_size)
    if out.format == "modelcompose":
        assert p.composition is not None, "check_format sets the composition"
        return ModelComposeWriter(folder, p.composition, OUT_DTYPES.get(out.dtype), out.safetensors)
    return LoraAdapterWriter(folder, OUT_DTYPES.get(out.dtype, torch.bfloat16), base_model=p.recipe.as_run()["base"]["path"])


def merge_context(p: Prepared, t: PlannedTensor, n: int, dev: torch.device,
                  prepass: Optional[PrepassState] = None) -> MergeContext:
    """The context of tensor t, with its generator seeded from the recipe seed and its name (as in every pass)."""
    generator = torch.Generator(device=dev).manual_seed(tensor_seed(p.recipe.seed, t.name))
    return MergeContext(t.name, n, dev, generator, prepass)


@dataclass
class PrepassRun:
    """A method's pre-pass result, the weights it covers (whose merges get it) and its manifest record."""

    state: Optional[PrepassState] = None
    weights: set[str] = field(default_factory=set)
    record: dict[str, Any] = field(default_factory=dict)


def run_prepass(p: Prepared, spec: MethodSpec, dev: torch.device, progress: Any) -> PrepassRun:
    """The method's pre-pass over the merged weights that want it (none: an empty PrepassRun).

    Each sweep re-reads those weights from disk and routes them through merge_in_space with `inputs` in place
    of merge, so the pre-pass sees what merge will see in the recipe's space; memory is as for merging.
    """
    if spec.prepass is None:
        return PrepassRun()
    hook = spec.prepass
    todo = [t for t in p.plan.of_role(Role.MERGE) if hook.wanted(p.recipe.method_params(t.name))]
    if not todo:
        return PrepassRun()
    started = time.perf_counter()
    n, weights, passes = len(p.inputs.specialists), [s.weight for s in p.recipe.specialists], count(1)
    seen: list[Any] = []

    def observe(deltas: Any, _weights: Any, params: Any, ctx: MergeContext) -> MergeResult:
        seen.append(hook.inputs(deltas, params, ctx))
        return MergeResult(DenseDelta(torch.zeros(deltas[0].shape, dtype=COMPUTE, device=dev)))

    observer = replace(spec, merge=observe)

    def sweep() -> Iterator[Any]:
        task = progress.add_task(f"pre-pass {next(passes)}", total=len(todo)) if progress else None
        for loaded in prefetched(todo, lambda t: read_inputs(p, t, need_base=False)):
            t = loaded.tensor
            ctx = merge_context(p, t, n, dev)
            merge_in_space(observer, to_deltas(loaded, n, dev)[1], weights, p.recipe.method_params(t.name), ctx,
                           p.recipe.space)
            yield from seen
            seen.clear()
            if progress:
                progress.advance(task)

    state = hook.run([p.recipe.method_params(t.name) for t in todo], sweep)
    record = {**state.manifest(), "specialists": [s.name for s in p.inputs.specialists], "weights": len(todo),
              "seconds": round(time.perf_counter() - started, 3)}
    return PrepassRun(state, {t.name for t in todo}, record)


@dataclass
class Done:
    """One planned tensor computed and ready to write: a tensor (written), a LowRankDelta (added to a LoRA-style
    writer) or None (a rank-0 update: nothing to write); its manifest entry and spectrum figures."""

    tensor: PlannedTensor
    value: Any
    entry: dict[str, Any]
    spectrum: Any = None


def computed(fn: Callable[[Loaded], Any], loaded: Iterator[Loaded], workers: int) -> Iterator[Any]:
    """fn over the loaded weights, `workers` at a time, in plan order (one worker: inline, no thread)."""
    return ordered_map(fn, loaded, workers, ahead=workers - 1, name="ssam-merge")


def _compute(p: Prepared, loaded: Loaded, dev: torch.device, spec: Any, prepass: PrepassRun, spectrum: bool) -> Done:
    """Everything one planned tensor needs before writing; safe in a worker thread (no writer, no shared state)."""
    t, n = loaded.tensor, len(p.inputs.specialists)
    weights = [s.weight for s in p.recipe.specialists]
    t0 = time.perf_counter()
    entry: dict[str, Any] = {"role": t.role.value, "shape": list(t.shape),
                             "specialists": [p.inputs.specialists[c.index].name for c in t.contributions]}
    analysis = None
    if t.role is Role.COPY:
        value: Any = loaded.base.to(p.out_dtype(t))  # the base's own value
    elif t.role is Role.AVERAGE:
        base, deltas = to_deltas(loaded, n, dev)
        mean = base + sum(d.dense() * (w / sum(weights)) for d, w in zip(deltas, weights))
        value = _finite(t.name, mean).to("cpu", p.out_dtype(t))
    else:
        base, deltas = to_deltas(loaded, n, dev)
        state = prepass.state if t.name in prepass.weights else None
        params = p.recipe.method_params(t.name)
        value, figures, bases = _merge_one(p, t, dev, base, deltas, weights, spec, params, state)
        entry.update(figures)
        if spectrum:
            analysis = _analyse(p, t, deltas, weights, params, bases)
    entry["seconds"] = round(time.perf_counter() - t0, 4)
    return Done(t, value, entry, analysis)


def _merge_one(p: Prepared, t: PlannedTensor, dev: torch.device, base_value: Optional[torch.Tensor],
               deltas: list[Delta], weights: list[float], spec: Any, params: Any,
               prepass: Optional[PrepassState] = None) -> tuple[Any, dict[str, Any], Any]:
    """Merge one weight: the value to write (full: W_0 + Δ in the output dtype; else the LowRankDelta, None at
    rank 0), its manifest figures, and the method's consensus bases if it made any."""
    ctx = merge_context(p, t, len(deltas), dev, prepass)
    result = merge_in_space(spec, deltas, weights, params, ctx, p.recipe.space)
    value: Any = None
    if p.recipe.output.format == "full":
        value = _finite(t.name, base_value + result.delta.dense()).to("cpu", p.out_dtype(t))
    else:
        if not isinstance(result.delta, LowRankDelta):
            raise UserError(f"{t.name}: method {spec.name} returned a dense update; use output.format: full")
        if result.delta.rank:
            _finite(t.name, result.delta.B)
            _finite(t.name, result.delta.A)
            value = result.delta
    figures = {"parameters": params.model_dump(mode="json", by_alias=True, exclude_none=True), **result.stats}
    return value, figures, result.bases


def _analyse(p: Prepared, t: PlannedTensor, deltas: list[Delta], weights: list[float], params: Any, bases: Any) -> Any:
    """inspect-spectrum's figures for one merged weight, at the k the method uses there (the paper's 128 if none),
    reusing the method's own consensus bases (SSAM's, at that same k) when it made them."""
    from ssam_cli.spectrum_report import analyse_weight, k_of_params

    return analyse_weight(t.name, deltas, weights, k_of_params(params),
                          [s.name for s in p.recipe.specialists], bases=bases)


def _finite(name: str, tensor: torch.Tensor) -> torch.Tensor:
    if tensor.dtype.is_floating_point and not bool(torch.isfinite(tensor).all()):
        raise UserError(f"{name}: the merged tensor has non-finite values (inf/nan); check the inputs and λ")
    return tensor


def _write_kept(p: Prepared, folder: Path) -> dict[str, Any]:
    """Each specialist's modality-specific tensors, untouched, in modalities/<name>.safetensors."""
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


def _check_output(p: Prepared, folder: Path, fmt: str) -> None:
    """The output holds every tensor the plan promised, with the planned shape — or the merge fails."""
    from safetensors import safe_open

    if fmt == "full":
        expected = {s.name: s.shape for s in p.output_specs()}
        files = sorted(folder.glob("model*.safetensors"))
    else:
        expected = None
        files = [folder / "adapter_model.safetensors"]
    found: dict[str, tuple[int, ...]] = {}
    for f in files:
        with safe_open(str(f), framework="pt") as h:
            for k in h.keys():
                found[k] = tuple(h.get_slice(k).get_shape())
    if expected is not None and found != expected:
        missing = sorted(set(expected) - set(found))
        raise RuntimeError(f"output incomplete: {len(missing)} planned tensor(s) missing, e.g. {missing[:3]}")
    if expected is None and not found:
        raise RuntimeError("output incomplete: the adapter holds no tensors")


def _describe_inputs(p: Prepared) -> list[dict[str, Any]]:
    """Every input with the sha256 of the files the merge read (the base's weights are not read for LoRA output),
    and for a Hub input its repo id and the exact commit; the base's license when its card states one."""
    hash_base = p.recipe.output.format == "full"
    rows = [{"role": "base", "name": "base", "path": str(p.inputs.base.path), "revision": p.recipe.base.revision,
             **_origin(p, "base"), "license": read_license(base_folder(p.inputs)), **p.inputs.base.describe(),
             "files": describe_files(p.inputs.base.files(), base_folder(p.inputs)) if hash_base else []}]
    for named, s in zip(p.inputs.specialists, p.recipe.specialists):
        root = named.source.path if named.source.path.is_dir() else named.source.path.parent
        rows.append({"role": "specialist", "name": named.name, "path": str(named.source.path), "revision": s.revision,
                     **_origin(p, named.name), "modality": s.modality, "weight": s.weight,
                     **named.source.describe(), "files": describe_files(named.source.files(), root)})
    return rows


def _origin(p: Prepared, name: str) -> dict[str, Any]:
    origin = p.inputs.origins[name]
    return {"repo_id": origin.repo_id, "commit": origin.commit}


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def progress_bar(show: bool) -> Any:
    """A rich progress bar on stderr, or None (quiet): the one progress display of every long command."""
    if not show:
        return nullcontext(None)
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), console=Console(stderr=True), transient=False)
