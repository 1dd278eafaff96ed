"""The factored thin SVD of a LoRA update against a float64 SVD of the dense matrix; the polar factor."""

from __future__ import annotations

import torch

from ssam_cli.deltas import DenseDelta, LowRankDelta
from ssam_cli.spectra import polar_factor, thin_svd
from tests.methods.helpers import lora_deltas


def test_lowrank_svd_is_exact_and_orthonormal():
    d = lora_deltas((30, 20), 1, r=5, seed=1)[0]
    svd = thin_svd(d)
    ref = torch.linalg.svdvals(d.dense().double())
    assert torch.allclose(svd.S.double(), ref[:5], rtol=1e-5)
    assert torch.allclose(svd.dense(), d.dense(), atol=1e-4 * float(ref[0]))
    assert torch.allclose(svd.U.T @ svd.U, torch.eye(5), atol=1e-5)
    assert torch.allclose(svd.Vh @ svd.Vh.T, torch.eye(5), atol=1e-5)


def test_nonzero_drops_the_null_space_of_a_rank_deficient_update():
    B = torch.randn(12, 3, dtype=torch.float32)
    dense = DenseDelta(B @ torch.randn(3, 9))
    assert thin_svd(dense).nonzero((12, 9)).S.numel() == 3
    assert thin_svd(LowRankDelta.zero((12, 9))).S.numel() == 0


def test_polar_factor_is_orthonormal_and_nearest():
    X = torch.randn(10, 4, dtype=torch.float64)
    P = polar_factor(X)
    assert torch.allclose(P.T @ P, torch.eye(4, dtype=torch.float64), atol=1e-12)
    # the polar factor maximises tr(Qᵀ X) over matrices with orthonormal columns
    Q, _ = torch.linalg.qr(X)
    assert torch.trace(P.T @ X) >= torch.trace(Q.T @ X) - 1e-12
