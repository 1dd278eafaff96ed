"""Evaluation: combined items are built right, option scoring counts an oracle as perfect and a liar as zero,
noise is calibrated to the asked accuracy, and late fusion combines evidence."""

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


def test_fusion_of_oracles_is_perfect_and_a_liar_is_outvoted_only_by_a_surer_oracle() -> None:
    splits = _splits()
    assert evaluate.fusion_accuracy({"image": _Fusable(1), "audio": _Fusable(1)}, splits, n=40) == 1.0
    assert evaluate.fusion_accuracy({"image": _Fusable(-1), "audio": _Fusable(-1)}, splits, n=40) == 0.0
    assert evaluate.fusion_accuracy({"image": _Fusable(3), "audio": _Fusable(-1)}, splits, n=40) == 1.0


class _Fusable(_Reader):
    """A reader whose confidence is |sign|: log-softmax sums let the surer model win."""

    def forward(self, inputs, questions):  # type: ignore[override]
        return inputs[0][1].reshape(len(questions), -1)[:, 0]


class _Rounder(_Reader):
    """An oracle on noisy inputs: reads round(x) of the first feature, so noise makes it wrong."""

    def forward(self, inputs, questions):  # type: ignore[override]
        return inputs[0][1][:, 0].round().clamp(0, 9)


def test_degrade_is_reproducible_and_scaled_to_the_feature_spread() -> None:
    split = Split(np.random.default_rng(0).standard_normal((500, 8)).astype(np.float32) * 3, np.zeros(500, int))
    a, b = evaluate.degrade(split, 0.5), evaluate.degrade(split, 0.5)
    assert np.array_equal(a.x, b.x) and np.array_equal(a.y, split.y)
    assert abs(float((a.x - split.x).std()) - 0.5 * float(split.x.std())) < 0.05


def test_calibrate_finds_the_noise_of_the_target_accuracy() -> None:
    y = np.repeat(np.arange(10), 40)
    split = Split(y[:, None].astype(np.float32), y)
    sigma = evaluate.calibrate(_Rounder(1), "image", split, target=0.6, n=400)
    acc = evaluate.combined_accuracy(_Rounder(1), {"image": evaluate.degrade(split, sigma)}, n=400)
    assert 0.5 <= acc <= 0.7
    assert evaluate.combined_accuracy(_Rounder(1), {"image": evaluate.degrade(split, sigma / 4)}, n=400) > 0.9


def test_item_correct_is_per_item_and_question_type() -> None:
    y = np.repeat(np.arange(10), 2)
    split = Split(y[:, None].astype(np.float32), y)
    correct = evaluate.item_correct(_SaysNo(), "image", split)
    assert correct.shape == (20, len(lm.QUESTIONS)) and list(lm.QUESTIONS) == ["digit", "parity", "big"]
    assert correct[:, 0].all() and correct[:, 1].all()
    assert np.array_equal(correct[:, 2], y <= 5)
    assert evaluate.single_accuracy(_SaysNo(), "image", split) == {"digit": 1.0, "parity": 1.0, "big": 0.6}


class _SaysNo(_Reader):
    """Right about the digit and its parity, but always says "no" to "bigger than five?"."""

    def __init__(self) -> None:
        super().__init__(1)

    def scores(self, hidden, qtype):  # type: ignore[override]
        right = [0 if qtype == "big" else lm.answer_index(qtype, d) for d in hidden.long().tolist()]
        return torch.nn.functional.one_hot(torch.tensor(right), len(lm.ANSWERS[qtype])).float()
