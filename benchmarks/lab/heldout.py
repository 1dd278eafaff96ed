"""A fixed, committed held-out set (6 test inputs per digit per modality) so the demo test needs neither
espeak-ng, fonts nor scikit-learn: the features are stored, not regenerated."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from benchmarks.lab import evaluate
from benchmarks.lab import model as lm
from benchmarks.lab.data import Split

PER_DIGIT = 6


def write(path: Path, tests: dict[str, Split]) -> None:
    """Store PER_DIGIT test examples per digit of each modality (the first ones of a seed-0 shuffle)."""
    rng = np.random.default_rng(0)
    tensors = {}
    for mod, split in tests.items():
        idx = np.concatenate([rng.permutation(np.where(split.y == d)[0])[:PER_DIGIT] for d in range(10)])
        tensors[f"{mod}.x"] = torch.from_numpy(np.ascontiguousarray(split.x[idx]))
        tensors[f"{mod}.y"] = torch.from_numpy(split.y[idx])
    save_file(tensors, str(path))


def read(path: Path) -> dict[str, Split]:
    t = load_file(str(path))
    mods = sorted({k.split(".")[0] for k in t})
    return {m: Split(t[f"{m}.x"].numpy(), t[f"{m}.y"].numpy()) for m in mods}


def accuracy(model: lm.PrefixLM, sets: dict[str, Split]) -> dict[str, float]:
    """Per modality: the mean accuracy over the three question types."""
    return {m: evaluate.mean_accuracy(evaluate.single_accuracy(model, m, s)) for m, s in sets.items()}
