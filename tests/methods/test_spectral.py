"""The factored thin SVD of a LoRA update against a float64 SVD of the dense matrix; the polar factor."""

from __future__ import annotations

import pytest
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


@pytest.mark.parametrize("shape", [(10, 4), (4, 10), (6, 6)])
def test_polar_factor_is_orthonormal_and_nearest(shape):
    """P = U Vᵀ for X = U Σ Vᵀ (float64 SVD), equivalently X (XᵀX)^-½: the nearest matrix with orthonormal
    columns (rows, when wide), so tr(PᵀX) = Σσ beats every other orthonormal Q, QR's included."""
    g = torch.Generator().manual_seed(sum(shape))
    X = torch.randn(*shape, generator=g, dtype=torch.float64)
    P = polar_factor(X)
    U, S, Vh = torch.linalg.svd(X, full_matrices=False)
    assert torch.allclose(P, U @ Vh, atol=1e-12)
    small = min(shape)
    gram = P.T @ P if shape[0] >= shape[1] else P @ P.T
    assert torch.allclose(gram, torch.eye(small, dtype=torch.float64), atol=1e-12)
    assert float(torch.trace(P.T @ X)) == pytest.approx(float(S.sum()), rel=1e-12)
    for _ in range(5):
        Q, _ = torch.linalg.qr(torch.randn(max(shape), small, generator=g, dtype=torch.float64))
        Q = Q if shape[0] >= shape[1] else Q.T
        assert float(torch.trace(Q.T @ X)) < float(S.sum())
    Q, _ = torch.linalg.qr(X if shape[0] >= shape[1] else X.T)
    assert float((P - (Q if shape[0] >= shape[1] else Q.T)).norm()) > 0.1  # QR's Q is not the polar factor
