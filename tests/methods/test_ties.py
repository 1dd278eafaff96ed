"""TIES against a direct float64 transcription of the paper, and against PEFT's merge_utils."""

from __future__ import annotations

import pytest
import torch

from ssam_cli.methods import ties
from tests.methods.helpers import dense_deltas, lora_deltas, run

TOL = 1e-6


def ties_reference(tensors, density, lam):
    """Yadav et al., Alg. 1: keep top-k% |τ| per task, γ = sgn(Σ τ̂), mean over {t: sgn(τ̂_t) = γ, τ̂_t ≠ 0}."""
    out = []
    trimmed = []
    for t in tensors:
        flat = t.double().flatten()
        k = int(density * flat.numel())
        keep = torch.zeros_like(flat)
        order = sorted(range(flat.numel()), key=lambda j: -abs(float(flat[j])))[:k]
        keep[order] = flat[order]
        trimmed.append(keep)
    for j in range(trimmed[0].numel()):
        vals = [float(t[j]) for t in trimmed]
        total = sum(vals)
        gamma = (total > 0) - (total < 0)
        agree = [v for v in vals if v != 0 and ((v > 0) - (v < 0)) == gamma]
        out.append(sum(agree) / len(agree) if agree else 0.0)
    return torch.tensor(out, dtype=torch.float64).reshape(tensors[0].shape) * lam


@pytest.mark.parametrize("density", [0.2, 0.5, 1.0])
def test_matches_the_paper_definition(density):
    deltas = dense_deltas((6, 5), 3, seed=1)
    got = run(ties.SPEC, deltas, {"density": density, "lambda": 0.7})
    ref = ties_reference([d.tensor for d in deltas], density, 0.7)
    assert torch.allclose(got.delta.dense().double(), ref, atol=TOL)


def test_defaults_are_density_02_and_lambda_1():
    got = run(ties.SPEC, dense_deltas((10, 10), 2, seed=2))
    assert got.stats["density"] == 0.2 and got.stats["lambda"] == 1.0


def test_lora_inputs_merge_their_dense_updates():
    deltas = lora_deltas((8, 7), 3, r=2, seed=3)
    got = run(ties.SPEC, deltas, {"density": 0.3})
    assert torch.allclose(got.delta.dense().double(), ties_reference([d.dense() for d in deltas], 0.3, 1.0), atol=1e-5)


def test_density_out_of_range_is_refused():
    with pytest.raises(ValueError):
        ties.TiesParams.model_validate({"density": 0.0})


def test_agrees_with_peft_merge_utils():
    merge_utils = pytest.importorskip("peft.utils.merge_utils")
    deltas = dense_deltas((16, 12), 4, seed=4)
    weights = [1.0, 0.5, 2.0, 1.5]
    got = run(ties.SPEC, deltas, {"density": 0.3}, weights=weights)
    ref = merge_utils.ties([d.tensor for d in deltas], torch.tensor(weights), density=0.3)
    assert torch.allclose(got.delta.dense(), ref, atol=TOL)
