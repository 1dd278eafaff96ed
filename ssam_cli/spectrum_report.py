"""What SSAM's k keeps of each weight, and where the specialists interfere: the figures of `inspect-spectrum`.

Per weight, from the deltas the merge would see (Δ_i times its recipe weight):
  * the singular values of each Δ_i (through its factors when low-rank: an r × r core, never d × d);
  * the singular values of the stacked M = [Δ_1 | … | Δ_n] (left, U_c) and N = [Δ_1; …; Δ_n] (right, V_c),
    from `consensus.bases.stacked_spectra`, the path the merge itself takes;
  * the energy they capture at k, and the smallest k reaching given energy shares;
  * the pairwise overlap of the specialists' column (row) subspaces: the mean squared cosine of the principal
    angles between their top-r singular subspaces, r = min(k, rank_i, rank_j): 1 identical, 0 orthogonal,
    about r/d for unrelated random subspaces (reported as the chance level);
  * the share of each Δ_i's energy that survives SSAM's projection U_cU_cᵀ Δ_i V_cV_cᵀ at k.
Then aggregates per module type (q, k, v, o, gate, up, down) or per layer, and a suggested k with its rule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import torch

from ssam_cli.deltas import Delta
from ssam_cli.consensus.bases import ConsensusBases, consensus_bases, project_sum
from ssam_cli.consensus.factored import FactoredSpectrum, block_slices, block_svds, live_indices
from ssam_cli.spectra import energy_share, numerical_rank, smallest_k, thin_svd
from ssam_cli.plan import LAYER_INDEX, layer_of

THRESHOLDS = (0.90, 0.95, 0.99)
DEFAULT_TARGET = 0.95
DEFAULT_K = 128  # the paper's k, for methods without a `rank` parameter
QUANTILE = 0.9
MODULE_ORDER = ("q", "k", "v", "o", "gate", "up", "down")  # Llama's order; other module types follow, first seen
RULE = ("per weight: the smallest k whose top-k singular values of both stacked matrices (U_c and V_c sides) hold "
        "at least {target:.0%} of Σσ²; suggested k for a group of weights: the {quantile:.0%} quantile "
        "(nearest rank) of that per-weight k, so {quantile:.0%} of the weights keep at least {target:.0%}")


def k_of_params(params: Any) -> int:
    """The k a method works at: its `rank` parameter, else the paper's 128 (the figures need some k)."""
    return int(getattr(params, "rank", None) or DEFAULT_K)


def rule_text(target: float = DEFAULT_TARGET) -> str:
    return RULE.format(target=target, quantile=QUANTILE)


# ----------------------------------------------------------------------------------------------- one matrix


def subspace_overlap(Ua: torch.Tensor, Ub: torch.Tensor) -> Optional[float]:
    """Mean squared cosine of the principal angles between span(Ua) and span(Ub) (orthonormal columns, equal
    count r): ‖UaᵀUb‖_F² / r. None when r = 0 (a specialist that left the weight untouched)."""
    r = min(Ua.shape[1], Ub.shape[1])
    if r == 0:
        return None
    G = Ua[:, :r].T @ Ub[:, :r]  # cosines of unit vectors: float32 products are exact to ~1e-6
    return float(G.double().square().sum()) / r


# ----------------------------------------------------------------------------------------------- one weight


@dataclass
class Side:
    """One side of a weight: the stacked matrix's spectrum (U_c: left, V_c: right) and the pairwise overlaps."""

    values: list[float]
    numerical_rank: int
    k_used: int
    energy_at_k: float
    k_for: dict[str, int]  # energy share (as "0.95") → smallest k reaching it
    overlap: list[list[Optional[float]]]  # n × n, symmetric, diagonal 1 (None for an untouched specialist)
    overlap_chance: list[list[Optional[float]]]  # the r/d expected of unrelated random subspaces

    @property
    def mean_overlap(self) -> Optional[float]:
        return _mean(_upper(self.overlap))

    @property
    def mean_chance(self) -> Optional[float]:
        return _mean(_upper(self.overlap_chance))


