"""The contract every merge method fulfils, so the engine, the CLI and the docs treat them alike."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Callable, ClassVar, Iterator, Literal, Optional, Protocol, Sequence, Union, get_args

import torch
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from ssam_cli.deltas import Delta
from ssam_cli.recipe import Space


def _positive_int(v: int) -> int:
    if v <= 0:
        raise ValueError(f"must be a positive integer, got {v}")
    return v


PositiveRank = Annotated[int, AfterValidator(_positive_int)]


class MethodParams(BaseModel):
    """Base of every method's parameter model: unknown keys are an error, `lambda` is spelled as in papers."""

    # strict: a YAML `true` is no rank and `"4"` no number; allow_inf_nan=False: `.nan` or `.inf` is no λ.
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True, strict=True, allow_inf_nan=False)


class ScaledParams(MethodParams):
    """Parameters of a method whose paper scales the merged vector by λ (None: the method's default, 1 — a sum —
    or 1/n — a mean — where `mean_by_default` says so, as SSAM's paper does)."""

    mean_by_default: ClassVar[bool] = False
    lam: Optional[float] = Field(default=None, alias="lambda", description="scale of the merged vector")


AUTO = "auto"


class AutoScaledParams(ScaledParams):
    """A scaled method that also takes `lambda: auto`, the data-free rule of auto_lambda (docs/methods.md)."""

    lam: Optional[Union[float, Literal["auto"]]] = Field(
        default=None, alias="lambda",
        description="scale of the merged vector, or auto: min(1, ‖ΣΔ_i‖ / (n‖ΣPΔ_i‖)) per weight (the mean's norm)")


@dataclass
class MergeContext:
    """What a method may need beyond the deltas: where it runs and how to draw reproducible randomness."""

    name: str
    n_specialists: int
    device: torch.device
    generator: Optional[torch.Generator] = None
    prepass: Optional["PrepassState"] = None  # the method's pre-pass result, at the weights that took part


@dataclass
class MergeResult:
    """The merged update Δ (added to W_0 by the engine) and figures for the manifest."""

    delta: Delta
    stats: dict[str, Any] = field(default_factory=dict)
    # SSAM's consensus bases of the weighted inputs, handed on so the merge's spectrum summary need not
    # recompute them (never serialised).
    bases: Any = field(default=None, repr=False, compare=False)


MergeFn = Callable[[Sequence[Delta], Sequence[float], Any, MergeContext], MergeResult]
Sweep = Callable[[], Iterator[Sequence[torch.Tensor]]]


class PrepassState(Protocol):
    """What a pre-pass hands to merge (as ctx.prepass); `manifest()` is its record in manifest.json."""

    def manifest(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Prepass:
    """A look at every merged weight before any is merged, for a method whose merge of one weight depends on all
    of them (TIES' global trim). The engine streams weights one at a time, so the method states what it needs:

    - `wanted(params)`: whether a weight with these parameters takes part (none does: no pre-pass is run);
    - `inputs(deltas, params, ctx)`: the tensors, one per specialist, that merge would look at for that weight
      (the engine calls it where it would call merge, so it sees the recipe's space);
    - `run(params, sweep)`: the parameters of the weights taking part, and `sweep()`, which streams those tensors
      weight by weight from disk again on each call; it returns the state merge then finds in ctx.prepass.
    """

    wanted: Callable[[Any], bool]
    inputs: Callable[[Sequence[Delta], Any, MergeContext], Sequence[torch.Tensor]]
    run: Callable[[Sequence[Any], Sweep], PrepassState]


@dataclass(frozen=True)
class MethodSpec:
    """A merge method as the registry knows it.

    `merge(deltas, weights, params, ctx)` receives one delta per specialist (a rank-0 LowRankDelta for a
    specialist that left the weight untouched) and the specialists' recipe weights, all on ctx.device in
    float32. `lowrank_output` says whether its result is a LowRankDelta when the inputs are (so it can be
    written as a LoRA adapter). `spaces` are the merge spaces it accepts for LoRA inputs (see
    ssam_cli/spaces.py); `exact_on_factors` says that calling it on the LowRankDeltas themselves gives
    exactly the dense-space result, so the dense and core spaces need not densify or re-express anything.
    `lowrank_when(params)` overrides `lowrank_output` for a method whose output kind depends on its parameters.
    `prepass` is set by a method that must see every merged weight first (see Prepass).
    """

    name: str
    summary: str
    paper: str  # the paper that defines it (title, venue), cited by the model card
    paper_url: str
    params: type[MethodParams]
    merge: MergeFn
    lowrank_output: bool = False
    spaces: tuple[str, ...] = get_args(Space)  # every space the recipe can name
    exact_on_factors: bool = False
    lowrank_when: Optional[Callable[[Any], bool]] = None  # params → low-rank output, where it depends on them
    prepass: Optional[Prepass] = None


def auto_lambda(sum_norm: float, merged_norm: float, n: int) -> float:
    """`lambda: auto` for one weight, from the (weighted) updates alone: λ = min(1, ‖Σ_i w_iΔ_i‖_F / (n ‖Σ_i P(w_iΔ_i)‖_F)),
    so that the merged update λ·ΣPΔ_i is as large as the plain mean update (1/n)·ΣΔ_i.

    P is the method's map before scaling (identity for task arithmetic, which makes λ = 1/n; the consensus projection
    for SSAM, where λ restores the norm the projection dropped). Why the mean's norm: for inputs in every direction,
    the scale c minimising Σ_i ‖cΣ_jΔ_j − Δ_i‖²_F (each specialist's own layer output kept as well as one update
    can) is c = 1/n whatever the updates' overlap: orthogonal weights are not orthogonal effects, each update acts
    on every specialist's inputs. How it compares with λ tuned on validation data: docs/methods.md, docs/lab.md.
    Capped at 1 (never more than the plain projected sum); a zero projected sum gets 1/n (nothing to scale)."""
    if merged_norm <= 0.0:
        return 1.0 / n
    return min(1.0, sum_norm / (n * merged_norm))


def resolve_lambda(params: ScaledParams, n: int) -> float:
    """λ as given, else the method's default: 1/n where its paper's is the mean (SSAM), else 1."""
    if params.lam is not None:
        return float(params.lam)
    return 1.0 / n if params.mean_by_default else 1.0


def default_lambda(params: type[ScaledParams]) -> str:
    """The default λ as `ssam methods` prints it."""
    return "1/n" if params.mean_by_default else "1"
