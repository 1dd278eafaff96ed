"""SSAM against the direct float64 Algorithm 1: LoRA, dense and mixed inputs, square and rectangular weights.

Tolerance: 1e-5 relative Frobenius error for float32 computation (inputs are float32; the reference
runs in float64 on the same float32 values).
"""

from __future__ import annotations

import pytest
import torch

from ssam_cli.deltas import DenseDelta, LowRankDelta
from ssam_cli.methods import ssam, task_arithmetic
from ssam_cli.methods.base import MergeContext
from tests.reference import decaying_lowrank, rel_err, ssam_reference

TOL = 1e-5


def ctx(n: int) -> MergeContext:
    return MergeContext("w", n, torch.device("cpu"))


def run(deltas, k, lam=None, weights=None):
    n = len(deltas)
    params = ssam.SsamParams.model_validate({"rank": k, **({"lambda": lam} if lam is not None else {})})
    return ssam.merge(deltas, weights or [1.0] * n, params, ctx(n))


def lora_deltas(shape, n, r, seed, decay=None):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        if decay is None:
            B, A = torch.randn(shape[0], r, generator=g), torch.randn(r, shape[1], generator=g)
        else:
            B, A = decaying_lowrank(shape[0], shape[1], r, decay, g)
        out.append(LowRankDelta(B, A, scale=2.0))
    return out


@pytest.mark.parametrize("shape", [(40, 40), (48, 30), (30, 56)])
@pytest.mark.parametrize("k", [2, 5, 9])
def test_lora_matches_algorithm_1(shape, k):
    deltas = lora_deltas(shape, n=3, r=4, seed=k)
    got = run(deltas, k)
    assert isinstance(got.delta, LowRankDelta) and got.delta.rank <= k
    ref = ssam_reference([d.dense() for d in deltas], k, 1 / 3)
    assert rel_err(got.delta.dense(), ref) < TOL


@pytest.mark.parametrize("shape", [(40, 40), (48, 30), (30, 56)])
@pytest.mark.parametrize("k", [3, 17])
def test_dense_matches_algorithm_1(shape, k):
    g = torch.Generator().manual_seed(k)
    dense = [torch.randn(*shape, generator=g) for _ in range(3)]
    got = run([DenseDelta(d) for d in dense], k, lam=0.7)
    assert rel_err(got.delta.dense(), ssam_reference(dense, k, 0.7)) < TOL


def test_mixed_lora_and_dense_match_algorithm_1():
    lora = lora_deltas((36, 28), n=2, r=3, seed=1)
    g = torch.Generator().manual_seed(2)
    dense = torch.randn(36, 28, generator=g) * 0.1
    deltas = [*lora, DenseDelta(dense)]
    got = run(deltas, 7)
    ref = ssam_reference([lora[0].dense(), lora[1].dense(), dense], 7, 1 / 3)
    assert rel_err(got.delta.dense(), ref) < TOL


def test_decaying_spectra_keep_the_subspace_accurate():
    """Fast-decaying LoRA spectra: a float32 Gram would lose the tail; the factored SVD must not."""
    deltas = lora_deltas((64, 96), n=4, r=16, seed=3, decay=0.6)
    k = 24
    got = run(deltas, k)
    ref = ssam_reference([d.dense() for d in deltas], k, 0.25)
    assert rel_err(got.delta.dense(), ref) < TOL


def test_rank_at_or_above_numerical_rank_is_task_arithmetic_and_is_reported():
    deltas = lora_deltas((40, 32), n=3, r=3, seed=5)
    got = run(deltas, 128, lam=1.0)
    ta = task_arithmetic.merge(deltas, [1.0] * 3, task_arithmetic.TaskArithmeticParams(), ctx(3))
    assert rel_err(got.delta.dense(), ta.delta.dense()) < TOL
    assert got.stats["rank_capped"] and got.stats["rank_used"] == 9
    assert got.stats["energy_left"] == pytest.approx(1.0)


def test_rank_below_numerical_rank_differs_from_task_arithmetic():
    deltas = lora_deltas((40, 32), n=3, r=3, seed=5)
    got = run(deltas, 4, lam=1.0)
    ta = sum(d.dense() for d in deltas)
    assert rel_err(got.delta.dense(), ta) > 1e-2
    assert not got.stats["rank_capped"] and got.stats["energy_left"] < 1.0


