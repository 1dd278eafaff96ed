"""TIES' trim / elect / disjoint-mean steps on hand-made tensors whose answers are known."""

from __future__ import annotations

import torch

from ssam_cli.methods.sign_consensus import disjoint_mean, elect_sign, ties_merge, trim_to_density


def test_trim_keeps_exactly_the_largest_magnitudes():
    x = torch.tensor([[0.1, -5.0, 0.3], [2.0, -0.2, 0.05]])
    assert torch.equal(trim_to_density(x, 0.34), torch.tensor([[0.0, -5.0, 0.0], [2.0, 0.0, 0.0]]))
    assert torch.equal(trim_to_density(x, 1.0), x)
    assert torch.count_nonzero(trim_to_density(x, 0.1)) == 0  # ⌊0.1·6⌋ = 0 kept


def test_sign_is_elected_by_total_mass_not_by_count():
    stacked = torch.tensor([[1.0], [1.0], [-3.0]])  # two votes for +, more mass for −
    assert elect_sign(stacked).item() == -1.0
    assert disjoint_mean(stacked, [1, 1, 1], elect_sign(stacked)).item() == -3.0


def test_all_signs_disagree_keeps_only_the_elected_side():
    stacked = torch.tensor([[2.0, -1.0, 4.0], [-1.0, 3.0, -4.0], [-0.5, 0.5, 0.0]])
    got = ties_merge(list(stacked), [1.0, 1.0, 1.0], density=1.0)
    # entry 0: sum 0.5 > 0 → only +2 agrees; entry 1: sum 2.5 → mean(3, 0.5); entry 2: sum 0 → 0
    assert torch.allclose(got, torch.tensor([2.0, 1.75, 0.0]))


def test_zeros_do_not_count_in_the_mean_and_weights_scale_contributions():
    stacked = torch.tensor([[4.0], [0.0], [2.0]])
    assert disjoint_mean(stacked, [1, 1, 1], elect_sign(stacked)).item() == 3.0
    assert disjoint_mean(stacked, [0.5, 1, 2], elect_sign(stacked)).item() == 3.0  # (2 + 4) / 2
