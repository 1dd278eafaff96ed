"""Run the plan through the stream into an output format: load → method (in its space) → value → format.

Memory holds a few weights of every specialist (plus the base's), never a whole model. A method that must see
every merged weight first (TIES' global trim) declares a pre-pass, which streams the weights the same way.
The engine knows no output format: each format (ssam_cli/outputs/) says what it needs and how it writes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from itertools import count
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import torch

from ssam_cli.deltas import DenseDelta
from ssam_cli.device import pick_device
from ssam_cli.dtypes import COMPUTE
from ssam_cli.errors import RecipeError, UserError
from ssam_cli.finite import merged_finite
from ssam_cli.inputs import Inputs, open_inputs
from ssam_cli.manifest import Manifest
from ssam_cli.methods import REGISTRY
from ssam_cli.methods.base import MergeContext, MergeResult, MethodSpec, PrepassState
from ssam_cli.outputs import FORMATS
from ssam_cli.outputs.base import OutputFormat
from ssam_cli.plan import Plan, PlannedTensor, Role, build_plan
from ssam_cli.provenance import hash_inputs_in_background, manifest_of
from ssam_cli.recipe import Recipe
from ssam_cli.seeds import tensor_seed
from ssam_cli.spaces import merge_in_space
from ssam_cli.stream import Loaded, Schedule, lowrank_only, progress_bar, read_inputs, schedule, stream, to_deltas
from ssam_cli.threads import torch_threads
from ssam_cli.writers.atomic import AtomicFolder, check_no_overlap


@dataclass
class Prepared:
    """A validated recipe with its inputs opened, its plan made and its output format checked."""

    recipe: Recipe
    inputs: Inputs
    plan: Plan
    method: MethodSpec
    output: OutputFormat = field(init=False)


def prepare(recipe: Recipe, check_output: bool = True) -> Prepared:
    """Open inputs and plan; every input problem surfaces here, before any tensor is read. `check_output=False`
    skips the output format's checks, for commands that read the inputs but write no merge (inspect-spectrum)."""
    inputs = open_inputs(recipe)
    if check_output:  # replacing the output must never delete an input or the recipe: refuse any overlap
        sources = [inputs.base, *(s.source for s in inputs.specialists)]
        try:
            check_no_overlap(recipe.output_path, [recipe.source_file, *(s.path for s in sources),
                                                  *(f for s in sources for f in s.files())])
        except UserError as e:
            raise RecipeError(str(recipe.source_file), "output.path", str(e)) from None
    plan = build_plan(inputs.base, inputs.specialists, recipe.modules.keep, recipe.modules.average,
                      params_of=recipe.method_params, space=recipe.space)
    prepared = Prepared(recipe, inputs, plan, REGISTRY[recipe.method])
    prepared.output = FORMATS[recipe.output.format](prepared)
    if check_output:
        prepared.output.check()
    return prepared


@dataclass
class RunResult:
    output: Path
    manifest: Manifest
    counts: dict[str, int] = field(default_factory=dict)


Finisher = Callable[[Path, Manifest], None]  # writes a file into the finished folder before it is renamed


def run_merge(p: Prepared, *, overwrite: bool = False, device: Optional[str] = None, show_progress: bool = True,
              spectrum: Optional[bool] = None, threads: Optional[int] = None,
              finishers: Sequence[Finisher] = ()) -> RunResult:
    """Merge everything the plan says into an atomic output folder with its manifest (and `finishers`' files).

    `spectrum` adds the spectrum summary (inspect-spectrum's figures) to the manifest; by default only when every
    merged weight is low-rank, where it costs R × R work (dense inputs need an SVD per specialist and weight).
    `threads`: torch's CPU threads (see stream.schedule for the default).
    """
    started = time.perf_counter()
    plan = schedule(p.plan, pick_device(device or p.recipe.device), threads)
    spectrum = lowrank_only(p.plan) if spectrum is None else spectrum
    stats: dict[str, dict[str, Any]] = {}
    spectra: list[Any] = []
    fmt = p.output
    # Entering the atomic folder checks the target and takes its lock, released on every way out.
    with torch_threads(plan.threads), AtomicFolder(p.recipe.output_path, overwrite) as folder:
        hash_inputs_in_background(p)  # the manifest's input hashes, read while the merge runs (target checked)
        fmt.open(folder)
        with progress_bar(show_progress) as progress:
            prepass = run_prepass(p, plan.device, progress)
            read = lambda t: read_inputs(p.inputs, t, need_base=fmt.reads_base_weights)  # noqa: E731
            work = lambda loaded: compute(p, loaded, plan.device, prepass, spectrum)  # noqa: E731
            for done in stream(fmt.streamed(), read, work, plan.workers, progress, devices=plan.devices):
                fmt.take(done.tensor, done.value)
                stats[done.tensor.name] = done.entry
                if done.spectrum is not None:
                    spectra.append(done.spectrum)
        finished = fmt.finish()
        fmt.verify()
        manifest = manifest_of(p, plan, folder, stats, finished, prepass.record, spectra,
                               seconds=time.perf_counter() - started).write(folder)
        for finish in finishers:
            finish(folder, manifest)
    return RunResult(p.recipe.output_path, manifest, {role.value: p.plan.count(role) for role in Role})


def merge_context(p: Prepared, t: PlannedTensor, dev: torch.device,
                  prepass: Optional[PrepassState] = None) -> MergeContext:
    """The context of tensor t, with its generator seeded from the recipe seed and its name (as in every pass)."""
    generator = torch.Generator(device=dev).manual_seed(tensor_seed(p.recipe.seed, t.name))
    return MergeContext(t.name, len(p.inputs.specialists), dev, generator, prepass)