def test_default_lambda_is_one_over_n_and_weights_scale_each_delta():
    deltas = lora_deltas((20, 20), n=2, r=2, seed=7)
    assert run(deltas, 3).stats["lambda"] == pytest.approx(0.5)
    weighted = run(deltas, 3, lam=1.0, weights=[2.0, 0.5])
    ref = ssam_reference([2.0 * deltas[0].dense(), 0.5 * deltas[1].dense()], 3, 1.0)
    assert rel_err(weighted.delta.dense(), ref) < TOL


def test_zero_rank_specialists_are_exact_zeros():
    deltas = lora_deltas((20, 24), n=2, r=2, seed=8) + [LowRankDelta.zero((20, 24))]
    got = run(deltas, 3, lam=1.0)
    ref = ssam_reference([d.dense() for d in deltas[:2]], 3, 1.0)
    assert rel_err(got.delta.dense(), ref) < TOL


def test_all_zero_updates_merge_to_rank_zero():
    got = run([LowRankDelta.zero((8, 6)), LowRankDelta.zero((8, 6))], 4)
    assert got.delta.rank == 0 and float(got.delta.dense().abs().max()) == 0.0


@pytest.mark.parametrize("kind", ["lora", "dense"])
def test_norm_stats_equal_the_direct_norms(kind):
    deltas = lora_deltas((40, 56), n=3, r=4, seed=9, decay=0.5)
    if kind == "dense":
        deltas = [DenseDelta(d.dense()) for d in deltas]
    got = run(deltas, 6, weights=[1.0, 0.5, 2.0])
    total = sum(d.dense().double() * w for d, w in zip(deltas, [1.0, 0.5, 2.0]))
    assert got.stats["norm_sum"] == pytest.approx(float(total.norm()), rel=1e-6)
    assert got.stats["norm_merged"] == pytest.approx(float(got.delta.dense().double().norm()), rel=1e-5)


