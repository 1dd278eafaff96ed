"""The Python API: what the commands run, for scripts, benchmarks and the lab (no internals needed).

    from ssam_cli import api
    result = api.merge("recipe.yaml", overwrite=True)      # the output folder and its Manifest
    prepared = api.validate("recipe.yaml")                 # inputs opened, plan made, output checked; nothing read
    report = api.inspect_spectrum("recipe.yaml")           # inspect-spectrum's figures
    merged = api.merge_deltas("ssam", [delta_1, delta_2], {"rank": 128})   # one weight, in memory

Deltas are `DenseDelta(W_i − W_0)` or `LowRankDelta(B, A, scale)` (re-exported here).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence, Union

from ssam_cli.deltas import DenseDelta, LowRankDelta

if TYPE_CHECKING:
    from ssam_cli.deltas import Delta
    from ssam_cli.engine import Prepared, RunResult
    from ssam_cli.methods.base import MergeResult
    from ssam_cli.recipe import Recipe
    from ssam_cli.spectrum_report import SpectrumReport

__all__ = ["DenseDelta", "LowRankDelta", "merge", "validate", "inspect_spectrum", "merge_deltas", "load"]

RecipeLike = Union[str, Path, "Recipe"]


def load(recipe: RecipeLike, device: Optional[str] = None) -> "Recipe":
    """A validated Recipe from a YAML path (or a Recipe as is); `device` overrides the recipe's."""
    from ssam_cli.recipe import Recipe, load_recipe

    r = recipe if isinstance(recipe, Recipe) else load_recipe(Path(recipe))
    if device is not None:
        from ssam_cli.device import check_device
        from ssam_cli.errors import UserError

        try:
            check_device(device)
        except ValueError as e:
            raise UserError(f"--device: {e}") from None
        r = r.model_copy(update={"device": device})
    return r


def validate(recipe: RecipeLike, check_output: bool = True) -> "Prepared":
    """Open the inputs (headers only), make the plan and check the output format: what `ssam validate` prints."""
    from ssam_cli.engine import prepare

    return prepare(load(recipe), check_output)


def merge(recipe: RecipeLike, *, overwrite: bool = False, device: Optional[str] = None, show_progress: bool = False,
          spectrum: Optional[bool] = None, threads: Optional[int] = None, card: bool = True) -> "RunResult":
    """Run the merge a recipe describes into its output folder (atomically), with manifest.json and, unless
    card=False, the model card README.md."""
    from ssam_cli.engine import prepare, run_merge

    finishers: list[Callable[[Path, Any], None]] = []
    if card:
        from ssam_cli.hub.card import write_model_card

        finishers.append(lambda folder, manifest: write_model_card(folder, manifest.as_json()))
    return run_merge(prepare(load(recipe, device)), overwrite=overwrite, show_progress=show_progress,
                     spectrum=spectrum, threads=threads, finishers=finishers)


def inspect_spectrum(recipe: RecipeLike, *, rank: Optional[int] = None, target: float = 0.95,
                     device: Optional[str] = None, show_progress: bool = False,
                     layers: Optional[Callable[[int], bool]] = None,
                     modules: Optional[Callable[[str], bool]] = None) -> "SpectrumReport":
    """The singular spectra of the updates of every weight the recipe merges (see docs/spectrum.md)."""
    from ssam_cli.engine import prepare
    from ssam_cli.spectrum_scan import scan

    return scan(prepare(load(recipe, device), check_output=False), layers, modules, rank, target, show_progress)


def merge_deltas(method: str, deltas: Sequence["Delta"], parameters: Optional[dict[str, Any]] = None,
                 weights: Optional[Sequence[float]] = None, *, name: str = "weight", seed: int = 0,
                 space: str = "dense", device: str = "cpu") -> "MergeResult":
    """Merge one weight's updates in memory with a registered method, exactly as a merge would (same parameter
    validation, merge space and per-tensor seed)."""
    import torch

    from ssam_cli.methods import REGISTRY
    from ssam_cli.methods.base import MergeContext
    from ssam_cli.seeds import tensor_seed
    from ssam_cli.spaces import merge_in_space

    spec = REGISTRY[method]
    params = spec.params.model_validate(parameters or {})
    dev = torch.device(device)
    ctx = MergeContext(name, len(deltas), dev, torch.Generator(device=dev).manual_seed(tensor_seed(seed, name)))
    return merge_in_space(spec, list(deltas), list(weights or [1.0] * len(deltas)), params, ctx, space)  # type: ignore[arg-type]