@dataclass
class WeightSpectrum:
    """Every figure of one merged weight."""

    name: str
    shape: tuple[int, int]
    specialists: list[str]
    k_requested: int
    specialist_values: list[list[float]]  # σ(Δ_i), float64, descending, cut at the numerical rank
    specialist_norms: list[float]  # ‖Δ_i‖_F
    left: Side
    right: Side
    kept: list[Optional[float]]  # ‖U_cU_cᵀ Δ_i V_cV_cᵀ‖² / ‖Δ_i‖² (None for an untouched specialist)

    @property
    def layer(self) -> int:
        return layer_of(self.name)

    @property
    def module(self) -> str:
        """The module's path inside its block (`self_attn.q_proj`): the key weights are grouped by."""
        return module_path(self.name)

    @property
    def k_used(self) -> int:
        return min(self.left.k_used, self.right.k_used)

    def k_for(self, share: float) -> int:
        """The smallest k keeping `share` of the energy on both sides."""
        key = share_key(share)
        return max(self.left.k_for[key], self.right.k_for[key])

    def figures(self) -> dict[str, Any]:
        """Every scalar figure (no singular-value lists): for CSV rows and the manifest."""
        out: dict[str, Any] = {"name": self.name, "layer": self.layer, "module": module_type(self.name),
                               "module_path": self.module, "d_out": self.shape[0], "d_in": self.shape[1],
                               "k_requested": self.k_requested, "k_used": self.k_used}
        for side_name, side in (("left", self.left), ("right", self.right)):
            out[f"numerical_rank_{side_name}"] = side.numerical_rank
            out[f"energy_at_k_{side_name}"] = side.energy_at_k
            for key, k in side.k_for.items():
                out[f"k{_pct(key)}_{side_name}"] = k
            out[f"overlap_{side_name}"] = side.mean_overlap
            out[f"overlap_chance_{side_name}"] = side.mean_chance
        for i, name in enumerate(self.specialists):
            out[f"norm_{name}"] = self.specialist_norms[i]
            out[f"rank_{name}"] = len(self.specialist_values[i])
            out[f"kept_{name}"] = self.kept[i]
        for i, j in _pairs(len(self.specialists)):
            pair = f"{self.specialists[i]}~{self.specialists[j]}"
            out[f"overlap_left_{pair}"] = self.left.overlap[i][j]
            out[f"overlap_right_{pair}"] = self.right.overlap[i][j]
        return out

    def to_dict(self) -> dict[str, Any]:
        """Every figure, with the singular values and the full overlap matrices (for --json)."""
        d = {k: v for k, v in self.figures().items() if not k.startswith(("overlap_left_", "overlap_right_"))}
        d["specialist_values"] = dict(zip(self.specialists, self.specialist_values))
        for side_name, side in (("left", self.left), ("right", self.right)):
            d[f"values_{side_name}"] = side.values
            d[f"overlap_matrix_{side_name}"] = side.overlap
        return d


def analyse_weight(name: str, deltas: Sequence[Delta], weights: Sequence[float], k: int,
                   specialists: Sequence[str], shares: Sequence[float] = THRESHOLDS,
                   bases: Optional[ConsensusBases] = None) -> WeightSpectrum:
    """All figures of one weight, with the same weighting, bases and rank cap as `methods.ssam.merge`;
    `bases`: the merge's own consensus bases of the same weighted deltas at the same k, when it has them.
    LoRA updates are analysed from the factored bases' R × R Grams (no d-sized work beyond the merge's own)."""
    weighted = [d.scaled(w) for d, w in zip(deltas, weights)]
    bases = bases if bases is not None else consensus_bases(weighted, k)
    shape = (int(deltas[0].shape[0]), int(deltas[0].shape[1]))
    figures = _factored(weighted, bases, shape) if bases.factored else _direct(weighted, bases)
    norms = [math.sqrt(float(v.square().sum())) for v in figures.values]
    return WeightSpectrum(
        name=name, shape=shape, specialists=list(specialists), k_requested=k,
        specialist_values=[v.tolist() for v in figures.values], specialist_norms=norms,
        left=_side(bases.left.values, bases.left.numerical_rank, bases.U.shape[1], figures.ranks, shape[0],
                   figures.overlap_left, k, shares),
        right=_side(bases.right.values, bases.right.numerical_rank, bases.V.shape[1], figures.ranks, shape[1],
                    figures.overlap_right, k, shares),
        kept=[None if norm == 0.0 else share for share, norm in zip(figures.kept_energy, norms)],
    )


