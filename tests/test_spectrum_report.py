"""The spectrum figures against their definitions, computed directly in float64 numpy.

Tolerances: singular values and energies from float32 factors agree with float64 numpy to 1e-5 relative to
σ_max (float32 QR of the factors); overlaps and kept shares (cosines of unit vectors) to 1e-5 absolute.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from ssam_cli.deltas import DenseDelta, LowRankDelta
from ssam_cli.spectra import energy_share, smallest_k, thin_svd
from ssam_cli.spectrum_report import (SpectrumReport, WeightSpectrum, analyse_weight, module_path, module_type,
                               subspace_overlap, suggest_k, summary_for_manifest)

NAME = "model.layers.0.self_attn.q_proj.weight"
TOL = 1e-5


def lora(g: torch.Generator, d_out: int, d_in: int, r: int, scale: float = 1.0) -> LowRankDelta:
    return LowRankDelta(torch.randn(d_out, r, generator=g), torch.randn(r, d_in, generator=g), scale)


def decaying(g: torch.Generator, d_out: int, d_in: int, r: int) -> DenseDelta:
    """A dense Δ with σ_j = 2^-j: the fast decay that breaks float32 Gram matrices."""
    U, _ = torch.linalg.qr(torch.randn(d_out, r, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(d_in, r, generator=g, dtype=torch.float64))
    s = 2.0 ** -torch.arange(r, dtype=torch.float64)
    return DenseDelta((U * s @ V.T).float())


def np_dense(d) -> np.ndarray:
    return d.dense().double().numpy()


def svals(x: np.ndarray) -> np.ndarray:
    return np.linalg.svd(x, compute_uv=False)


def top_vectors(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    U, _, Vt = np.linalg.svd(x, full_matrices=False)
    return U[:, :k], Vt[:k].T


def np_smallest_k(s: np.ndarray, share: float) -> int:
    e = np.cumsum(s**2) / np.sum(s**2)
    return int(np.argmax(e >= share - 1e-12)) + 1


@pytest.mark.parametrize("kind", ["lora", "dense"])
def test_own_singular_values_match_float64(kind):
    g = torch.Generator().manual_seed(0)
    d = lora(g, 40, 24, 5, scale=1.7) if kind == "lora" else DenseDelta(torch.randn(40, 24, generator=g))
    svd = thin_svd(d).nonzero(tuple(d.shape))
    ref = svals(np_dense(d))
    rank = svd.S.numel()
    assert rank == (5 if kind == "lora" else 24)
    np.testing.assert_allclose(svd.S.double().numpy(), ref[:rank], rtol=0, atol=TOL * ref[0])
    rebuilt = (svd.U.double() * svd.S.double()) @ svd.Vh.double()  # the vectors go with the values
    np.testing.assert_allclose(rebuilt.numpy(), np_dense(d), atol=TOL * ref[0])


def test_rank_zero_specialist_has_empty_spectrum():
    svd = thin_svd(LowRankDelta.zero((8, 6))).nonzero((8, 6))
    assert svd.S.numel() == 0 and svd.U.shape == (8, 0) and svd.Vh.shape == (0, 6)


@pytest.mark.parametrize("kind", ["lora", "dense"])
def test_stacked_spectra_energy_and_k_match_float64(kind):
    g = torch.Generator().manual_seed(1)
    if kind == "lora":
        deltas = [lora(g, 48, 32, r, s) for r, s in ((4, 2.0), (6, 0.5), (3, 1.0))]
    else:
        deltas = [decaying(g, 48, 32, 12) for _ in range(3)]
    weights = [1.0, 0.5, 2.0]
    k = 6
    w = analyse_weight(NAME, deltas, weights, k, ["a", "b", "c"])
    X = [np_dense(d) * wt for d, wt in zip(deltas, weights)]
    left, right = svals(np.hstack(X)), svals(np.vstack(X))
    for side, ref in ((w.left, left), (w.right, right)):
        got = np.array(side.values)
        np.testing.assert_allclose(got, ref[: got.size], rtol=0, atol=TOL * ref[0])
        assert math.isclose(side.energy_at_k, np.sum(ref[:k] ** 2) / np.sum(ref**2), abs_tol=TOL)
        for share in (0.9, 0.95, 0.99):
            assert side.k_for[f"{share:g}"] == np_smallest_k(ref, share)
    for i, x in enumerate(X):  # each Δ_i as the merge sees it (times its weight)
        ref = svals(x)
        np.testing.assert_allclose(w.specialist_values[i], ref[: len(w.specialist_values[i])], atol=TOL * ref[0])
        assert math.isclose(w.specialist_norms[i], np.linalg.norm(x), rel_tol=TOL)


def test_kept_share_follows_algorithm_1():
    """kept_i = ‖P_u Δ_i P_v‖²/‖Δ_i‖² with P_u, P_v from the top-k eigenvectors of Σ Δ_iΔ_iᵀ and Σ Δ_iᵀΔ_i."""
    g = torch.Generator().manual_seed(2)
    deltas = [lora(g, 30, 20, 4), lora(g, 30, 20, 4, 0.3), DenseDelta(torch.randn(30, 20, generator=g) * 0.1)]
    k = 5
    w = analyse_weight(NAME, deltas, [1.0, 1.0, 1.0], k, ["a", "b", "c"])
    X = [np_dense(d) for d in deltas]
    ea, va = np.linalg.eigh(sum(x @ x.T for x in X))
    eb, vb = np.linalg.eigh(sum(x.T @ x for x in X))
    Pu = va[:, np.argsort(ea)[::-1][:k]]
    Pv = vb[:, np.argsort(eb)[::-1][:k]]
    for i, x in enumerate(X):
        kept = np.linalg.norm(Pu @ Pu.T @ x @ Pv @ Pv.T) ** 2 / np.linalg.norm(x) ** 2
        assert math.isclose(w.kept[i], kept, abs_tol=TOL)
    assert 0.0 < w.kept[2] < w.kept[0] <= 1.0  # the diffuse dense update loses the most


def orthonormal(d: int, cols: list[int]) -> torch.Tensor:
    return torch.eye(d)[:, cols]


def test_overlap_of_identical_orthogonal_and_half_shared_subspaces():
    d = 16
    same = subspace_overlap(orthonormal(d, [0, 1, 2]), orthonormal(d, [2, 0, 1]))
    orth = subspace_overlap(orthonormal(d, [0, 1]), orthonormal(d, [2, 3]))
    half = subspace_overlap(orthonormal(d, [0, 1]), orthonormal(d, [0, 5]))
    assert same == pytest.approx(1.0) and orth == pytest.approx(0.0) and half == pytest.approx(0.5)
    assert subspace_overlap(orthonormal(d, []), orthonormal(d, [1])) is None


def test_overlap_matrix_on_constructed_specialists():
    """a and b share their column space (mixed differently), c is orthogonal to both; rows all shared."""
    d_out, d_in = 24, 12
    g = torch.Generator().manual_seed(3)
    rows = torch.randn(3, d_in, generator=g)
    a = LowRankDelta(orthonormal(d_out, [0, 1, 2]) @ torch.randn(3, 3, generator=g), rows)
    b = LowRankDelta(orthonormal(d_out, [0, 1, 2]) @ torch.randn(3, 3, generator=g), rows * 2)
    c = LowRankDelta(orthonormal(d_out, [5, 6, 7]), rows)
    w = analyse_weight(NAME, [a, b, c], [1.0, 1.0, 1.0], 8, ["a", "b", "c"])
    assert w.left.overlap[0][1] == pytest.approx(1.0, abs=TOL)
    assert w.left.overlap[0][2] == pytest.approx(0.0, abs=TOL)
    assert w.left.overlap[1][2] == pytest.approx(0.0, abs=TOL)
    assert w.right.overlap[0][2] == pytest.approx(1.0, abs=TOL)
    assert w.left.overlap_chance[0][1] == pytest.approx(3 / d_out)
    assert w.left.mean_overlap == pytest.approx(1 / 3, abs=TOL)


def designed(singular: list[float], d_out: int = 40, d_in: int = 36, seed: int = 4) -> LowRankDelta:
    g = torch.Generator().manual_seed(seed)
    U, _ = torch.linalg.qr(torch.randn(d_out, len(singular), generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(d_in, len(singular), generator=g, dtype=torch.float64))
    return LowRankDelta((U * torch.tensor(singular, dtype=torch.float64)).float(), V.T.float().contiguous())


def test_known_energy_at_k_and_knee():
    s = [10.0 - 0.1 * j for j in range(8)] + [0.05] * 16  # a knee after 8 directions (distinct σ: no ties at k)
    w = analyse_weight(NAME, [designed(s)], [1.0], 4, ["only"])
    sq = np.square(s)
    assert w.left.energy_at_k == pytest.approx(sq[:4].sum() / sq.sum(), abs=TOL)
    assert w.k_for(0.95) == 8 and w.k_for(0.99) == 8
    assert suggest_k([w], 0.95) == 8
    assert w.kept == [pytest.approx(sq[:4].sum() / sq.sum(), abs=TOL)]


def test_suggestion_is_the_nearest_rank_90th_percentile():
    items = [analyse_weight(f"model.layers.{i}.mlp.up_proj.weight", [designed([1.0] * (i + 1), seed=i)], [1.0],
                            4, ["only"]) for i in range(10)]
    assert [w.k_for(0.95) for w in items] == list(range(1, 11))  # flat spectra: k = rank
    assert suggest_k(items, 0.95) == 9  # ceil(0.9 · 10) = 9th smallest
    report = SpectrumReport(items, 0.95)
    assert report.suggested()["model"] == 9 and report.suggested()["by_module"] == {"up": 9}


def test_numerical_rank_caps_k_like_the_merge():
    w = analyse_weight(NAME, [designed([3.0, 2.0, 1.0])], [1.0], 16, ["only"])
    assert w.k_used == 3 and w.left.numerical_rank == 3 and w.left.energy_at_k == pytest.approx(1.0)


def test_untouched_specialist_has_no_overlap_and_no_kept_share():
    g = torch.Generator().manual_seed(5)
    w = analyse_weight(NAME, [lora(g, 10, 8, 2), LowRankDelta.zero((10, 8))], [1.0, 1.0], 4, ["a", "b"])
    assert w.kept[1] is None and w.left.overlap[0][1] is None and w.specialist_values[1] == []
    assert w.left.overlap[0][0] == 1.0 and w.left.overlap[1][1] is None
    assert w.left.mean_overlap is None
    json.dumps(w.to_dict(), allow_nan=False)


def test_groups_weight_kept_shares_by_energy_and_order_modules_like_llama():
    s = [1.0, 0.8, 0.6]  # energy 2: the top 1 holds half
    ws = [analyse_weight(f"model.layers.{i}.{m}.weight", [designed(s, seed=i)], [1.0], k, ["s"])
          for i, (m, k) in enumerate([("mlp.down_proj", 3), ("self_attn.q_proj", 1), ("self_attn.q_proj", 3)])]
    ws[2].specialist_norms[0] = 3.0  # energy 9 vs 2: the second q weight counts 4.5× as much
    report = SpectrumReport(ws)
    groups = report.groups()
    assert [g.module for g in groups] == ["q", "down"]
    q = groups[0]
    assert q.kept["s"] == pytest.approx((0.5 * 2 + 1.0 * 9) / 11, abs=TOL)
    assert q.energy_at_k_left == (pytest.approx(0.75, abs=TOL), pytest.approx(0.5, abs=TOL))
    assert [(g.layer, g.module) for g in report.groups(per_layer=True)] == [(0, "down"), (1, "q"), (2, "q")]


def test_manifest_summary_is_small_and_serialisable():
    g = torch.Generator().manual_seed(6)
    ws = [analyse_weight(f"model.layers.0.self_attn.{m}_proj.weight", [lora(g, 12, 12, 3), lora(g, 12, 12, 3)],
                         [1.0, 1.0], 2, ["a", "b"]) for m in "qv"]
    s = summary_for_manifest(ws)
    text = json.dumps(s, allow_nan=False)
    assert "values_left" not in text and "specialist_values" not in text
    assert s["suggested_k"]["by_module"].keys() == {"q", "v"} and "rule" in s["suggested_k"]
    assert s["weights"]["model.layers.0.self_attn.v_proj.weight"]["kept_a"] == ws[1].kept[0]


@pytest.mark.parametrize("name, module", [
    ("model.layers.3.self_attn.q_proj.weight", "q"), ("model.layers.0.mlp.down_proj.weight", "down"),
    ("transformer.h.2.mlp.fc1.weight", "fc1"), ("lm_head.weight", "lm_head"),
])
def test_module_type(name, module):
    assert module_type(name) == module


def test_labels_stay_short_unless_two_modules_share_a_short_name():
    """BERT names three different linear modules `dense`: they are shown by their path in the block."""
    g = torch.Generator().manual_seed(8)
    names = ["encoder.layer.0.attention.self.query.weight", "encoder.layer.0.attention.output.dense.weight",
             "encoder.layer.0.intermediate.dense.weight", "encoder.layer.0.output.dense.weight"]
    report = SpectrumReport([analyse_weight(n, [lora(g, 8, 8, 2)], [1.0], 2, ["a"]) for n in names])
    assert report.modules() == ["query", "attention.output.dense", "intermediate.dense", "output.dense"]
    assert [g.module for g in report.groups()] == report.modules()
    assert module_path(names[1]) == "attention.output.dense"


def test_energy_helpers_on_zero_and_exact_shares():
    zero = torch.zeros(0, dtype=torch.float64)
    assert energy_share(zero, 3) == 1.0 and smallest_k(zero, 0.9) == 0
    v = torch.tensor([3.0, 1.0], dtype=torch.float64)  # energies 0.9, 1.0
    assert smallest_k(v, 0.9) == 1 and smallest_k(v, 0.95) == 2


def test_weight_spectrum_exposes_layer():
    g = torch.Generator().manual_seed(7)
    w: WeightSpectrum = analyse_weight("model.layers.12.mlp.up_proj.weight", [lora(g, 6, 5, 1)], [1.0], 1, ["a"])
    assert (w.layer, w.module) == (12, "mlp.up_proj") and w.figures()["module"] == "up"


def test_factored_figures_equal_the_direct_definitions():
    """LoRA updates are analysed from the factored bases' Grams; the same updates as dense matrices go through each
    Δ_i's SVD and d-sized products. Every figure agrees within TOL (σ: relative to σ_max; shares, overlaps:
    absolute), and both agree with float64 numpy, with weights (one 0), unequal ranks, a rank-0 specialist and
    two specialists sharing lora_B (a rank-deficient stack)."""
    g = torch.Generator().manual_seed(7)
    shared_B = torch.randn(40, 5, generator=g)
    deltas = [lora(g, 40, 28, 5, 2.0), LowRankDelta(shared_B, torch.randn(5, 28, generator=g), 0.5),
              LowRankDelta(shared_B, torch.randn(5, 28, generator=g), 1.5), lora(g, 40, 28, 3, 1.0),
              LowRankDelta.zero((40, 28)), lora(g, 40, 28, 4, 1.0)]
    weights = [1.0, 0.7, 1.3, 2.0, 1.0, 0.0]
    names = list("abcdef")
    k = 7
    fast = analyse_weight(NAME, deltas, weights, k, names)
    direct = analyse_weight(NAME, [DenseDelta(d.dense()) for d in deltas], weights, k, names)
    top = max(fast.left.values[0], 1.0)
    for got, want in zip(fast.specialist_values, direct.specialist_values):
        assert len(got) == len(want)
        np.testing.assert_allclose(got, want, rtol=0, atol=TOL * top)
    assert fast.kept[4] is None and fast.kept[5] is None and fast.specialist_values[5] == []
    a, b = fast.figures(), direct.figures()
    assert a.keys() == b.keys()
    for key in a:
        if a[key] is None or isinstance(a[key], str):
            assert a[key] == b[key], key
        else:
            assert a[key] == pytest.approx(b[key], abs=TOL * (top if key.startswith("norm_") else 1.0)), key
    X = [np_dense(d) * w for d, w in zip(deltas, weights)]
    for i, j in ((0, 1), (1, 2), (0, 3)):  # the definition: mean squared cosine of the top-r principal angles
        r = min(k, len(fast.specialist_values[i]), len(fast.specialist_values[j]))
        (Ui, Vi), (Uj, Vj) = top_vectors(X[i], r), top_vectors(X[j], r)
        assert fast.left.overlap[i][j] == pytest.approx(np.linalg.norm(Ui.T @ Uj) ** 2 / r, abs=TOL)
        assert fast.right.overlap[i][j] == pytest.approx(np.linalg.norm(Vi.T @ Vj) ** 2 / r, abs=TOL)
    assert fast.left.overlap[1][2] == pytest.approx(1.0, abs=TOL)  # the shared lora_B: one column space
    for i in (0, 1, 3):
        assert fast.specialist_norms[i] == pytest.approx(np.linalg.norm(X[i]), rel=TOL)
