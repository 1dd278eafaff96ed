"""TSV-M against a float64 transcription of the paper's procedure; n > min dimension; LoRA inputs."""

from __future__ import annotations

import torch

from ssam_cli.deltas import DenseDelta, LowRankDelta
from ssam_cli.methods import tsv
from tests.methods.helpers import dense_deltas, lora_deltas, run
from tests.reference import rel_err

TOL = 1e-5


def tsv_reference(tensors, lam, keep_nonzero=False):
    """Per task top-k SVD (k = ⌊min/n⌋, at least 1), concatenate, polar factors of U and Vᵀ, U⊥ Σ V⊥ᵀ."""
    n = len(tensors)
    k = max(1, min(tensors[0].shape) // n)
    Us, Ss, Vhs = [], [], []
    for t in tensors:
        U, S, Vh = torch.linalg.svd(t.double(), full_matrices=False)
        kk = min(k, int((S > S[0] * max(t.shape) * 1.2e-7).sum())) if keep_nonzero else k
        Us.append(U[:, :kk]), Ss.append(S[:kk]), Vhs.append(Vh[:kk])

    def polar(X):
        P, _, Qh = torch.linalg.svd(X, full_matrices=False)
        return P @ Qh

    return lam * polar(torch.cat(Us, 1)) @ torch.diag(torch.cat(Ss)) @ polar(torch.cat(Vhs, 0))


def test_dense_matches_the_definition():
    deltas = dense_deltas((24, 18), 3, seed=1)
    got = run(tsv.SPEC, deltas, {"lambda": 0.8})
    assert isinstance(got.delta, LowRankDelta) and got.delta.rank == 18  # 3 tasks × ⌊18/3⌋
    assert rel_err(got.delta.dense(), tsv_reference([d.tensor for d in deltas], 0.8)) < TOL


def test_merged_singular_vectors_are_orthonormal():
    got = run(tsv.SPEC, dense_deltas((20, 20), 4, seed=2)).delta
    S = torch.linalg.svdvals(got.dense().double())
    parts = torch.cat([torch.linalg.svdvals(d.tensor.double())[:5] for d in dense_deltas((20, 20), 4, seed=2)])
    # U⊥ and V⊥ are square orthogonal here, so the merged spectrum is exactly the kept task spectra
    assert torch.allclose(S, parts.sort(descending=True).values, rtol=1e-4)


def test_more_tasks_than_the_smallest_dimension_keeps_one_direction_each():
    deltas = dense_deltas((3, 8), 5, seed=3)
    got = run(tsv.SPEC, deltas)
    assert got.stats["rank_per_task"] == 1 and got.stats["rank_merged"] == 5
    assert torch.isfinite(got.delta.dense()).all()
    assert rel_err(got.delta.dense(), tsv_reference([d.tensor for d in deltas], 1.0)) < TOL


def test_lora_uses_only_non_zero_directions_and_equals_the_dense_path():
    deltas = lora_deltas((30, 24), 3, r=2, seed=4)  # k = 8 > r = 2
    got = run(tsv.SPEC, deltas)
    assert got.stats["ranks_kept"] == [2, 2, 2]
    dense = run(tsv.SPEC, [DenseDelta(d.dense()) for d in deltas])
    assert rel_err(got.delta.dense(), dense.delta.dense()) < 1e-4
    assert rel_err(got.delta.dense(), tsv_reference([d.dense() for d in deltas], 1.0, keep_nonzero=True)) < 1e-4


def test_untouched_specialists_contribute_nothing():
    deltas = dense_deltas((12, 12), 1, seed=5) + [LowRankDelta.zero((12, 12))]
    got = run(tsv.SPEC, deltas)
    assert got.stats["ranks_kept"] == [6, 0]
