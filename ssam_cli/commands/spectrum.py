"""`ssam inspect-spectrum`: the spectra of the specialists' updates, to choose k (and see interference) before a merge.

Parses the options and renders; the pass itself is ssam_cli/spectrum_scan.py (the merge's own stream).
"""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path
from typing import Callable, Optional

import typer


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
    from ssam_cli import api
    from ssam_cli.errors import UserError
    from ssam_cli.spectrum_render import require_matplotlib, spectrum_table, write_csv, write_json, write_plots

    if not 0.0 < target < 1.0:
        raise UserError(f"--target: must be an energy share between 0 and 1 (exclusive), got {target}")
    if rank is not None and rank <= 0:
        raise UserError(f"--rank: must be a positive integer, got {rank}")
    if plot is not None:
        require_matplotlib()  # fail before the work, not after it
    report = api.inspect_spectrum(recipe, rank=rank, target=target, device=device, show_progress=not quiet,
                                  layers=layer_filter(layers), modules=module_filter(modules))
    if json is not None:
        write_json(report, json)
    if csv is not None:
        write_csv(report, csv)
    written = write_plots(report, plot) if plot is not None else []
    if not quiet:
        from ssam_cli.commands.render import console

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