def _dense_decaying(n, shape, r, seed):
    """Dense updates with σ_j ∝ j^-1.5 (rank r) and half of their directions shared, as float32."""
    g = torch.Generator().manual_seed(seed)
    shared_u = torch.randn(shape[0], r // 2, generator=g, dtype=torch.float64)
    shared_v = torch.randn(shape[1], r // 2, generator=g, dtype=torch.float64)
    sigma = torch.arange(1, r + 1, dtype=torch.float64).pow(-1.5)
    out = []
    for _ in range(n):
        U = torch.linalg.qr(torch.cat([shared_u, torch.randn(shape[0], r - r // 2, generator=g, dtype=torch.float64)], 1))[0]
        V = torch.linalg.qr(torch.cat([shared_v, torch.randn(shape[1], r - r // 2, generator=g, dtype=torch.float64)], 1))[0]
        out.append(DenseDelta(((U * sigma) @ V.T).float()))
    return out


def _exact_energy(blocks, k):
    s = torch.linalg.svdvals(torch.cat([b.double() for b in blocks], dim=1))
    return float(s[:k].square().sum() / s.square().sum())


def test_large_dense_weights_get_randomized_bases_with_their_error_in_the_stats(monkeypatch):
    """Tolerances (k = 24 of rank 160, sketch 2k): energy at k within 1e-4 of float64, merged Δ within 1e-3."""
    monkeypatch.setattr(ssam, "RANDOMIZED_FROM", 150)
    deltas = _dense_decaying(4, (160, 220), 160, seed=11)
    got = run(deltas, 24, lam=0.25)
    dense = [d.tensor for d in deltas]
    assert got.stats["bases"] == "randomized"
    assert got.stats["energy_left"] == pytest.approx(_exact_energy(dense, 24), abs=1e-4)
    assert got.stats["energy_right"] == pytest.approx(_exact_energy([d.T for d in dense], 24), abs=1e-4)
    assert all(0.0 <= e <= 1.0 for e in got.stats["subspace_error"])
    assert got.stats["sketch"] == {"width": [96, 96], "depth": [2, 2]}  # 3 blocks of k + 8
    assert rel_err(got.delta.dense(), ssam_reference(dense, 24, 0.25)) < 1e-3


def test_exact_parameter_and_small_weights_keep_the_exact_path(monkeypatch):
    deltas = _dense_decaying(3, (160, 220), 160, seed=12)
    dense = [d.tensor for d in deltas]
    small = run(deltas, 24)  # 160 < 2048: exact
    monkeypatch.setattr(ssam, "RANDOMIZED_FROM", 150)
    forced = ssam.merge(deltas, [1.0] * 3, ssam.SsamParams(rank=24, exact=True), ctx(3))
    for got in (small, forced):
        assert got.stats["bases"] == "exact" and "subspace_error" not in got.stats
        assert rel_err(got.delta.dense(), ssam_reference(dense, 24, 1 / 3)) < TOL
    assert run(lora_deltas((40, 40), n=2, r=3, seed=1), 4).stats["bases"] == "factored"



def _auto_reference(deltas: list[torch.Tensor], k: int) -> tuple[float, torch.Tensor]:
    """`lambda: auto` as docs/methods.md defines it, in float64 with Algorithm 1's own projections P_u, P_v:
    λ = min(1, ‖ΣΔ_i‖ / (n‖Σ P_uΔ_iP_v‖)); returns λ and the merged update λ Σ P_uΔ_iP_v."""
    ds = [d.double() for d in deltas]
    A, B = sum(d @ d.T for d in ds), sum(d.T @ d for d in ds)
    ea, Ua = torch.linalg.eigh(A)
    eb, Vb = torch.linalg.eigh(B)
    U, V = Ua[:, torch.argsort(ea, descending=True)[:k]], Vb[:, torch.argsort(eb, descending=True)[:k]]
    total = sum(U @ U.T @ d @ V @ V.T for d in ds)
    lam = min(1.0, float(sum(ds).norm()) / (len(ds) * float(total.norm())))
    return lam, lam * total


@pytest.mark.parametrize("kind", ["lora", "dense"])
@pytest.mark.parametrize("k", [2, 5])
def test_auto_lambda_matches_its_float64_definition(kind, k):
    """Tolerance: 1e-5 relative on the merged update and on λ (float32 inputs, float64 reference). k below the
    numerical rank, so that the projection drops energy and λ lies strictly above 1/n, where a wrong norm would show."""
    g = torch.Generator().manual_seed(20 + k)
    if kind == "lora":
        deltas = [LowRankDelta(torch.randn(30, 4, generator=g), torch.randn(4, 24, generator=g), scale=2.0)
                  for _ in range(3)]
    else:
        deltas = [DenseDelta(torch.randn(30, 24, generator=g)) for _ in range(3)]
    weights = [1.0, 0.5, 2.0]
    got = run(deltas, k, lam="auto", weights=weights)
    lam, ref = _auto_reference([d.dense() * w for d, w in zip(deltas, weights)], k)
    assert 1 / 3 + 0.02 < lam < 1.0
    assert got.stats["lambda"] == pytest.approx(lam, rel=1e-5)
    assert rel_err(got.delta.dense(), ref) < TOL
    mean = sum(d.dense().double() * w for d, w in zip(deltas, weights)) / 3  # the merged update has the mean's norm
    assert float(got.delta.dense().double().norm()) == pytest.approx(float(mean.norm()), rel=1e-5)


def test_auto_lambda_is_one_over_n_when_the_subspace_holds_every_update_orthogonal_or_identical():
    eye = torch.eye(12)
    orthogonal = [LowRankDelta(eye[:, 3 * i:3 * i + 3].clone(), eye[3 * i:3 * i + 3].clone()) for i in range(4)]
    assert run(orthogonal, 12, lam="auto").stats["lambda"] == pytest.approx(0.25, rel=1e-6)
    same = torch.randn(12, 9, generator=torch.Generator().manual_seed(3))
    got = run([DenseDelta(same.clone()) for _ in range(4)], 9, lam="auto")  # k = its rank: P keeps all of it
    assert got.stats["lambda"] == pytest.approx(0.25, rel=1e-6)
    assert rel_err(got.delta.dense(), same) < TOL  # = the mean of four equal updates


def test_auto_lambda_is_capped_at_one_and_zero_updates_get_one_over_n():
    eye = torch.eye(12)  # two flat rank-3 updates, k = 1: ‖PS‖ = ‖S‖/√6 < ‖S‖/2, so the mean's norm needs λ > 1
    flat = [LowRankDelta(eye[:, 3 * i:3 * i + 3].clone(), eye[3 * i:3 * i + 3].clone()) for i in range(2)]
    assert run(flat, 1, lam="auto").stats["lambda"] == 1.0
    zeros = [LowRankDelta.zero((10, 8)) for _ in range(2)]
    got = run(zeros, 4, lam="auto")
    assert got.stats["lambda"] == 0.5 and float(got.delta.dense().abs().max()) == 0.0


def test_lambda_accepts_auto_and_numbers_only():
    assert ssam.SsamParams.model_validate({"lambda": "auto"}).lam == "auto"
    assert ssam.SsamParams.model_validate({"lambda": 0.5}).lam == 0.5
    with pytest.raises(ValueError, match="auto"):
        ssam.SsamParams.model_validate({"lambda": "half"})
