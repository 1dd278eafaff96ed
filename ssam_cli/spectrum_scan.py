"""inspect-spectrum's pass over a recipe: the merge's own stream, stopped before the method.

Each selected weight is read once (one weight of every specialist in memory), analysed exactly (factored for
LoRA inputs) at the recipe's k for that tensor, and dropped.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Optional

from ssam_cli.device import pick_device
from ssam_cli.errors import UserError
from ssam_cli.plan import PlannedTensor, Role, layer_of
from ssam_cli.spectrum_report import DEFAULT_K, SpectrumReport, analyse_weight, k_of_params
from ssam_cli.stream import Loaded, progress_bar, read_inputs, schedule, stream, to_deltas
from ssam_cli.threads import torch_threads

if TYPE_CHECKING:
    from ssam_cli.engine import Prepared


def selected(p: "Prepared", layers: Optional[Callable[[int], bool]],
             modules: Optional[Callable[[str], bool]]) -> list[PlannedTensor]:
    """The weights the merge would merge, narrowed by the filters (in plan order)."""
    return [t for t in p.plan.of_role(Role.MERGE)
            if (layers is None or layers(layer_of(t.name))) and (modules is None or modules(t.name))]


def scan(p: "Prepared", layers: Optional[Callable[[int], bool]] = None,
         modules: Optional[Callable[[str], bool]] = None, rank: Optional[int] = None, target: float = 0.95,
         show_progress: bool = False) -> SpectrumReport:
    """Read each selected weight's deltas through the merge's stream and analyse it at k: `rank`, else the
    planned method parameters' rank for that tensor (overrides applied), else the paper's 128."""
    todo = selected(p, layers, modules)
    if not todo:
        raise UserError(f"{p.recipe.source_file}: no weight to inspect: the filters match none of the "
                        f"{p.plan.count(Role.MERGE)} weight(s) the recipe merges")
    plan = schedule(p.plan, pick_device(p.recipe.device))
    names, weights = [s.name for s in p.recipe.specialists], p.recipe.weights
    report = SpectrumReport([], target)
    if rank is None and not hasattr(todo[0].params, "rank"):
        report.notes.append(f"method {p.recipe.method} has no rank parameter: k = {DEFAULT_K} (the paper's); "
                            "set --rank to evaluate another k")

    def analyse(loaded: Loaded) -> Any:  # one weight; safe in a worker thread, like the merge's
        t = loaded.tensor
        _, deltas = to_deltas(loaded, len(names), plan.device)
        return analyse_weight(t.name, deltas, weights, rank or k_of_params(t.params), names, report.shares)

    with torch_threads(plan.threads), progress_bar(show_progress) as progress:
        read = lambda t: read_inputs(p.inputs, t, need_base=False)  # noqa: E731
        report.weights.extend(stream(todo, read, analyse, plan.workers, progress, "spectra", devices=plan.devices))
    capped = sum(w.k_used < w.k_requested for w in report.weights)
    if capped:
        report.notes.append(f"{capped} weight(s) have a numerical rank below k: SSAM caps k there (k used)")
    return report
