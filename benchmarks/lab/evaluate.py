"""Accuracy of a PrefixLM on one modality (per question type) and on modality combinations never trained on.

Combined (MCUB-like): several inputs showing the same digit, question "which number do all inputs show?"
with four options; the model's choice is the option whose digit word scores highest at [MASK] (option
scoring: the specialists never learned to answer with letters, so letters would test the prompt, not the merge).
Complementary evidence: every input is degraded (Gaussian noise, its level calibrated so that one modality
alone is ~60 % right for its specialist), so a model only gains from a second input if it combines evidence.
"""

from __future__ import annotations

import numpy as np
import torch

from benchmarks.lab import model as lm
from benchmarks.lab.data import Split

COMBINED_QUESTION = "which number do all inputs show?"
BATCH = 64


@torch.no_grad()
def item_correct(model: lm.PrefixLM, modality: str, split: Split) -> np.ndarray:
    """Per item and question type (columns in QUESTIONS order), whether the answer is right; the phrasing
    cycles through every wording, the held-out one too."""
    out = np.zeros((len(split.y), len(lm.QUESTIONS)), dtype=bool)
    for col, (qtype, phrasings) in enumerate(lm.QUESTIONS.items()):
        for start in range(0, len(split.y), BATCH):
            x = torch.from_numpy(split.x[start:start + BATCH])
            y = split.y[start:start + BATCH]
            texts = [phrasings[(start + i) % len(phrasings)] for i in range(len(y))]
            pred = model.scores(model([(modality, x)], texts), qtype).argmax(dim=1).numpy()
            out[start:start + len(y), col] = pred == np.array([lm.answer_index(qtype, int(d)) for d in y])
    return out


def single_accuracy(model: lm.PrefixLM, modality: str, split: Split, limit: int | None = None) -> dict[str, float]:
    """Accuracy per question type on `split` (or a fixed subset of `limit` items)."""
    if limit is not None:
        split = split.subset(limit)
    correct = item_correct(model, modality, split)
    return {q: float(correct[:, i].mean()) for i, q in enumerate(lm.QUESTIONS)}


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


def degrade(split: Split, sigma: float, seed: int = 0) -> Split:
    """The split with Gaussian noise of `sigma` times its feature standard deviation (fixed noise per seed)."""
    noise = np.random.default_rng(seed).standard_normal(split.x.shape).astype(np.float32)
    return Split(split.x + noise * np.float32(sigma * split.x.std()), split.y)


def calibrate(model: lm.PrefixLM, modality: str, split: Split, target: float = 0.6, n: int = 200,
              steps: int = 10) -> float:
    """The noise level at which `model` answers the four-option question on `modality` alone ~`target` right
    (bisection on log sigma; accuracy falls with noise)."""
    lo, hi = np.log(0.05), np.log(50.0)
    for _ in range(steps):
        mid = (lo + hi) / 2
        if combined_accuracy(model, {modality: degrade(split, float(np.exp(mid)))}, n) > target:
            lo = mid
        else:
            hi = mid
    return float(np.exp((lo + hi) / 2))


@torch.no_grad()
def fusion_accuracy(models: dict[str, lm.PrefixLM], splits: dict[str, Split], n: int = 200, seed: int = 0) -> float:
    """Late fusion of separate specialists: each reads its own input, their digit log-probabilities are summed,
    and the best of the four options wins. A reference for what combining evidence can give."""
    inputs, digits, options = combined_items(splits, n, seed)
    total = np.zeros((n, 10))
    question = lm.QUESTIONS["digit"][0]
    for m, x in inputs.items():
        for start in range(0, n, BATCH):
            hidden = models[m]([(m, torch.from_numpy(x[start:start + BATCH]))], [question] * len(x[start:start + BATCH]))
            total[start:start + BATCH] += torch.log_softmax(models[m].scores(hidden, "digit"), dim=1).numpy()
    choice = options[np.arange(n), np.take_along_axis(total, options, axis=1).argmax(axis=1)]
    return float((choice == digits).mean())