Overlap = Callable[[int, int, int], Optional[float]]  # (i, j, r) → ‖U_i[:, :r]ᵀ U_j[:, :r]‖_F² / r


@dataclass
class _Specialists:
    """Per specialist: σ(Δ_i) cut at its numerical rank, the share of ‖Δ_i‖² kept by U_cU_cᵀ·V_cV_cᵀ, and
    the overlaps of the top-r singular subspaces on each side."""

    values: list[torch.Tensor]
    kept_energy: list[float]
    overlap_left: Overlap
    overlap_right: Overlap

    @property
    def ranks(self) -> list[int]:
        return [int(v.numel()) for v in self.values]


def _direct(weighted: Sequence[Delta], bases: ConsensusBases) -> _Specialists:
    """The definitions: each Δ_i's thin SVD (its r × r core when low-rank) and d-sized products."""
    svds = [thin_svd(d).nonzero(tuple(d.shape)) for d in weighted]
    kept = []
    for d, s in zip(weighted, svds):
        energy = float(s.S.double().square().sum())
        kept.append(float(project_sum([d], bases.U, bases.V).double().square().sum()) / energy if energy else 0.0)
    return _Specialists([s.S.double() for s in svds], kept,
                        lambda i, j, r: subspace_overlap(svds[i].U[:, :r], svds[j].U[:, :r]),
                        lambda i, j, r: subspace_overlap(svds[i].Vh[:r].T, svds[j].Vh[:r].T))


def _factored(weighted: Sequence[Delta], bases: ConsensusBases, shape: tuple[int, int]) -> _Specialists:
    """The same figures from the factored bases' Grams G_L = LᵀL, G_H = HᵀH (L = [s_iB_i], H = [A_iᵀ]):
    Δ_i's SVD from its diagonal blocks (consensus.factored.block_svds), U_iᵀU_j = a_iᵀ G_L[i, j] a_j (right:
    b_iᵀ G_H[i, j] b_j), and U_cᵀΔ_iV_c = cᵀ G_L[:, i] G_H[i, :] c' with U_c = L·c, V_c = H·c'. R × R work."""
    left, right = bases.left, bases.right
    assert isinstance(left, FactoredSpectrum) and isinstance(right, FactoredSpectrum)
    n = len(weighted)
    blocks = dict(zip(live_indices(weighted), zip(block_svds(left, right), block_slices(left))))  # type: ignore[arg-type]
    c_left, c_right = left.coeffs(bases.U.shape[1]), right.coeffs(bases.V.shape[1])
    values: list[torch.Tensor] = [torch.zeros(0, dtype=torch.float64)] * n
    a: dict[int, torch.Tensor] = {}
    b: dict[int, torch.Tensor] = {}
    kept = [0.0] * n
    for i, (svd, where) in blocks.items():
        rank = numerical_rank(svd.values, max(shape))  # thin_svd(...).nonzero's rule
        values[i], a[i], b[i] = svd.values[:rank], svd.a[:, :rank], svd.b[:, :rank]
        energy = float(values[i].square().sum())
        if energy:
            projected = (c_left.T @ left.gram[:, where]) @ (right.gram[where, :] @ c_right)
            kept[i] = float(projected.square().sum()) / energy
    slices = {i: where for i, (_, where) in blocks.items()}

    def overlap(gram: torch.Tensor, coeffs: dict[int, torch.Tensor]) -> Overlap:
        def of(i: int, j: int, r: int) -> float:
            G = coeffs[i][:, :r].T @ gram[slices[i], slices[j]] @ coeffs[j][:, :r]
            return float(G.square().sum()) / r
        return of

    return _Specialists(values, kept, overlap(left.gram, a), overlap(right.gram, b))


