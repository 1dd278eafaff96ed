"""`ssam inspect-spectrum`: the spectra of the specialists' updates, to choose k (and see interference) before a merge.

Reuses recipe, sources and plan, and stops before the method: each merged weight is read once (one weight of
every specialist in memory), analysed exactly (factored for LoRA inputs), and dropped.
"""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

import typer

from ssam_cli.commands.render import console

if TYPE_CHECKING:
    from ssam_cli.engine import Prepared
    from ssam_cli.plan import PlannedTensor
    from ssam_cli.spectrum_report import SpectrumReport

_LAYER_ITEM = re.compile(r"^(\d+-\d+|[0-9*?\[\]]+)$")


def inspect_spectrum(
    recipe: Path = typer.Argument(..., help="The YAML recipe (see docs/recipe.md).", show_default=False),
    layers: Optional[str] = typer.Option(None, "--layers", help="Layers to inspect: comma-separated indices, "
                                         "ranges or globs, e.g. '0-3,31' or '1*'."),
    modules: Optional[str] = typer.Option(None, "--modules", help="Comma-separated globs over the module type "
                                          "(q, k, v, o, gate, up, down), its path in the block or the tensor name, "
                                          "e.g. 'q,v' or '*mlp*'."),
    per_layer: bool = typer.Option(False, "--per-layer", help="One table row per layer and module type."),
    json: Optional[Path] = typer.Option(None, "--json", help="Write every figure, per weight, with the "
                                        "singular values, to this JSON file."),
    csv: Optional[Path] = typer.Option(None, "--csv", help="Write one row of figures per weight to this CSV file."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write PNG figures into this folder (needs "
                                        "matplotlib: pip install 'ssam\\[plot]')."),
    rank: Optional[int] = typer.Option(None, "--rank", "-k", help="k to evaluate, instead of the recipe's "
                                       "parameters.rank (and its overrides)."),
    target: float = typer.Option(0.95, "--target", help="Energy share the suggested k must keep."),
    device: Optional[str] = typer.Option(None, "--device", help="Override the recipe's device: auto, cpu, cuda, cuda:N."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar and no table (files only)."),
) -> None:
    """Show the singular spectra of the specialists' updates for every weight RECIPE would merge.

    Per module type: the energy SSAM keeps at k, the smallest k keeping 90/95/99 %, how much the specialists'
    subspaces overlap, the share of each specialist's update that survives the projection, and a suggested k
    with its rule. Nothing is merged or written except the files asked for. Example:

        ssam inspect-spectrum recipes/examples/lora-specialists.yaml --plot spectrum/
    """
    from ssam_cli.engine import prepare
    from ssam_cli.errors import UserError
    from ssam_cli.recipe import load_recipe
    from ssam_cli.spectrum_render import require_matplotlib, spectrum_table, write_csv, write_json, write_plots

    if not 0.0 < target < 1.0:
        raise UserError(f"--target: must be an energy share between 0 and 1 (exclusive), got {target}")
    if rank is not None and rank <= 0:
        raise UserError(f"--rank: must be a positive integer, got {rank}")
    if plot is not None:
        require_matplotlib()  # fail before the work, not after it
    r = load_recipe(recipe)
    report = build_report(prepare(r, check_output=False), layer_filter(layers), module_filter(modules), rank, target,
                          device, show_progress=not quiet)
    if json is not None:
        write_json(report, json)
    if csv is not None:
        write_csv(report, csv)
    written = write_plots(report, plot) if plot is not None else []
    if not quiet:
        console().print(spectrum_table(report, per_layer))
        for path in [p for p in (json, csv) if p is not None] + written:
            console().print(f"wrote {path}")


def layer_filter(spec: Optional[str]) -> Optional[Callable[[int], bool]]:
    """'0-3,31,1*' → a predicate on the layer index; None: every layer."""
    from ssam_cli.errors import UserError

    if spec is None:
        return None
    items = [s.strip() for s in spec.split(",") if s.strip()]
    if not items or any(not _LAYER_ITEM.match(s) for s in items):
        raise UserError(f"--layers: must be comma-separated layer indices, ranges (0-3) or globs (1*), got {spec!r}")

    def keep(layer: int) -> bool:
        for s in items:
            if "-" in s:
                lo, hi = (int(x) for x in s.split("-"))
                if lo <= layer <= hi:
                    return True
            elif layer >= 0 and fnmatch.fnmatchcase(str(layer), s):
                return True
        return False

    return keep


def module_filter(spec: Optional[str]) -> Optional[Callable[[str], bool]]:
    """'q,v,*mlp*' → a predicate on a tensor name: a glob matches its module type (q), its path in the block
    (self_attn.q_proj) or its whole name."""
    from ssam_cli.errors import UserError
    from ssam_cli.spectrum_report import module_path, module_type

    if spec is None:
        return None
    globs = [s.strip() for s in spec.split(",") if s.strip()]
    if not globs:
        raise UserError(f"--modules: must be comma-separated globs, got {spec!r}")
    return lambda name: any(fnmatch.fnmatchcase(n, g) for g in globs
                            for n in (module_type(name), module_path(name), name))


def selected(p: "Prepared", layers: Optional[Callable[[int], bool]],
             modules: Optional[Callable[[str], bool]]) -> list["PlannedTensor"]:
    """The weights the merge would merge, narrowed by the filters (in plan order)."""
    from ssam_cli.plan import Role, layer_of

    return [t for t in p.plan.of_role(Role.MERGE)
            if (layers is None or layers(layer_of(t.name))) and (modules is None or modules(t.name))]


def build_report(p: "Prepared", layers: Optional[Callable[[int], bool]] = None,
                 modules: Optional[Callable[[str], bool]] = None, rank: Optional[int] = None,
                 target: float = 0.95, device: Optional[str] = None, show_progress: bool = False) -> "SpectrumReport":
    """Read each selected weight's deltas (streaming, the engine's reader) and analyse it at the recipe's k."""
    from ssam_cli.engine import (computed, default_threads, merge_workers, pick_device, prefetched, progress_bar,
                                 read_inputs, to_deltas)
    from ssam_cli.errors import UserError
    from ssam_cli.plan import Role
    from ssam_cli.spectrum_report import DEFAULT_K, SpectrumReport, analyse_weight
    from ssam_cli.threads import torch_threads

    todo = selected(p, layers, modules)
    total = p.plan.count(Role.MERGE)
    if not todo:
        raise UserError(f"{p.recipe.source_file}: no weight to inspect: the filters match none of the {total} "
                        "weight(s) the recipe merges")
    dev = pick_device(device or p.recipe.device)
    names = [s.name for s in p.recipe.specialists]
    weights = [s.weight for s in p.recipe.specialists]
    report = SpectrumReport([], target)
    if rank is None and not hasattr(p.recipe.method_params(), "rank"):
        report.notes.append(f"method {p.recipe.method} has no rank parameter: k = {DEFAULT_K} (the paper's); "
                            "set --rank to evaluate another k")

    def analyse(loaded: Any) -> Any:  # one weight; safe in a worker thread, like the merge's
        t = loaded.tensor
        _, deltas = to_deltas(loaded, len(names), dev)
        return analyse_weight(t.name, deltas, weights, k_of(p, t.name, rank), names, report.shares)

    with torch_threads(default_threads(p, dev)), progress_bar(show_progress) as progress:
        task = progress.add_task("spectra", total=len(todo)) if progress else None
        read = prefetched(todo, lambda t: read_inputs(p, t, need_base=False))
        for figures in computed(analyse, read, merge_workers(p, dev)):
            report.weights.append(figures)
            if progress:
                progress.advance(task)
    capped = sum(w.k_used < w.k_requested for w in report.weights)
    if capped:
        report.notes.append(f"{capped} weight(s) have a numerical rank below k: SSAM caps k there (k used)")
    return report


def k_of(p: "Prepared", name: str, rank: Optional[int]) -> int:
    """--rank, else the recipe's `rank` for this tensor (overrides applied), else the paper's 128."""
    from ssam_cli.spectrum_report import k_of_params

    return rank if rank is not None else k_of_params(p.recipe.method_params(name))

