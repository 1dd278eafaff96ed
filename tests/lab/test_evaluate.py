"""Evaluation: combined items are built right, and option scoring counts an oracle as perfect and a liar as zero."""

from __future__ import annotations

import numpy as np
import torch

from benchmarks.lab import evaluate
from benchmarks.lab import model as lm
from benchmarks.lab.data import Split


def _splits() -> dict[str, Split]:
    y = np.repeat(np.arange(10), 3)
    # each input's single feature is its label, so a test model can read the truth
    return {m: Split(y[:, None].astype(np.float32), y) for m in ("image", "audio")}


def test_combined_items_show_one_digit_with_four_distinct_options() -> None:
    inputs, digits, options = evaluate.combined_items(_splits(), 50, seed=3)
    for m in ("image", "audio"):
        assert (inputs[m][:, 0] == digits).all()
    assert options.shape == (50, 4)
    assert all(len(set(o)) == 4 and (o == d).sum() == 1 for o, d in zip(options, digits))


class _Reader(lm.PrefixLM):
    """Scores digit words by the first input's value: an oracle (sign +1) or a liar ranking the truth last (−1)."""

    def __init__(self, sign: int) -> None:
        torch.nn.Module.__init__(self)
        self.sign = sign

    def forward(self, inputs, questions):  # type: ignore[override]
        return inputs[0][1][:, 0]

    def scores(self, hidden, qtype):  # type: ignore[override]
        return self.sign * torch.nn.functional.one_hot(hidden.long(), 10).float()


def test_combined_accuracy_of_oracle_and_liar() -> None:
    assert evaluate.combined_accuracy(_Reader(1), _splits(), n=40) == 1.0
    assert evaluate.combined_accuracy(_Reader(-1), _splits(), n=40) == 0.0