@dataclass
class PrepassRun:
    """A method's pre-pass result, the weights it covers (whose merges get it) and its manifest record."""

    state: Optional[PrepassState] = None
    weights: set[str] = field(default_factory=set)
    record: dict[str, Any] = field(default_factory=dict)


def run_prepass(p: Prepared, dev: torch.device, progress: Any) -> PrepassRun:
    """The method's pre-pass over the merged weights that want it (none: an empty PrepassRun).

    Each sweep re-reads those weights from disk and routes them through merge_in_space with `inputs` in place
    of merge, so the pre-pass sees what merge will see in the recipe's space; memory is as for merging.
    """
    hook = p.method.prepass
    todo = [t for t in p.plan.of_role(Role.MERGE) if hook is not None and hook.wanted(t.params)]
    if hook is None or not todo:
        return PrepassRun()
    started = time.perf_counter()
    n, weights, passes = len(p.inputs.specialists), p.recipe.weights, count(1)
    seen: list[Any] = []

    def observe(deltas: Any, _weights: Any, params: Any, ctx: MergeContext) -> MergeResult:
        seen.append(hook.inputs(deltas, params, ctx))
        return MergeResult(DenseDelta(torch.zeros(deltas[0].shape, dtype=COMPUTE, device=dev)))

    observer = replace(p.method, merge=observe)

    def look(loaded: Loaded) -> list[Any]:
        t = loaded.tensor
        merge_in_space(observer, to_deltas(loaded, n, dev)[1], weights, t.params, merge_context(p, t, dev), t.space)
        found = list(seen)
        seen.clear()
        return found

    def sweep() -> Iterator[Any]:
        read = lambda t: read_inputs(p.inputs, t, need_base=False)  # noqa: E731
        for found in stream(todo, read, look, 1, progress, f"pre-pass {next(passes)}"):
            yield from found

    state = hook.run([t.params for t in todo], sweep)
    record = {**state.manifest(), "specialists": [s.name for s in p.inputs.specialists], "weights": len(todo),
              "seconds": round(time.perf_counter() - started, 3)}
    return PrepassRun(state, {t.name for t in todo}, record)


@dataclass
class Done:
    """One planned tensor computed and ready for the output format: its value, manifest entry and spectrum."""

    tensor: PlannedTensor
    value: Any
    entry: dict[str, Any]
    spectrum: Any = None


def compute(p: Prepared, loaded: Loaded, dev: torch.device, prepass: PrepassRun, spectrum: bool) -> Done:
    """Everything one planned tensor needs before writing; safe in a worker thread (no writer, no shared state)."""
    t, n, fmt = loaded.tensor, len(p.inputs.specialists), p.output
    weights = p.recipe.weights
    t0 = time.perf_counter()
    entry: dict[str, Any] = {"role": t.role.value, "shape": list(t.shape),
                             "specialists": [p.inputs.specialists[c.index].name for c in t.contributions]}
    analysis = None
    if t.role is Role.COPY:
        assert loaded.base is not None
        for index, part in loaded.parts.items():  # an integer tensor a full specialist carries: left alone?
            if not torch.equal(part, loaded.base):
                raise UserError(f"specialist '{p.inputs.specialists[index].name}': tensor {t.name} is an integer "
                                f"tensor ({t.dtype}) it changed; integer tensors are never merged, only copied "
                                "from the base when every specialist leaves them unchanged")
        value: Any = loaded.base.to(fmt.out_dtype(t))  # the base's own value
    elif t.role is Role.AVERAGE and not t.in_base:  # a shared tensor: the weighted mean of its holders
        held = [(loaded.parts[c.index].to(dev, COMPUTE), weights[c.index]) for c in t.contributions]
        mean = sum(x * w for x, w in held) / sum(w for _, w in held)
        value = merged_finite(t.name, mean).to("cpu", fmt.out_dtype(t))
    elif t.role is Role.AVERAGE:
        base, deltas = to_deltas(loaded, n, dev)
        mean = base + sum(d.dense() * (w / sum(weights)) for d, w in zip(deltas, weights))
        value = merged_finite(t.name, mean).to("cpu", fmt.out_dtype(t))
    else:
        base, deltas = to_deltas(loaded, n, dev, writable_base=True)  # materialize may add into it
        state = prepass.state if t.name in prepass.weights else None
        result = merge_in_space(p.method, deltas, weights, t.params, merge_context(p, t, dev, state), t.space)
        value = fmt.materialize(t, base, result.delta)
        entry.update({"parameters": t.params.model_dump(mode="json", by_alias=True, exclude_none=True),
                      **result.stats})
        if spectrum:
            analysis = analyse(p, t, deltas, result.bases)
    entry["seconds"] = round(time.perf_counter() - t0, 4)
    return Done(t, value, entry, analysis)


def analyse(p: Prepared, t: PlannedTensor, deltas: list[Any], bases: Any) -> Any:
    """inspect-spectrum's figures for one merged weight, at the k the method uses there (the paper's 128 if none),
    reusing the method's own consensus bases (SSAM's, at that same k) when it made them."""
    from ssam_cli.spectrum_report import analyse_weight, k_of_params

    return analyse_weight(t.name, deltas, p.recipe.weights, k_of_params(t.params),
                          [s.name for s in p.recipe.specialists], bases=bases)
