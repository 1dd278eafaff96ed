"""Accuracy of a PrefixLM on one modality (per question type) and on modality combinations never trained on.

Combined (MCUB-like): several inputs showing the same digit, question "which number do all inputs show?"
with four options; the model's choice is the option whose digit word scores highest at [MASK] (option
scoring: the specialists never learned to answer with letters, so letters would test the prompt, not the merge).
"""

from __future__ import annotations

import numpy as np
import torch

from benchmarks.lab import model as lm
from benchmarks.lab.data import Split

COMBINED_QUESTION = "which number do all inputs show?"
BATCH = 64


@torch.no_grad()
def single_accuracy(model: lm.PrefixLM, modality: str, split: Split, limit: int | None = None) -> dict[str, float]:
    """Accuracy per question type on `split` (the phrasing cycles through every wording, the held-out one too)."""
    if limit is not None:
        split = split.subset(limit)
    out: dict[str, float] = {}
    for qtype, phrasings in lm.QUESTIONS.items():
        correct = 0
        for start in range(0, len(split.y), BATCH):
            x = torch.from_numpy(split.x[start:start + BATCH])
            y = split.y[start:start + BATCH]
            texts = [phrasings[(start + i) % len(phrasings)] for i in range(len(y))]
            pred = model.scores(model([(modality, x)], texts), qtype).argmax(dim=1).numpy()
            correct += int((pred == np.array([lm.answer_index(qtype, int(d)) for d in y])).sum())
        out[qtype] = correct / len(split.y)
    return out


def combined_items(splits: dict[str, Split], n: int, seed: int) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """n items: per modality one test input of the same digit, and four digit options (one right, shuffled)."""
    rng = np.random.default_rng(seed)
    digits = rng.integers(0, 10, n)
    inputs = {m: np.stack([s.x[rng.choice(np.where(s.y == d)[0])] for d in digits]) for m, s in splits.items()}
    options = np.stack([rng.permutation([d, *rng.choice([o for o in range(10) if o != d], 3, replace=False)])
                        for d in digits])
    return inputs, digits, options


@torch.no_grad()
def combined_accuracy(model: lm.PrefixLM, splits: dict[str, Split], n: int = 200, seed: int = 0) -> float:
    """Four-option accuracy when every input of `splits` (in order) shows the same digit; chance is 0.25."""
    inputs, digits, options = combined_items(splits, n, seed)
    correct = 0
    for start in range(0, n, BATCH):
        sl = slice(start, start + BATCH)
        batch = [(m, torch.from_numpy(x[sl])) for m, x in inputs.items()]
        hidden = model(batch, [COMBINED_QUESTION] * len(digits[sl]))
        scores = model.scores(hidden, "digit").numpy()
        opts = options[sl]
        choice = opts[np.arange(len(opts)), np.take_along_axis(scores, opts, axis=1).argmax(axis=1)]
        correct += int((choice == digits[sl]).sum())
    return correct / n


def mean_accuracy(per_type: dict[str, float]) -> float:
    return float(np.mean(list(per_type.values())))