def _side(values: torch.Tensor, rank: int, k_used: int, ranks: list[int], d: int, overlap_of: Overlap, k: int,
          shares: Sequence[float]) -> Side:
    n = len(ranks)
    overlap: list[list[Optional[float]]] = [[None] * n for _ in range(n)]
    chance: list[list[Optional[float]]] = [[None] * n for _ in range(n)]
    for i in range(n):
        if ranks[i]:
            overlap[i][i] = 1.0  # a subspace with itself, by definition (no product needed)
            chance[i][i] = min(k, ranks[i]) / d
        for j in range(i + 1, n):
            r = min(k, ranks[i], ranks[j])
            overlap[i][j] = overlap[j][i] = overlap_of(i, j, r) if r else None
            chance[i][j] = chance[j][i] = None if r == 0 else r / d
    values = values[:rank]  # beyond the numerical rank: rounding noise of an exact zero
    return Side(values=values.tolist(), numerical_rank=rank, k_used=k_used, energy_at_k=energy_share(values, k_used),
                k_for={share_key(s): smallest_k(values, s) for s in shares}, overlap=overlap, overlap_chance=chance)


# ----------------------------------------------------------------------------------------------- aggregates


@dataclass
class Group:
    """Figures of a group of weights (a module type, or one layer's module)."""

    module: str
    layer: Optional[int]
    weights: int
    k_used: tuple[int, int]  # min, max
    energy_at_k_left: tuple[float, float]  # mean, min
    energy_at_k_right: tuple[float, float]
    k_for: dict[str, int]  # share → suggested k for this group (the rule)
    overlap_left: Optional[float]
    overlap_right: Optional[float]
    overlap_chance_left: Optional[float]
    kept: dict[str, Optional[float]]  # specialist → energy-weighted share kept over the group

    def to_dict(self) -> dict[str, Any]:
        return {"module": self.module, "layer": self.layer, "weights": self.weights,
                "k_used_min": self.k_used[0], "k_used_max": self.k_used[1],
                "energy_at_k_left_mean": self.energy_at_k_left[0], "energy_at_k_left_min": self.energy_at_k_left[1],
                "energy_at_k_right_mean": self.energy_at_k_right[0],
                "energy_at_k_right_min": self.energy_at_k_right[1],
                **{f"suggested_k{_pct(key)}": k for key, k in self.k_for.items()},
                "overlap_left": self.overlap_left, "overlap_right": self.overlap_right,
                "overlap_chance_left": self.overlap_chance_left,
                **{f"kept_{name}": v for name, v in self.kept.items()}}


def group(items: Sequence[WeightSpectrum], module: str, layer: Optional[int], shares: Sequence[float]) -> Group:
    """Aggregate: energies as mean and min, overlaps as means, kept shares weighted by each Δ_i's energy."""
    names = items[0].specialists
    kept: dict[str, Optional[float]] = {}
    for i, name in enumerate(names):
        total = sum(w.specialist_norms[i] ** 2 for w in items if w.kept[i] is not None)
        part = sum(w.kept[i] * w.specialist_norms[i] ** 2 for w in items if w.kept[i] is not None)
        kept[name] = part / total if total > 0 else None
    el = [w.left.energy_at_k for w in items]
    er = [w.right.energy_at_k for w in items]
    return Group(
        module=module, layer=layer, weights=len(items),
        k_used=(min(w.k_used for w in items), max(w.k_used for w in items)),
        energy_at_k_left=(sum(el) / len(el), min(el)), energy_at_k_right=(sum(er) / len(er), min(er)),
        k_for={share_key(s): suggest_k(items, s) for s in shares},
        overlap_left=_mean([w.left.mean_overlap for w in items]),
        overlap_right=_mean([w.right.mean_overlap for w in items]),
        overlap_chance_left=_mean([w.left.mean_chance for w in items]),
        kept=kept,
    )


def suggest_k(items: Sequence[WeightSpectrum], share: float = DEFAULT_TARGET) -> int:
    """The rule (see RULE): the nearest-rank QUANTILE of the per-weight smallest k keeping `share` on both sides."""
    ks = sorted(w.k_for(share) for w in items)
    if not ks:
        return 0
    return ks[max(math.ceil(QUANTILE * len(ks)) - 1, 0)]


