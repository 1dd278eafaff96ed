"""Iso-C and Iso-CTS against float64 transcriptions of the paper; the LoRA collapse and its fix."""

from __future__ import annotations

import pytest
import torch

from ssam_cli.deltas import DenseDelta, LowRankDelta
from ssam_cli.methods import iso
from tests.methods.helpers import dense_deltas, lora_deltas, run
from tests.reference import rel_err

TOL = 1e-5


def iso_c_reference(tensors, lam):
    U, S, Vh = torch.linalg.svd(sum(t.double() for t in tensors), full_matrices=False)
    return lam * S.mean() * U @ Vh


def iso_cts_reference(tensors, lam, fraction):
    ts = [t.double() for t in tensors]
    total = sum(ts)
    r, n = min(total.shape), len(ts)
    k = int(r * fraction)
    k = r - round((r - k) / n) * n
    s = (r - k) // n
    U, S, Vh = torch.linalg.svd(total, full_matrices=False)
    Us, Ss, Vhs = [U[:, :k]], [S[:k]], [Vh[:k]]
    for t in ts:
        u, sv, vh = torch.linalg.svd(t - U[:, :k] @ U[:, :k].T @ t, full_matrices=False)
        Us.append(u[:, :s]), Ss.append(sv[:s]), Vhs.append(vh[:s])

    def polar(X):
        P, _, Qh = torch.linalg.svd(X, full_matrices=False)
        return P @ Qh

    return lam * torch.cat(Ss).mean() * polar(torch.cat(Us, 1)) @ polar(torch.cat(Vhs, 0))


def test_iso_c_matches_the_definition():
    deltas = dense_deltas((20, 14), 3, seed=1)
    got = run(iso.C_SPEC, deltas, {"lambda": 1.3})
    assert rel_err(got.delta.dense(), iso_c_reference([d.tensor for d in deltas], 1.3)) < TOL


def test_iso_cts_matches_the_definition():
    deltas = dense_deltas((20, 30), 4, seed=2)
    got = run(iso.CTS_SPEC, deltas, {"lambda": 1.0})
    assert (got.stats["common_rank"], got.stats["task_rank"]) == (16, 1)
    assert rel_err(got.delta.dense(), iso_cts_reference([d.tensor for d in deltas], 1.0, 0.8)) < TOL
    S = torch.linalg.svdvals(got.delta.dense().double())
    assert torch.allclose(S, S.mean().expand_as(S), rtol=1e-4)  # isotropic over all 20 directions


@pytest.mark.parametrize("r, n, fraction, sizes", [
    (20, 4, 0.8, (16, 1)),  # the paper's split: k = ⌊0.8·r⌋, the rest shared out evenly
    (7, 3, 0.5, (4, 1)),  # k = 7 − round(4/3)·3
    (16, 2, 0.5, (8, 4)),
    (10, 3, 0.0, (1, 3)),  # no common share asked: round(10/3) = 3 per task, one direction left over for k
    (3, 2, 0.0, (1, 1)),  # round(3/2) = 2 per task would need 4 > 3 directions: s = ⌊r/n⌋
    (4, 5, 0.8, (4, 0)),  # fewer directions than tasks: everything common
])
def test_iso_cts_sizes_add_up_to_the_full_rank(r, n, fraction, sizes):
    k, s = iso.subspace_sizes(r, n, fraction)
    assert (k, s) == sizes and k + n * s == r


def test_iso_c_on_a_rank_deficient_sum_flattens_all_min_d_values():
    deltas = lora_deltas((20, 16), 3, r=2, seed=3)  # the sum has rank 6 of a possible 16
    got = run(iso.C_SPEC, deltas)
    S = torch.linalg.svdvals(got.delta.dense().double())
    sigma = torch.linalg.svdvals(sum(d.dense().double() for d in deltas)).sum() / 16
    assert torch.allclose(S, sigma.expand(16), rtol=1e-4)


def test_lora_collapse_and_the_nonzero_only_fix():
    """Rank-4 LoRAs of a 64 × 64 weight: the plain Iso-C update puts 52/64 of its energy outside every
    specialist's subspace and shrinks the part inside by R/min(d) = 12/64; nonzero_only keeps it inside."""
    deltas = lora_deltas((64, 64), 3, r=4, seed=4)
    total = sum(d.dense().double() for d in deltas)
    U = torch.linalg.svd(total)[0][:, :12]
    plain = run(iso.C_SPEC, deltas).delta.dense().double()
    fixed = run(iso.C_SPEC, deltas, {"nonzero_only": True})
    inside = lambda X: float((U @ (U.T @ X)).norm() ** 2 / X.norm() ** 2)  # noqa: E731
    assert abs(inside(plain) - 12 / 64) < 1e-4
    assert isinstance(fixed.delta, LowRankDelta) and fixed.delta.rank == 12
    assert abs(inside(fixed.delta.dense().double()) - 1.0) < 1e-5
    signal_plain = (U @ (U.T @ plain)).norm()
    signal_fixed = fixed.delta.dense().double().norm()
    assert abs(float(signal_plain / signal_fixed) - 12 / 64) < 1e-4
    S = torch.linalg.svdvals(fixed.delta.dense().double())[:12]
    assert torch.allclose(S, torch.linalg.svdvals(total)[:12].mean().expand(12), rtol=1e-4)


def test_nonzero_only_on_full_rank_input_is_plain_iso_c():
    deltas = dense_deltas((10, 10), 2, seed=5)
    a = run(iso.C_SPEC, deltas).delta.dense()
    b = run(iso.C_SPEC, deltas, {"nonzero_only": True}).delta.dense()
    assert rel_err(b, a) < 1e-5


def test_all_zero_inputs_merge_to_zero():
    zero = [LowRankDelta.zero((6, 5)), LowRankDelta.zero((6, 5))]
    assert float(run(iso.C_SPEC, zero, {"nonzero_only": True}).delta.dense().abs().sum()) == 0.0
    assert float(run(iso.C_SPEC, [DenseDelta(torch.zeros(6, 5))]).delta.dense().abs().sum()) == 0.0