@dataclass
class SpectrumReport:
    """The per-weight figures of a recipe (in plan order) and the energy share the suggestion aims at."""

    weights: list[WeightSpectrum]
    target: float = DEFAULT_TARGET
    notes: list[str] = field(default_factory=list)

    @property
    def shares(self) -> list[float]:
        return sorted(set(THRESHOLDS) | {self.target})

    @property
    def specialists(self) -> list[str]:
        return self.weights[0].specialists if self.weights else []

    def groups(self, per_layer: bool = False) -> list[Group]:
        """One group per module type (first-seen order), or per (layer, module type) with per_layer."""
        buckets: dict[tuple[Optional[int], str], list[WeightSpectrum]] = {}
        for w in self.weights:
            buckets.setdefault((w.layer if per_layer else None, w.module), []).append(w)
        labels = self.labels()
        rank = {m: i for i, m in enumerate(self.modules())}
        keys = sorted(buckets, key=lambda lm: (lm[0] if lm[0] is not None else 0, rank[labels[lm[1]]]))
        return [group(buckets[key], labels[key[1]], key[0], self.shares) for key in keys]

    def labels(self) -> dict[str, str]:
        """Module path → the name shown: the short type (`q`) where no other module shares it, else the path
        (BERT has `attention.output.dense`, `intermediate.dense` and `output.dense`)."""
        paths = list(dict.fromkeys(w.module for w in self.weights))
        short = [module_type(p) for p in paths]
        return {p: s if short.count(s) == 1 else p for p, s in zip(paths, short)}

    def label(self, w: WeightSpectrum) -> str:
        return self.labels()[w.module]

    def modules(self) -> list[str]:
        """Module labels present, Llama's q, k, v, o, gate, up, down first, then the others as first seen."""
        seen = list(self.labels().values())
        return [m for m in MODULE_ORDER if m in seen] + [m for m in seen if m not in MODULE_ORDER]

    def suggested(self) -> dict[str, Any]:
        by_module = {g.module: g.k_for[share_key(self.target)] for g in self.groups()}
        return {"model": suggest_k(self.weights, self.target), "by_module": by_module,
                "target": self.target, "rule": rule_text(self.target)}

    def to_dict(self) -> dict[str, Any]:
        return {"specialists": self.specialists, "target": self.target, "suggested_k": self.suggested(),
                "notes": self.notes, "by_module": [g.to_dict() for g in self.groups()],
                "weights": [w.to_dict() for w in self.weights]}


def summary_for_manifest(per_weight_results: Sequence[WeightSpectrum], target: float = DEFAULT_TARGET) -> dict[str, Any]:
    """The spectrum summary a merged model carries in manifest.json: suggestion and per-module figures
    (per-weight scalars under `weights`, no singular-value lists, so the manifest stays small)."""
    report = SpectrumReport(list(per_weight_results), target)
    return {"suggested_k": report.suggested(), "by_module": [g.to_dict() for g in report.groups()],
            "weights": {w.name: _without_name(w.figures()) for w in report.weights}}


# ----------------------------------------------------------------------------------------------- names


def module_path(name: str) -> str:
    """`model.layers.3.self_attn.q_proj.weight` → `self_attn.q_proj`: the part after the block index."""
    m = LAYER_INDEX.search(name)
    path = name[m.end():] if m else name
    return path[: -len(".weight")] if path.endswith(".weight") else path


def module_type(name: str) -> str:
    """`model.layers.3.self_attn.q_proj.weight` → `q`; `…mlp.down_proj.weight` → `down`; else the module's name."""
    parts = name.split(".")
    if parts[-1] == "weight" and len(parts) > 1:
        parts = parts[:-1]
    last = parts[-1]
    return last[: -len("_proj")] if last.endswith("_proj") and len(last) > len("_proj") else last


def share_key(share: float) -> str:
    return f"{share:g}"


def _pct(key: str) -> str:
    return f"{float(key) * 100:g}"


def _pairs(n: int) -> list[tuple[int, int]]:
    return [(i, j) for i in range(n) for j in range(i + 1, n)]


def _upper(m: list[list[Optional[float]]]) -> list[Optional[float]]:
    return [m[i][j] for i, j in _pairs(len(m))]


def _mean(xs: Sequence[Optional[float]]) -> Optional[float]:
    vals = [x for x in xs if x is not None]
    return sum(vals) / len(vals) if vals else None


def _without_name(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k != "name"}
